"""Training of the multi-label object head (``terravl train objects``): which objects a caption would name, and
UC Merced's object multi-labels, read off the frozen ``terravl-default`` image embedding.

Data: the *train* splits of caption datasets (the shipped recipe: ``ucm_captions`` and ``rsicd_aid``); a share of
their images (``dev_fraction``, chosen by file name hash) is kept apart to choose each label's threshold and to
report scores. The held-apart benchmark splits (ucm_captions val, rsicd_aid test) are never read: a split named
``val`` or ``test`` is refused. Labels:

* ``tag:NAME`` for each multi-label of the datasets that have them (UCM's 17), known only on those images (the loss
  is masked elsewhere: an RSICD image without tags is not an image without trees);
* ``noun:NAME`` for each object of :data:`~terravl.models.object_head.OBJECT_WORDS` named by at least
  ``min_positives`` training images' captions: positive when any of the image's captions names it.

The image embeddings are computed once and cached under ``OUT/cache`` (keyed by the encoder's weights and the
file list); training moves only the head's weights and takes seconds on one CPU thread.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from terravl.errors import InputError
from terravl.train.settings import settings_from_dict

HELD_APART = ("val", "test")


@dataclass
class ObjectsTrainConfig:
    """Flat settings (YAML ``--config`` or ``--set KEY=VALUE``); the shipped recipe is configs/terravl-objects.yaml."""

    data: list[str] = field(default_factory=lambda: ["../shared/data/ucm_captions/dataset_ucm_captions.json",
                                                     "../shared/data/rsicd_aid/dataset_rsicd_aid.json"])
    split: str = "train"
    encoder: str = "terravl-default"
    out: str = "runs/terravl-objects"
    name: str = "terravl-objects"
    vocabulary: dict | None = None        # canonical object → caption words; default OBJECT_WORDS
    min_positives: int = 20               # a caption noun needs this many positive training images to be a label
    hidden: int = 0                       # 0: a linear layer; else one hidden ReLU layer of this width
    epochs: int = 60
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dev_fraction: float = 0.1
    min_threshold: float = 0.1
    max_threshold: float = 0.9
    seed: int = 0
    threads: int | None = 1
    device: str = "cpu"
    max_steps: int | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "ObjectsTrainConfig":
        return settings_from_dict(cls, values)


def _held_out(path: Path, fraction: float) -> bool:
    digest = hashlib.sha1(str(path.name).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


@dataclass
class LabelTable:
    """Targets (N, L) in {0, 1}, a mask (N, L) of the known ones, and the labels' names and canonical objects."""

    names: list[str]
    canonical: list[str]
    targets: np.ndarray
    known: np.ndarray


def label_table(records: list, tagged: list[bool], vocabulary: dict, min_positives: int) -> LabelTable:
    """The head's labels for ``records`` (``tagged[i]``: record i's dataset has multi-labels, so its tags are an
    exhaustive annotation)."""
    from terravl.models.object_head import UCM_TAGS, object_mentions

    tags = sorted({t for r, k in zip(records, tagged) if k for t in r.tags})
    nouns = [object_mentions(" . ".join(r.captions), vocabulary) for r in records]
    counts = {c: sum(c in n for n in nouns) for c in vocabulary}
    kept = [c for c in vocabulary if counts[c] >= min_positives]
    names = [f"tag:{t}" for t in tags] + [f"noun:{c}" for c in kept]
    canonical = [UCM_TAGS.get(t, t.replace("-", " ")) for t in tags] + kept
    n, tcount = len(records), len(tags)
    targets = np.zeros((n, len(names)), np.float32)
    known = np.ones((n, len(names)), bool)
    for i, (r, k) in enumerate(zip(records, tagged)):
        known[i, :tcount] = k
        for t in r.tags:
            if k and t in tags:
                targets[i, tags.index(t)] = 1
        for j, c in enumerate(kept):
            targets[i, tcount + j] = c in nouns[i]
    return LabelTable(names, canonical, targets, known)


def plural_shares(records: list, vocabulary: dict) -> dict[str, float]:
    """Per object, the share of its mentions in the captions of ``records`` that are plural."""
    from terravl.models.object_head import find_objects

    counts: dict[str, list[int]] = {}
    for r in records:
        for caption in r.captions:
            for canonical, _, _, many in find_objects(caption, vocabulary):
                seen = counts.setdefault(canonical, [0, 0])
                seen[0] += many
                seen[1] += 1
    return {c: round(p / n, 3) for c, (p, n) in sorted(counts.items())}


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the precision–recall curve (the mean of the precisions at each positive, ranked by score)."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def f1(pred: np.ndarray, targets: np.ndarray) -> float:
    tp = float((pred & (targets > 0)).sum())
    denom = float(pred.sum() + (targets > 0).sum())
    return 2 * tp / denom if denom else float("nan")


def choose_thresholds(scores: np.ndarray, table: LabelTable, rows: np.ndarray, low: float, high: float) -> list[float]:
    """Per label, the threshold in [low, high] (steps of 0.05) with the best F1 on ``rows``; 0.5 with fewer than
    5 known positives there."""
    grid = np.round(np.arange(low, high + 1e-9, 0.05), 4)
    out = []
    for j in range(len(table.names)):
        keep = rows[table.known[rows, j]]
        y = table.targets[keep, j]
        if y.sum() < 5:
            out.append(0.5)
            continue
        best = max(grid, key=lambda t: (f1(scores[keep, j] >= t, y), -abs(t - 0.5)))
        out.append(float(best))
    return out


def dev_scores(scores: np.ndarray, table: LabelTable, rows: np.ndarray, thresholds: list[float]) -> dict:
    """Macro mAP and F1 of each label source (tag, noun) and per label, on ``rows``."""
    per_label, by_source = {}, {"tag": ([], []), "noun": ([], [])}
    for j, name in enumerate(table.names):
        keep = rows[table.known[rows, j]]
        y = table.targets[keep, j]
        if y.sum() == 0:
            continue
        ap, score = average_precision(scores[keep, j], y), f1(scores[keep, j] >= thresholds[j], y)
        per_label[name] = {"ap": round(ap * 100, 2), "f1": round(score * 100, 2), "positives": int(y.sum())}
        source = name.split(":", 1)[0]
        by_source[source][0].append(ap)
        by_source[source][1].append(score)
    summary = {f"{s}_map": round(float(np.mean(a)) * 100, 2) for s, (a, _) in by_source.items() if a}
    summary.update({f"{s}_macro_f1": round(float(np.mean(b)) * 100, 2) for s, (_, b) in by_source.items() if b})
    return {**summary, "labels": per_label}


def train(cfg: ObjectsTrainConfig, encoder=None, log: Callable[[str], None] = print) -> dict:
    """Train and write ``cfg.out/model``; returns the run's summary (dev scores, sizes, seconds)."""
    import torch

    from terravl.datasets import KarpathyCaptions
    from terravl.models.feature_cache import image_features
    from terravl.models.grounder import encoder_checksum
    from terravl.models.object_head import MASS_NOUNS, OBJECT_WORDS, ObjectHead

    if cfg.split in HELD_APART:
        raise InputError("split", f"the object head trains on train splits only; {cfg.split!r} is held apart for "
                                  "`terravl eval describe`")
    if isinstance(cfg.data, str):  # one dataset named on the command line (--set data=D.json)
        cfg.data = [cfg.data]
    if not cfg.data:
        raise InputError("data", "name at least one caption dataset (Karpathy JSON)")
    if not isinstance(cfg.data, list) or not all(isinstance(p, str) for p in cfg.data):
        raise InputError("data", "must be a list of caption dataset paths (Karpathy JSON)")
    for name, value, low, high in (("dev_fraction", cfg.dev_fraction, 0, 0.9),
                                   ("min_threshold", cfg.min_threshold, 0.01, 0.99),
                                   ("max_threshold", cfg.max_threshold, cfg.min_threshold, 0.99),
                                   ("weight_decay", cfg.weight_decay, 0, 10)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise InputError(name, f"must be a number in [{low}, {high}], got {value!r}")
    for name, value, low, high in (("hidden", cfg.hidden, 0, 65536), ("min_positives", cfg.min_positives, 1, 10**9)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InputError(name, f"must be a whole number in [{low}, {high}], got {value!r}")
    if cfg.vocabulary is not None and not (isinstance(cfg.vocabulary, dict) and all(
            isinstance(k, str) and isinstance(v, list) and v and all(isinstance(w, str) and w.strip() for w in v)
            for k, v in cfg.vocabulary.items())):
        raise InputError("vocabulary", "must map each object name to a list of the words that name it")
    vocabulary = {str(k): tuple(v) for k, v in (cfg.vocabulary or OBJECT_WORDS).items()}
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    started = time.perf_counter()
    records, tagged, sources = [], [], {}
    for path in cfg.data:
        reader = KarpathyCaptions(path, split=cfg.split)
        found = [r for r in reader.records if r.path is not None]
        if not found:
            raise InputError(path, f"no images of split {cfg.split!r} found on disk")
        has_tags = any(r.tags for r in found)
        records += found
        tagged += [has_tags] * len(found)
        sources[str(path)] = len(found)
    log(f"{len(records)} {cfg.split} images ({', '.join(f'{Path(p).name}: {n}' for p, n in sources.items())})")
    table = label_table(records, tagged, vocabulary, cfg.min_positives)
    if not table.names:
        raise InputError("data", "no labels: no multi-labels and no object noun with enough positive images "
                                 f"(min_positives={cfg.min_positives})")
    log(f"{len(table.names)} labels: {sum(n.startswith('tag:') for n in table.names)} multi-labels, "
        f"{sum(n.startswith('noun:') for n in table.names)} caption nouns")

    if encoder is None:
        import terravl.models as m

        encoder = m.load(cfg.encoder, device="cpu")
    t0 = time.perf_counter()
    features, kept, failed = image_features(encoder, [r.path for r in records], "identity",
                                            Path(cfg.out) / "cache", progress=None)
    embed_seconds = time.perf_counter() - t0
    for problem in failed[:5]:
        log(f"problem: {problem['path']}: {problem['error']}")
    kept = np.asarray(kept)
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    targets, known = table.targets[kept], table.known[kept]
    table = LabelTable(table.names, table.canonical, targets, known)
    dev = np.array([_held_out(records[i].path, cfg.dev_fraction) for i in kept])
    fit_rows, dev_rows = np.flatnonzero(~dev), np.flatnonzero(dev)
    if len(dev_rows) == 0:
        dev_rows = fit_rows
    log(f"embedded {len(kept)} images in {embed_seconds:.1f} s; {len(fit_rows)} to fit, {len(dev_rows)} dev")

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dim, n_labels = x.shape[1], len(table.names)
    layers = [torch.nn.Linear(dim, cfg.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden, n_labels)] \
        if cfg.hidden else [torch.nn.Linear(dim, n_labels)]
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    y, mask = torch.from_numpy(targets), torch.from_numpy(known.astype(np.float32))
    steps, t1 = 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        order = rng.permutation(fit_rows)
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[s:s + cfg.batch_size])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[idx]), y[idx], reduction="none")
            loss = (loss * mask[idx]).sum() / mask[idx].sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            steps += 1
            if cfg.max_steps and steps >= cfg.max_steps:
                break
        if epoch % 20 == 19 or epoch == cfg.epochs - 1:
            log(f"epoch {epoch + 1}: loss {total / max(len(order), 1):.4f}")
        if cfg.max_steps and steps >= cfg.max_steps:
            break
    train_seconds = time.perf_counter() - t1
    with torch.inference_mode():
        scores = torch.sigmoid(net(x)).numpy()
    thresholds = choose_thresholds(scores, table, dev_rows, cfg.min_threshold, cfg.max_threshold)
    dev_result = dev_scores(scores, table, dev_rows, thresholds)

    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    weights = {"out.weight": linear[-1].weight.detach().numpy(), "out.bias": linear[-1].bias.detach().numpy()}
    if cfg.hidden:
        weights.update({"hidden.weight": linear[0].weight.detach().numpy(),
                        "hidden.bias": linear[0].bias.detach().numpy()})
    settings = {"kind": "objects", "name": cfg.name, "encoder": cfg.encoder,
                "encoder_sha256": encoder_checksum(encoder), "embed_dim": int(dim), "hidden": cfg.hidden,
                "labels": [{"name": n, "canonical": c, "threshold": t}
                           for n, c, t in zip(table.names, table.canonical, thresholds)],
                "vocabulary": {k: list(v) for k, v in vocabulary.items()},
                "mass_nouns": sorted(MASS_NOUNS), "plural_share": plural_shares(records, vocabulary)}
    head = ObjectHead(settings, weights, encoder)
    model = Path(cfg.out) / "model"
    positives = {n: int(table.targets[table.known[:, j], j].sum()) for j, n in enumerate(table.names)}
    info = {"model": str(model), "config": asdict(cfg), "images": len(kept), "fit_images": len(fit_rows),
            "dev_images": len(dev_rows), "labels": len(table.names), "train_positives": positives,
            "data": {"datasets": sources, "split": cfg.split,
                     "held_apart": "dev_fraction of the train images by file name hash: thresholds and dev scores; "
                                   "the val/test splits are never read"},
            "dev": dev_result, "steps": steps, "embed_seconds": round(embed_seconds, 2),
            "train_seconds": round(train_seconds, 2), "seconds": round(time.perf_counter() - started, 2),
            "failed_images": len(failed)}
    head.save(model, info)
    info["size_bytes"] = sum(p.stat().st_size for p in model.iterdir())
    log(f"dev: tag mAP {dev_result.get('tag_map')} %, noun mAP {dev_result.get('noun_map')} %, "
        f"noun macro F1 {dev_result.get('noun_macro_f1')} % → {model}")
    return info
