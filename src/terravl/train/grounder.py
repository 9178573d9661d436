"""Training of the referring-segmentation head (``terravl train grounder``) on composites.

Composites (:mod:`terravl.datasets.composites`) are drawn from the *train* splits of ``rsicd_aid`` and
``ucm_captions`` only; a small share of the train scenes (``val_fraction``, chosen by file name hash) is kept apart
to pick the best epoch, and the benchmark's held-apart images (rsicd_aid test, ucm_captions val) are never touched.

The image tower is frozen, so each composite's feature maps are computed once and cached (``OUT/cache``, float16
memory maps): training then moves only the head's few hundred thousand weights over cached maps, which a 2-core
CPU does in minutes. A share of the composites (``negative_rate``) name a class that is not in the picture and have
an empty target, so the head learns to answer "nothing".

Loss: binary cross-entropy plus soft Dice (Dice on composites with a target only), at 1/4 of the input against the
area-averaged target.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from terravl.errors import InputError
from terravl.train.settings import settings_from_dict


@dataclass
class GrounderTrainConfig:
    """Flat settings (YAML ``--config`` or ``--set KEY=VALUE``); the shipped recipe is configs/terravl-grounder.yaml."""

    data_root: str = "../shared/data"    # folder holding rsicd_aid/ and ucm_captions/
    encoder: str = "terravl-default-v2"  # a TerraVL encoder with a CNN tower (v3's EfficientNet is not read)
    out: str = "runs/terravl-grounder"
    composites: int = 6000
    val_composites: int = 300
    val_fraction: float = 0.05
    negative_rate: float = 0.15
    resolution: int = 224
    hidden: int = 48
    rgb_channels: int = 8
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    pos_weight: float = 2.0               # the target is a fifth of the pixels or less: weigh its BCE up
    warmup_steps: int = 100
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    max_steps: int | None = None
    name: str = "terravl-grounder"

    @classmethod
    def from_dict(cls, values: dict) -> "GrounderTrainConfig":
        return settings_from_dict(cls, values)


def _held_out(path: Path, fraction: float) -> bool:
    digest = hashlib.sha1(path.name.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def _cache_key(cfg: GrounderTrainConfig, checksum: str) -> str:
    keys = ("data_root", "encoder", "composites", "val_composites", "val_fraction", "negative_rate", "resolution",
            "seed")
    return hashlib.sha1(json.dumps([{k: getattr(cfg, k) for k in keys}, checksum]).encode()).hexdigest()[:16]


class FeatureCache:
    """Cached inputs of the head for a list of composites: the tower's two last maps (float16), the image at 1/4
    (float16), the text embedding, the target at 1/4 (soft) and at full size (for IoU)."""

    def __init__(self, folder: Path, n: int, res: int, mid_c: int, top_c: int, dim: int, mode: str = "r"):
        self.folder = folder
        q, e, s = res // 4, res // 8, res // 16
        shapes = {"mid": ((n, mid_c, e, e), np.float16), "top": ((n, top_c, s, s), np.float16),
                  "low": ((n, 3, q, q), np.float16), "target": ((n, q, q), np.float16),
                  "full": ((n, res, res), np.bool_), "text": ((n, dim), np.float32), "negative": ((n,), np.bool_)}
        folder.mkdir(parents=True, exist_ok=True)
        self.arrays = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode=mode, dtype=dtype, shape=shape)
                       if mode == "w+" else np.load(folder / f"{name}.npy", mmap_mode="r")
                       for name, (shape, dtype) in shapes.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def flush(self) -> None:
        for a in self.arrays.values():
            if hasattr(a, "flush"):
                a.flush()


def build_cache(cache: FeatureCache, offset: int, items: list, tower, encoder, res: int, log,
                batch: int = 32) -> FeatureCache:
    """Compute and store the head's inputs for ``items`` (composites) at rows ``offset`` … of ``cache``."""
    n = len(items)
    cache["text"][offset:offset + n] = encoder.encode_texts([c.expression for c in items])
    started = time.perf_counter()
    for start in range(0, n, batch):
        chunk = items[start:start + batch]
        images = np.stack([c.image for c in chunk])
        pixels = tower.normalise(images)
        mid, top = tower.maps(pixels)
        low = F.interpolate(pixels, size=(res // 4, res // 4), mode="area")
        masks = torch.from_numpy(np.stack([c.mask for c in chunk]).astype(np.float32))[:, None]
        target = F.interpolate(masks, size=(res // 4, res // 4), mode="area")[:, 0]
        sl = slice(offset + start, offset + start + len(chunk))
        cache["mid"][sl] = mid.cpu().numpy().astype(np.float16)
        cache["top"][sl] = top.cpu().numpy().astype(np.float16)
        cache["low"][sl] = low.cpu().numpy().astype(np.float16)
        cache["target"][sl] = target.numpy().astype(np.float16)
        cache["full"][sl] = np.stack([c.mask for c in chunk])
        cache["negative"][sl] = [c.negative for c in chunk]
        if log and (start // batch) % 20 == 0:
            log(f"features: {offset + start + len(chunk)} ({time.perf_counter() - started:.0f} s for this part)")
    cache.flush()
    return cache


def _batch(cache: FeatureCache, idx: np.ndarray, dense, device) -> tuple:
    idx = np.sort(idx)
    get = lambda name: torch.from_numpy(np.ascontiguousarray(cache[name][idx])).to(device)  # noqa: E731
    mid, top, low = get("mid").float(), get("top").float(), get("low").float()
    text = get("text")
    sim = (dense(top) * text[:, :, None, None]).sum(1, keepdim=True)
    return mid, top, sim, low, text, get("target").float(), get("negative")


def _loss(logits: torch.Tensor, target: torch.Tensor, negative: torch.Tensor, dice_weight: float,
          pos_weight: float = 1.0) -> torch.Tensor:
    logits = logits[:, 0]
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(pos_weight, device=logits.device))
    prob = torch.sigmoid(logits)
    pos = ~negative
    if dice_weight and pos.any():
        p, t = prob[pos].flatten(1), target[pos].flatten(1)
        dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
        return bce + dice_weight * dice.mean()
    return bce


THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
"""Pixel thresholds tried on the validation composites after training; the best one is the model's."""


@torch.no_grad()
def validate(head, cache: FeatureCache, dense, device, res: int, batch: int = 64, threshold: float = 0.5) -> dict:
    """mIoU of the thresholded full-size mask on the positives, and the share of negatives answered with
    nothing (no pixel over the threshold)."""
    head.eval()
    n = cache["text"].shape[0]
    ious, empty_ok = [], []
    for start in range(0, n, batch):
        idx = np.arange(start, min(n, start + batch))
        mid, top, sim, low, text, _, negative = _batch(cache, idx, dense, device)
        logits = head(mid, top, sim, low, text)
        prob = torch.sigmoid(F.interpolate(logits, size=(res, res), mode="bilinear", align_corners=False))[:, 0]
        pred = (prob > threshold).cpu().numpy()
        full = np.asarray(cache["full"][idx])
        for p, t, neg in zip(pred, full, negative.cpu().numpy()):
            if neg:
                empty_ok.append(not p.any())
            else:
                union = (p | t).sum()
                ious.append((p & t).sum() / union if union else 1.0)
    head.train()
    return {"miou": float(np.mean(ious)) if ious else 0.0,
            "negatives_empty": float(np.mean(empty_ok)) if empty_ok else None}


def calibrate(folder: Path, encoder, val_cache: FeatureCache, dense, device, res: int, log=print) -> dict:
    """Choose the best epoch's pixel threshold by validation mIoU over :data:`THRESHOLDS` (validation composites
    come from the kept-apart train scenes, never a test split) and write it into the model's settings: a head
    trained with a weighted loss is not calibrated at 0.5."""
    from terravl.models.grounder import Grounder

    model = Grounder.load(folder, encoder)
    model.head.to(device)
    scores = {t: validate(model.head, val_cache, dense, device, res, threshold=t) for t in THRESHOLDS}
    chosen = max(THRESHOLDS, key=lambda t: (scores[t]["miou"], -abs(t - 0.5)))
    model.arch.threshold = chosen
    model.save(folder, None)
    log(f"pixel threshold {chosen} (validation mIoU {scores[chosen]['miou']:.4f}; at 0.5: {scores[0.5]['miou']:.4f})")
    return {"chosen": chosen, "by_threshold": {str(t): s for t, s in scores.items()}}


def train(cfg: GrounderTrainConfig, resume: bool = False, log=print) -> dict:
    """Build (or reuse) the feature cache, train the head, write the best epoch to ``OUT/model``."""
    import terravl.models as m
    from terravl.datasets.composites import TRAIN_SPLITS, CompositeMaker, composites, load_scenes
    from terravl.models.grounder import Grounder, GrounderArch, GrounderHead, Tower, encoder_checksum

    root = Path(cfg.data_root)
    if not root.is_dir():  # before any model loads
        raise InputError("data_root", f"{root} is not a folder (it must hold rsicd_aid/ and ucm_captions/)")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and device.type != "cuda":
        raise InputError("device", "cuda was asked for but torch sees no CUDA GPU")
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = m.load(cfg.encoder, device=device)
    tower = Tower(encoder)
    checksum = encoder_checksum(encoder)
    key = _cache_key(cfg, checksum)
    cache_dir = out / "cache" / key
    started = time.perf_counter()
    if (cache_dir / "done").is_file():
        log(f"reusing the feature cache {cache_dir}")
        train_cache = FeatureCache(cache_dir / "train", cfg.composites, cfg.resolution, tower.widths[-2],
                                   tower.widths[-1], encoder.embed_dim)
        val_cache = FeatureCache(cache_dir / "val", cfg.val_composites, cfg.resolution, tower.widths[-2],
                                 tower.widths[-1], encoder.embed_dim)
    else:
        scenes = load_scenes(root, TRAIN_SPLITS)
        fit_scenes = [s for s in scenes if not _held_out(s.path, cfg.val_fraction)]
        val_scenes = [s for s in scenes if _held_out(s.path, cfg.val_fraction)]
        log(f"{len(fit_scenes)} train scenes, {len(val_scenes)} kept apart for validation")
        shapes = (cfg.resolution, tower.widths[-2], tower.widths[-1], encoder.embed_dim)
        val_cache = build_cache(FeatureCache(cache_dir / "val", cfg.val_composites, *shapes, "w+"), 0,
                                composites(val_scenes, cfg.val_composites, cfg.seed + 1, cfg.resolution,
                                           cfg.negative_rate, balanced=False), tower, encoder, cfg.resolution, log)
        cache = FeatureCache(cache_dir / "train", cfg.composites, *shapes, "w+")
        maker = CompositeMaker(fit_scenes, cfg.resolution, cfg.negative_rate)
        rng = np.random.default_rng(cfg.seed)
        chunk = 500
        for start in range(0, cfg.composites, chunk):  # a chunk of composites at a time: constant memory
            items = [maker.make(rng) for _ in range(min(chunk, cfg.composites - start))]
            build_cache(cache, start, items, tower, encoder, cfg.resolution, log)
        cache.flush()
        train_cache = FeatureCache(cache_dir / "train", cfg.composites, cfg.resolution, tower.widths[-2],
                                   tower.widths[-1], encoder.embed_dim)
        (cache_dir / "done").write_text("ok\n")
    feature_seconds = time.perf_counter() - started
    arch = GrounderArch(encoder=cfg.encoder, resolution=cfg.resolution, hidden=cfg.hidden,
                        rgb_channels=cfg.rgb_channels, text_dim=encoder.embed_dim, mid_channels=tower.widths[-2],
                        top_channels=tower.widths[-1], encoder_sha256=checksum)
    head = GrounderHead(arch).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = cfg.composites
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, min(cfg.warmup_steps, total // 10))) * 0.5 * (1 + math.cos(math.pi * min(s, total) / max(total, 1))))
    checkpoint = out / "checkpoint.pt"
    epoch0, step, history, best = 0, 0, [], None
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        schedule.load_state_dict(state["schedule"])
        epoch0, step, history, best = state["epoch"], state["step"], state["history"], state["best"]
        log(f"resumed at epoch {epoch0}")
    dense = tower.dense
    rng = np.random.default_rng(cfg.seed + 7)
    for _ in range(epoch0):
        rng.permutation(n)
    train_started = time.perf_counter()
    head.train()
    for epoch in range(epoch0, cfg.epochs):
        order = rng.permutation(n)
        losses = []
        for b in range(steps_per_epoch):
            if step >= total:
                break
            mid, top, sim, low, text, target, negative = _batch(
                train_cache, order[b * cfg.batch_size:(b + 1) * cfg.batch_size], dense, device)
            loss = _loss(head(mid, top, sim, low, text), target, negative, cfg.dice_weight, cfg.pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            step += 1
            losses.append(loss.item())
        scores = validate(head, val_cache, dense, device, cfg.resolution)
        entry = {"epoch": epoch + 1, "step": step, "loss": float(np.mean(losses)) if losses else None, **scores,
                 "seconds": round(time.perf_counter() - train_started, 1)}
        history.append(entry)
        empty = scores["negatives_empty"]
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {entry['loss']:.4f}, val mIoU {scores['miou']:.4f}, "
            f"negatives answered empty {'—' if empty is None else f'{empty:.1%}'}")
        if best is None or scores["miou"] > best["miou"]:
            best = entry
            Grounder(arch, head, encoder).save(out / "model", None)
        torch.save({"head": head.state_dict(), "opt": opt.state_dict(), "schedule": schedule.state_dict(),
                    "epoch": epoch + 1, "step": step, "history": history, "best": best}, checkpoint)
        if step >= total:
            break
    sweep = calibrate(out / "model", encoder, val_cache, dense, device, cfg.resolution, log)
    info = {"config": asdict(cfg), "encoder_sha256": checksum, "best_epoch": best, "history": history,
            "threshold": sweep,
            "parameters": sum(p.numel() for p in head.parameters()), "steps": step,
            "feature_seconds": round(feature_seconds, 1),
            "train_seconds": round(time.perf_counter() - train_started, 1),
            "data": {"train": "rsicd_aid train + ucm_captions train (composites; val_fraction of the scenes kept "
                              "apart for epoch selection)"}}
    (out / "model" / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info
