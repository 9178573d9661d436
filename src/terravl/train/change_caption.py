"""Training of a change captioner on LEVIR-CC (``terravl train change-caption``).

The captioner's recipe (:mod:`terravl.train.caption`) over pairs: the frozen encoder embeds the before and after
image of every pair once per augmentation view (the same flip on both dates, so a flip is never "change"), the two
vectors are fused (:func:`terravl.models.change_captioner.fuse`) and the bridge learns next-token prediction of
the pair's captions, every caption once per epoch. LEVIR-CC's own ``val`` split picks the best epoch (greedy
CIDEr-D); at the end the evaluation split (``test``) is captioned into ``predictions-<split>.json``, the file
``terravl eval change`` scores, and scored for the record. Decoder, tokenizer, loss, loop and feature cache are the
captioner's.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from terravl.datasets.levir_cc import LevirCC
from terravl.datasets.records import ChangePairRecord
from terravl.errors import InputError
from terravl.models.bridge import CAPTION_PROMPT
from terravl.models.change_captioner import ChangeCaptioner, fuse, fusion_width
from terravl.models.feature_cache import VIEWS, image_features
from terravl.train.caption import CaptionTrainConfig, ImageSamples, build_captioner
from terravl.train.loop import fit, start, total_steps
from terravl.train.settings import settings_from_dict

NOT_FOR_PAIRS = ("vqa", "questions_per_image", "val_fraction")
"""Caption-training settings that mean nothing here (LEVIR-CC has no questions and a validation split of its own)."""


@dataclass
class ChangeCaptionTrainConfig(CaptionTrainConfig):
    """The caption trainer's settings with the defaults of configs/terravl-change-captioner.yaml (a test keeps
    them equal); ``data`` is the LEVIR-CC folder or its LevirCCcaptions.json."""

    out: str = "runs/terravl-change-captioner"
    vqa: bool = False
    epochs: int = 10
    batch_size: int = 64
    warmup_steps: int = 300
    views: int = 3
    name: str = "terravl-change-captioner"
    val_split: str | None = "val"        # LEVIR-CC's validation split: picks the best epoch (None: the last)
    fusion: str = "full"                  # [f_a, f_b, f_b - f_a, |f_b - f_a|]; or concat, diff
    meteor: bool = True                   # METEOR (Java) in the final scores of the evaluation split

    @classmethod
    def from_dict(cls, values: dict) -> "ChangeCaptionTrainConfig":
        unused = sorted(set(values) & set(NOT_FOR_PAIRS))
        if unused:
            raise ValueError(f"setting(s) of `train caption` that change-caption training does not use: "
                             f"{', '.join(unused)}")
        return settings_from_dict(cls, values)


# -- data -----------------------------------------------------------------------------------------------------

def read_pairs(dataset: str | Path, log=print) -> LevirCC:
    """The LEVIR-CC reader of ``dataset`` (a folder or its JSON file); a malformed JSON file is an error naming
    it, and entries the reader skipped are logged."""
    path = Path(dataset)
    if not path.exists():
        raise InputError(dataset, "no such LEVIR-CC folder or file")
    preferred = path / "LevirCCcaptions.json"
    reader = LevirCC(preferred if path.is_dir() and preferred.is_file() else path)
    for problem in reader.problems[:5]:
        log(f"skipped {problem.path}: {problem.error}")
    if len(reader.problems) > 5:
        log(f"… and {len(reader.problems) - 5} more skipped entries")
    return reader


def split_pairs(reader: LevirCC, split: str, log=print, limit: int | None = None) -> list[ChangePairRecord]:
    """The pairs of ``split`` with captions and both images on disk (missing ones logged)."""
    pairs = [r for r in reader if r.split == split and r.captions]
    missing = [r for r in pairs if not (r.before.is_file() and r.after.is_file())]
    if missing:
        log(f"{len(missing)} {split} pair(s) without both images, e.g. {missing[0].before} / {missing[0].after}")
    pairs = [r for r in pairs if r.before.is_file() and r.after.is_file()][:limit]
    if not pairs:
        raise InputError(reader.path, f"no pairs with captions and both images (images/{split}/A|B/<file>) in "
                                      f"split {split!r}")
    return pairs


def pair_features(encoder, pairs: list[ChangePairRecord], view: str, fusion: str, cache: Path | None,
                  progress: bool, log=print) -> tuple[np.ndarray, list[ChangePairRecord]]:
    """Fused (not yet standardised) features of the pairs under one view, through the captioner's feature cache
    (one entry per date); a pair with an unreadable image is left out and logged."""
    before, kept_a, failed_a = image_features(encoder, [p.before for p in pairs], view, cache, progress)
    after, kept_b, failed_b = image_features(encoder, [p.after for p in pairs], view, cache, progress)
    for f in failed_a + failed_b:
        log(f"skipped {f['path']}: {f['error']}")
    row_a, row_b = {i: r for r, i in enumerate(kept_a)}, {i: r for r, i in enumerate(kept_b)}
    both = [i for i in range(len(pairs)) if i in row_a and i in row_b]
    fused = fuse(before[[row_a[i] for i in both]], after[[row_b[i] for i in both]], fusion) if both else \
        np.zeros((0, fusion_width(fusion, encoder.embed_dim or 1)), np.float32)
    return fused, [pairs[i] for i in both]


# -- training -------------------------------------------------------------------------------------------------

def train(cfg: ChangeCaptionTrainConfig, resume: bool = False, log=print) -> dict:
    """Train on ``cfg.device``, checkpoint every epoch (``--resume`` continues), export the best epoch to
    ``out/model``; then caption and score the evaluation split when the run is complete."""
    import terravl.models as models
    from terravl.eval.captions import score_captions

    run = start(cfg)
    fusion_width(cfg.fusion, 1)
    reader = read_pairs(cfg.data, log)
    train_pairs = split_pairs(reader, cfg.train_split, log, cfg.limit_train)
    val_pairs = split_pairs(reader, cfg.val_split, log, cfg.limit_eval) if cfg.val_split else []
    encoder = models.load(cfg.encoder, device=run.device)
    if hasattr(encoder, "use_memory"):
        encoder.use_memory = False
    cache = run.out / "cache"
    views = VIEWS[: max(1, cfg.views)]
    base, train_pairs = pair_features(encoder, train_pairs, views[0], cfg.fusion, cache, cfg.progress, log)
    if not train_pairs:
        raise InputError(cfg.data, f"no readable pairs in split {cfg.train_split!r}")
    extra_views = [pair_features(encoder, train_pairs, v, cfg.fusion, cache, cfg.progress, log)[0]
                   for v in views[1:]]
    val_feats, val_pairs = pair_features(encoder, val_pairs, "identity", cfg.fusion, cache, cfg.progress, log) \
        if val_pairs else (base[:0], [])

    encoder_dim = base.shape[1] // fusion_width(cfg.fusion, 1)
    bridge = build_captioner(cfg, [ImageSamples(p.before, p.name, list(p.captions)) for p in train_pairs],
                             base.shape[1])
    model = ChangeCaptioner.from_captioner(bridge, encoder.source or cfg.encoder, encoder_dim, cfg.fusion,
                                           train_features=base)
    features = [torch.from_numpy(model.standardise(f)) for f in [base, *extra_views]]
    val_feats = model.standardise(val_feats)
    model = model.to(run.device)
    prompt = model.prompt_ids(CAPTION_PROMPT)
    samples = [(i, model.target_ids(c)) for i, p in enumerate(train_pairs) for c in p.captions]
    steps_per_epoch = max(1, math.ceil(len(samples) / cfg.batch_size))
    total = total_steps(cfg.max_steps, cfg.epochs, steps_per_epoch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    trained = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    log(f"training {trained / 1e6:.2f} M parameters on {len(train_pairs)} pairs "
        f"({len(views)} views, {len(samples)} captions per epoch, fusion {cfg.fusion}); validation: "
        f"{len(val_pairs)} pairs; {run.device}, {run.precision}")

    def plan_epoch() -> list[int]:
        return random.sample(range(len(samples)), len(samples))

    def make_batch(order: list[int], b: int):
        chosen = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        if not chosen:
            return None
        rows = [samples[k][0] for k in chosen]
        view = torch.randint(0, len(features), (len(rows),)).tolist()
        feats = torch.stack([features[v][i] for v, i in zip(view, rows)])
        if cfg.feature_noise > 0:
            feats = feats + cfg.feature_noise * torch.randn_like(feats)
        return feats, [prompt] * len(rows), [samples[k][1] for k in chosen]

    def validate() -> dict:
        if not val_pairs:
            return {}
        greedy = model.generate(val_feats, CAPTION_PROMPT, beams=1, max_tokens=cfg.max_tokens)
        scores = score_captions({p.name: list(p.captions) for p in val_pairs},
                                {p.name: t for p, t in zip(val_pairs, greedy)}, with_meteor=False)
        return {"val_CIDEr": scores["CIDEr"], "val_Bleu_4": scores["Bleu_4"]}

    state = fit(run, cfg, model, optimizer, total=total, steps_per_epoch=steps_per_epoch, warmup=cfg.warmup_steps,
                plan_epoch=plan_epoch, make_batch=make_batch,
                compute_loss=lambda batch: model.loss_from_ids(*batch), evaluate=validate, resume=resume,
                clip_grad=1.0, trainable_only=True, keep_best="val_CIDEr" if val_pairs else None, log=log)
    best_file = run.out / "best.pt"
    if val_pairs and best_file.is_file():
        model.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True), strict=False)
    model.eval()
    folder = model.save(run.out / "model", {"name": cfg.name})
    info = {"config": asdict(cfg), "best_epoch": state["best"], "history": state["history"],
            "data": _describe(cfg, reader, train_pairs, val_pairs), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(run.device), "precision": run.precision,
            "elapsed_s": round(state["elapsed"], 1)}
    model._encoder = encoder
    if cfg.eval_split and state["step"] >= total:
        info.update(predict_and_score(model, cfg.data, cfg.eval_split, run.out, cfg.meteor, reader=reader,
                                      limit=cfg.limit_eval, progress=cfg.progress, log=log))
    (folder / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


# -- predictions ----------------------------------------------------------------------------------------------

def predictions_file(out: str | Path, split: str) -> Path:
    return Path(out) / f"predictions-{split}.json"


def write_predictions(model: ChangeCaptioner, dataset: str | Path, split: str, file: str | Path,
                      reader: LevirCC | None = None, limit: int | None = None, progress: bool = True,
                      log=print) -> Path:
    """Caption every pair of ``split`` (beam search, the model's settings) into ``file`` in the format ``terravl
    eval change`` reads: ``[{"image_id": <file stem>, "caption": …}]``."""
    reader = reader or read_pairs(dataset, log)
    pairs = split_pairs(reader, split, log, limit)
    fused, pairs = pair_features(model.encoder, pairs, "identity", model.fusion, None, progress, log)
    texts = model.generate(model.standardise(fused), CAPTION_PROMPT, progress=progress)
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps([{"image_id": p.name, "caption": t} for p, t in zip(pairs, texts)], indent=1) + "\n")
    log(f"wrote {len(pairs)} {split} captions to {file}")
    return file


def predict_and_score(model: ChangeCaptioner, dataset: str | Path, split: str, out: str | Path,
                      meteor: bool = True, reader: LevirCC | None = None, limit: int | None = None,
                      progress: bool = True, log=print) -> dict:
    """``write_predictions`` to ``out/predictions-<split>.json``, then ``eval_change`` on it (all pairs of the
    split must be captioned, so ``limit`` skips the scoring)."""
    from terravl.eval.runners import eval_change

    file = write_predictions(model, dataset, split, predictions_file(out, split), reader, limit, progress, log)
    result: dict = {"predictions": str(file)}
    if limit is None:
        result["scores"] = eval_change(reader.path if reader else dataset, file, split, meteor)["scores"]
        log(f"{split} split: " + "; ".join(f"{group} " + " ".join(f"{k} {s[k]:.4f}" for k in ("Bleu_4", "METEOR",
                                                                                              "CIDEr") if k in s)
                                           for group, s in result["scores"].items()))
    return result


def _describe(cfg: ChangeCaptionTrainConfig, reader: LevirCC, train_pairs: list[ChangePairRecord],
              val_pairs: list[ChangePairRecord]) -> dict:
    from terravl.train.data import images_checksum

    return {"dataset": str(cfg.data), "train_pairs": len(train_pairs), "validation_pairs": len(val_pairs),
            "train_changed": sum(1 for p in train_pairs if p.changed),
            "train_captions": sum(len(p.captions) for p in train_pairs), "skipped_entries": len(reader.problems),
            "train_images_sha256": images_checksum([q for p in train_pairs for q in (p.before, p.after)])}


def predict(cfg: ChangeCaptionTrainConfig, model_dir: str | Path, log=print) -> dict:
    """Without training: caption ``cfg.eval_split`` with the change captioner in ``model_dir`` into
    ``cfg.out/predictions-<split>.json`` and score it (``terravl train change-caption --predict-with DIR``).
    Decoding uses the model's own settings (beams, max_tokens), as the training run's predictions did."""
    from terravl.models.change_captioner import load_change_captioner
    from terravl.train.loop import resolve_device

    if not cfg.data:
        raise InputError("data", "no dataset: give --dataset or a `data:` line in the --config YAML")
    if not cfg.eval_split:
        raise InputError("eval_split", "no split to caption: set eval_split (e.g. --set eval_split=test)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model = load_change_captioner(model_dir, device=device)
    result = predict_and_score(model, cfg.data, cfg.eval_split, cfg.out, cfg.meteor, limit=cfg.limit_eval,
                               progress=cfg.progress, log=log)
    return {"model": str(model_dir), "split": cfg.eval_split, **result}
