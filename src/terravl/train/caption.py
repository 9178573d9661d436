"""Training of the captioning / VQA bridge (``terravl train caption``).

The recipe is RS-CapRet's, sized for a CPU: the image encoder is frozen, so its features are computed once per
image and augmentation view (identity and flips) and cached; each step maps a batch of features to prefixes and
trains next-token prediction on a caption or an answer. With TerraVL's own decoder the language model trains from
scratch beside the mapping; with a user's language model (``lm=PATH``) only the mapping trains, or LoRA adapters
too (``lora=R``). Each epoch scores greedy captions of a validation part of the training split (CIDEr-D) and the
best epoch is exported; the evaluation split is scored once, at the end, for the record. The loop itself (device,
mixed precision on CUDA, schedule, checkpoints, resume) is :func:`terravl.train.loop.fit`, shared with ``train
clip``.

Several datasets train together (``data`` a list, e.g. rsicd_aid and ucm_captions): the samples are the union of
their training splits (questions derived per dataset), the vocabulary comes from all their texts, the validation
part is drawn from each dataset in proportion, and each dataset's evaluation split is scored on its own.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terravl.datasets import open_dataset
from terravl.datasets.derived_vqa import derive_questions
from terravl.datasets.records import CaptionRecord, VQARecord
from terravl.errors import InputError
from terravl.models.bridge import CAPTION_PROMPT, Captioner, question_prompt, small_decoder
from terravl.models.feature_cache import VIEWS, image_features
from terravl.models.word_tokenizer import train_word_tokenizer
from terravl.train.loop import fit, start, total_steps
from terravl.train.settings import settings_from_dict


@dataclass
class CaptionTrainConfig:
    """Flat settings; each can be set from YAML (``--config``) or ``--set KEY=VALUE``. The defaults are those of
    configs/terravl-captioner.yaml (a test keeps them equal), except ``data``, which has none."""

    data: str | list[str] | None = None   # required: a caption JSON or an RSVQA folder, or a list of them
    out: str = "runs/terravl-captioner"
    encoder: str = "terravl-default"
    lm: str | None = None                 # None: TerraVL's own small decoder, trained from scratch
    lora: int = 0
    train_split: str | list[str] = "train"            # one for all datasets, or one per dataset in ``data``
    eval_split: str | list[str | None] | None = "test"  # likewise; None: not scored
    val_fraction: float = 0.05
    vqa: bool = True                      # derived questions (caption datasets) or the dataset's own (RSVQA)
    questions_per_image: float = 1.0      # question samples per caption sample in an epoch
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    prefix_len: int = 8
    hidden: int = 1024
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.1
    vocab_min_frequency: int = 2
    views: int = 3                        # feature views per training image: identity, h-flip, v-flip
    feature_noise: float = 0.0
    beams: int = 3
    max_tokens: int = 40
    seed: int = 0
    device: str = "auto"                  # auto (CUDA if present), cpu, cuda
    precision: str = "auto"               # auto (fp16 autocast on CUDA, fp32 on CPU), fp32, fp16, bf16
    threads: int | None = None
    max_steps: int | None = None
    stop_after_epochs: int | None = None
    limit_train: int | None = None
    limit_eval: int | None = None
    progress: bool = True
    name: str = "terravl-captioner"

    @classmethod
    def from_dict(cls, values: dict) -> "CaptionTrainConfig":
        cfg = settings_from_dict(cls, values)
        if cfg.data:
            datasets(cfg)  # bad lists fail here, before a run folder exists
        return cfg


@dataclass(frozen=True)
class Dataset:
    """One dataset of a run: its path, the split it trains on, the split scored at the end (None: none), and a
    short name for its scores (the dataset JSON's folder, e.g. ``ucm_captions``)."""

    path: str
    train_split: str
    eval_split: str | None
    name: str


def datasets(cfg: CaptionTrainConfig) -> list[Dataset]:
    """The run's datasets from ``data``, ``train_split`` and ``eval_split`` (each a value for all, or a list parallel
    to ``data``; ``--data a.json,b.json`` is a list too, unless that string names an existing file). Refuses lists
    of the wrong length, a dataset listed twice and an evaluation split equal to the dataset's training split
    (scores on trained images would mean nothing), naming the field. No data: an empty list."""
    paths = _listed(cfg.data, "data", "a dataset path")
    if not paths:
        return []
    if len(set(paths)) < len(paths):
        twice = next(p for p in paths if paths.count(p) > 1)
        raise InputError("data", f"{twice} is listed twice")
    train_splits = _per_dataset(cfg.train_split, "train_split", len(paths), allow_none=False)
    eval_splits = _per_dataset(cfg.eval_split, "eval_split", len(paths), allow_none=True)
    names = _short_names(paths)
    out = []
    for path, tr, ev, name in zip(paths, train_splits, eval_splits, names):
        if ev == tr:
            raise InputError("eval_split", f"{name} ({path}) would be scored on its training split {tr!r}; give "
                                           f"another split (or null for none)")
        out.append(Dataset(path, tr, ev, name))
    return out


def _listed(value: Any, field_name: str, what: str) -> list[str]:
    """A value or a list of values as a list of non-empty strings; ``a,b`` splits unless it is an existing path."""
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        text = str(value)
        items = [text] if "," not in text or Path(text).exists() else [v.strip() for v in text.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(v) if isinstance(v, Path) else v for v in value]
    else:
        raise InputError(field_name, f"give {what} or a list of them, got {value!r}")
    if not all(isinstance(v, str) and v.strip() for v in items):
        raise InputError(field_name, f"give {what} or a list of them, got {value!r}")
    return items


def _per_dataset(value: Any, field_name: str, n: int, allow_none: bool) -> list[str | None]:
    """One split per dataset: a single name (or None, where allowed) for all, or a list of ``n``."""
    if value is None and allow_none:
        return [None] * n
    if isinstance(value, (list, tuple)):
        values = list(value)
        if len(values) != n:
            raise InputError(field_name, f"has {len(values)} {'entry' if len(values) == 1 else 'entries'} for {n} "
                                         f"datasets in data; give one split name for all, or a list of {n} (one per "
                                         f"dataset)")
    elif isinstance(value, str) and "," in value:
        return _per_dataset([v.strip() for v in value.split(",")], field_name, n, allow_none)
    else:
        values = [value] * n
    for v in values:
        if not ((isinstance(v, str) and v.strip()) or (v is None and allow_none)):
            raise InputError(field_name, f"a split name must be a non-empty string{' or null' if allow_none else ''}"
                                         f", got {v!r}")
    return values


def _short_names(paths: list[str]) -> list[str]:
    """Score keys: the dataset JSON's folder name (a folder dataset: its own name); where two share it, the file
    names; still equal, a number."""
    def folder(p: Path) -> str:
        p = p.resolve()
        return (p.name if p.is_dir() else p.parent.name) or p.stem or "data"

    names = [folder(Path(p)) for p in paths]
    names = [Path(p).stem if names.count(n) > 1 and Path(p).suffix else n for p, n in zip(paths, names)]
    out: list[str] = []
    for n in names:
        name, k = n, 2
        while name in out:
            name, k = f"{n}_{k}", k + 1
        out.append(name)
    return out


@dataclass
class ImageSamples:
    """One image and what it teaches: its captions and its (question, answer, type) triples."""

    path: Path
    image_id: int | str
    captions: list[str] = field(default_factory=list)
    questions: list[tuple[str, str, str]] = field(default_factory=list)
    label: str | None = None
    source: int = 0                       # index of its dataset in the run's ``data``


def load_samples(data: str | Path, split: str, vqa: bool = True) -> list[ImageSamples]:
    """Images of ``split`` with their captions (caption JSON) and questions (derived from the captions and scene
    class, or a VQA dataset's own)."""
    records = list(open_dataset(data))
    by_image: dict = {}
    captions = [r for r in records if isinstance(r, CaptionRecord) and r.path is not None]
    for r in captions:
        if r.split == split:
            by_image[r.image_id] = ImageSamples(r.path, r.image_id, list(r.captions), label=r.label)
    questions = [r for r in records if isinstance(r, VQARecord)]
    if vqa and not questions and captions:
        questions = derive_questions(captions)
    for q in questions:
        if q.split != split or q.path is None:
            continue
        item = by_image.setdefault(q.image_id, ImageSamples(q.path, q.image_id))
        item.questions.append((q.question, q.answer, q.question_type))
    out = [s for s in by_image.values() if s.captions or s.questions]
    if not out:
        raise InputError(data, f"no images with captions or questions in split {split!r}")
    return out


def build_captioner(cfg: CaptionTrainConfig, train_items: list[ImageSamples], feature_dim: int) -> Captioner:
    """A fresh bridge: own decoder (tokenizer from the training texts) or the user's local LM."""
    if cfg.lm is None:
        texts = [c for s in train_items for c in s.captions]
        texts += [f"{question_prompt(q)} {a}" for s in train_items for q, a, _ in s.questions] + [CAPTION_PROMPT]
        tokenizer = train_word_tokenizer(texts, cfg.vocab_min_frequency)
        lm = small_decoder(tokenizer, cfg.n_embd, cfg.n_layer, cfg.n_head, dropout=cfg.dropout)
        lm_path = None
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (Path(cfg.lm) / "config.json").is_file():
            raise InputError(cfg.lm, "not a Hugging Face model folder (config.json missing); TerraVL never "
                                     "downloads: give a local path")
        lm = AutoModelForCausalLM.from_pretrained(cfg.lm, dtype=torch.float32, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(cfg.lm, local_files_only=True)
        lm_path = cfg.lm
    return Captioner.build(lm, tokenizer, feature_dim, encoder=cfg.encoder, prefix_len=cfg.prefix_len,
                           hidden=cfg.hidden, dropout=cfg.dropout, lm_path=lm_path, lora=cfg.lora,
                           beams=cfg.beams, max_tokens=cfg.max_tokens, name=cfg.name)


def train(cfg: CaptionTrainConfig, resume: bool = False, log=print) -> dict:
    """Train on ``cfg.device``, checkpoint every epoch (``--resume`` continues), export the best epoch to
    ``out/model``."""
    import terravl.models as models
    from terravl.eval.captions import score_captions

    sets = datasets(cfg)
    run = start(cfg)
    rng = np.random.default_rng(cfg.seed)
    train_items, val_items = [], []
    for k, ds in enumerate(sets):
        # each dataset gives its share of the validation part: with one dataset this is the draw of a one-dataset run
        items = load_samples(ds.path, ds.train_split, cfg.vqa)[: cfg.limit_train]
        for s in items:
            s.source = k
        order = rng.permutation(len(items))
        n_val = int(round(cfg.val_fraction * len(items))) if len(items) >= 20 else 0
        val_items += [items[i] for i in sorted(order[:n_val])]
        train_items += [items[i] for i in sorted(order[n_val:])]
    encoder = models.load(cfg.encoder, device=run.device)
    if hasattr(encoder, "use_memory"):
        encoder.use_memory = False
    cache = run.out / "cache"
    views = VIEWS[: max(1, cfg.views)]
    base, kept, failed = image_features(encoder, [s.path for s in train_items], "identity", cache, cfg.progress)
    for f in failed:
        log(f"skipped {f['path']}: {f['error']}")
    train_items = [train_items[i] for i in kept]
    features = [torch.from_numpy(base)] + [
        torch.from_numpy(image_features(encoder, [s.path for s in train_items], v, cache, cfg.progress)[0])
        for v in views[1:]]
    val_feats, val_kept, _ = image_features(encoder, [s.path for s in val_items], "identity", cache, cfg.progress) \
        if val_items else (np.zeros((0, base.shape[1]), np.float32), [], [])
    val_items = [val_items[i] for i in val_kept]

    model = build_captioner(cfg, train_items, base.shape[1]).to(run.device)
    caption_prompt = model.prompt_ids(CAPTION_PROMPT)
    captions = [[model.target_ids(c) for c in s.captions] for s in train_items]
    questions = [[(model.prompt_ids(question_prompt(q)), model.target_ids(a)) for q, a, _ in s.questions]
                 for s in train_items]
    with_q = [i for i, q in enumerate(questions) if q]
    with_c = [i for i, c in enumerate(captions) if c]
    per_epoch = len(with_c) + int(round(cfg.questions_per_image * len(with_q)))
    steps_per_epoch = max(1, math.ceil(per_epoch / cfg.batch_size))
    total = total_steps(cfg.max_steps, cfg.epochs, steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    log(f"training {sum(p.numel() for p in params) / 1e6:.2f} M parameters on {len(train_items)} images "
        f"({len(views)} views), {per_epoch} samples per epoch; validation: {len(val_items)} images; "
        f"{run.device}, {run.precision}")
    if len(sets) > 1:
        log("datasets: " + "; ".join(f"{ds.name} {sum(s.source == k for s in train_items)} train + "
                                     f"{sum(s.source == k for s in val_items)} validation images ({ds.train_split}), "
                                     f"scored on {ds.eval_split or 'nothing'}" for k, ds in enumerate(sets)))

    def plan_epoch() -> list[tuple[int, int]]:
        """Every caption sample once and questions drawn at random, shuffled (Python's seeded RNG)."""
        samples = [(i, -1) for i in with_c] + [(i, 1) for i in random.choices(with_q, k=per_epoch - len(with_c))]
        random.shuffle(samples)
        return samples

    def make_batch(samples: list[tuple[int, int]], b: int):
        """Features (a random view each, optional noise) and prompt/target token ids, drawn on the CPU."""
        batch = samples[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        if not batch:
            return None
        idx = torch.tensor([i for i, _ in batch])
        view = torch.randint(0, len(features), (len(batch),))
        feats = torch.stack([features[v][i] for v, i in zip(view.tolist(), idx.tolist())])
        if cfg.feature_noise > 0:
            feats = feats + cfg.feature_noise * torch.randn_like(feats)
        prompts, targets = [], []
        for i, kind in batch:
            if kind < 0:
                prompts.append(caption_prompt)
                targets.append(random.choice(captions[i]))
            else:
                p, t = random.choice(questions[i])
                prompts.append(p)
                targets.append(t)
        return feats, prompts, targets

    def validate() -> dict:
        """The evaluation hook: CIDEr-D and BLEU-4 of greedy captions of the validation part, scored per dataset
        (CIDEr's document frequencies are a corpus's own) and averaged weighted by validation images, so each
        image counts once as in a one-dataset run; the per-dataset values are kept beside (``val_CIDEr/NAME``)."""
        if not val_items:
            return {}
        preds = model.generate(val_feats, CAPTION_PROMPT, beams=1, max_tokens=cfg.max_tokens)
        per_set = {}
        for k, ds in enumerate(sets):
            refs = {i: s.captions for i, s in enumerate(val_items) if s.source == k and s.captions}
            if refs:
                per_set[ds.name] = (len(refs), score_captions(refs, {i: preds[i] for i in refs}, with_meteor=False))
        if not per_set:
            return {}
        if len(per_set) == 1:
            scores = next(iter(per_set.values()))[1]
            return {"val_CIDEr": scores["CIDEr"], "val_Bleu_4": scores["Bleu_4"]}
        n = sum(c for c, _ in per_set.values())
        out = {f"val_{m}": sum(c * s[m] for c, s in per_set.values()) / n for m in ("CIDEr", "Bleu_4")}
        out.update({f"val_CIDEr/{name}": s["CIDEr"] for name, (_, s) in per_set.items()})
        return out

    state = fit(run, cfg, model, optimizer, total=total, steps_per_epoch=steps_per_epoch, warmup=cfg.warmup_steps,
                plan_epoch=plan_epoch, make_batch=make_batch,
                compute_loss=lambda batch: model.loss_from_ids(*batch), evaluate=validate, resume=resume,
                clip_grad=1.0, trainable_only=True, keep_best="val_CIDEr", log=log)
    best_file = run.out / "best.pt"
    if best_file.is_file():
        model.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True), strict=False)
    model.eval()
    info = {"config": asdict(cfg), "best_epoch": state["best"], "history": state["history"],
            "data": _describe(cfg, train_items, val_items, sets), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(run.device), "precision": run.precision,
            "elapsed_s": round(state["elapsed"], 1)}
    folder = model.save(run.out / "model", {"name": cfg.name})
    model._encoder = encoder
    if state["step"] >= total and any(ds.eval_split for ds in sets):
        scores = {}
        for k, ds in enumerate(sets):
            if ds.eval_split:
                mine = [s for s in train_items if s.source == k]
                scores[ds.name] = evaluate_split(
                    model, cfg, log, captions=any(s.captions for s in mine),
                    questions=any(s.questions for s in mine), data=ds.path, split=ds.eval_split,
                    label=ds.name if len(sets) > 1 else "")
        # one dataset: today's shape, {"caption": …, "vqa": …}; several: the same per dataset name
        info["scores"] = scores[sets[0].name] if len(sets) == 1 else scores
    (folder / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def evaluate_split(model: Captioner, cfg: CaptionTrainConfig, log=print, captions: bool = True,
                   questions: bool = True, data: str | None = None, split: str | None = None,
                   label: str = "") -> dict:
    """Captioning (coco-caption, with METEOR) and VQA accuracy (the dataset's questions, or derived ones) on the
    evaluation split of ``data`` (default: ``cfg.data`` and ``cfg.eval_split``), for what the training data had."""
    from terravl.eval.runners import eval_caption_model, eval_vqa_model

    data = cfg.data if data is None else data
    split = cfg.eval_split if split is None else split
    where = f"{label} {split}" if label else "evaluation split"
    result = {}
    if captions:
        result["caption"] = eval_caption_model(data, model, split, limit=cfg.limit_eval)["scores"]
        log(f"{where} captioning: " + " ".join(f"{k} {v:.4f}" for k, v in result["caption"].items()))
    if cfg.vqa and questions:
        result["vqa"] = eval_vqa_model(data, model, split, limit=cfg.limit_eval)["scores"]
        log(f"{where} VQA: {result['vqa']['per_type']}")
    return result


def _counts(items: list[ImageSamples]) -> dict:
    """How much a list of training images teaches: images, captions, questions (per type)."""
    per_type: dict = defaultdict(int)
    for s in items:
        for _, _, t in s.questions:
            per_type[t] += 1
    return {"train_images": len(items), "train_captions": sum(len(s.captions) for s in items),
            "train_questions": sum(len(s.questions) for s in items), "train_questions_per_type": dict(per_type)}


def _describe(cfg: CaptionTrainConfig, train_items: list[ImageSamples], val_items: list[ImageSamples],
              sets: list[Dataset]) -> dict:
    """Run data for training.json: one dataset in the shape of a one-dataset run (path, counts, checksums);
    several: the totals, and the same per dataset under ``datasets``."""
    from terravl.train.data import file_checksum, images_checksum

    totals = _counts(train_items)
    info = {"dataset": sets[0].path if len(sets) == 1 else [ds.path for ds in sets],
            "train_images": totals["train_images"], "validation_images": len(val_items),
            "train_captions": totals["train_captions"], "train_questions": totals["train_questions"],
            "train_images_sha256": images_checksum([s.path for s in train_items])}
    if len(sets) == 1:
        if Path(sets[0].path).is_file():
            info["dataset_sha256"] = file_checksum(Path(sets[0].path))
        info["train_questions_per_type"] = totals["train_questions_per_type"]
        return info
    info["train_questions_per_type"] = totals["train_questions_per_type"]
    info["datasets"] = {}
    for k, ds in enumerate(sets):
        entry = {"dataset": ds.path, "train_split": ds.train_split, "eval_split": ds.eval_split,
                 **_counts([s for s in train_items if s.source == k]),
                 "validation_images": sum(s.source == k for s in val_items)}
        if Path(ds.path).is_file():
            entry["dataset_sha256"] = file_checksum(Path(ds.path))
        info["datasets"][ds.name] = entry
    return info
