"""Training of TerraVL's change detector (``terravl train change-detector``) on synthetic pairs.

No change-detection training set ships here, so pairs are synthesised from the *train* splits of single-date scene
datasets (:mod:`terravl.train.change_synth`); checkpoints are selected on synthetic pairs made from the held-out
splits (``val_splits``), never from any test benchmark. Every step draws fresh pairs, so an "epoch" is simply
``steps_per_epoch`` steps followed by a validation. The loop (device, mixed precision on CUDA, warm-up + cosine
schedule, checkpoints, ``--resume``) is :func:`terravl.train.loop.fit`, shared with the other trainers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from terravl.errors import InputError
from terravl.models.change_detector import ChangeDetector
from terravl.train.change_synth import PairSynthesizer, SynthSettings, load_image_cache
from terravl.train.loop import fit, start, total_steps
from terravl.train.settings import settings_from_dict


@dataclass
class ChangeTrainConfig:
    """Flat settings; each can be set from YAML (``--config``) or ``--set KEY=VALUE``. The shipped recipe is
    configs/terravl-change.yaml."""

    data: list[str] | str | None = None   # caption JSONs / scene datasets whose images are the scenes
    out: str = "runs/terravl-change"
    train_split: str = "train"
    val_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    dataset_weights: list[float] | None = None  # how often each dataset gives the base scene (default: by size)
    max_images: int | None = None         # per dataset and split (a cap on the cache's memory)
    val_images: int = 200                 # per dataset, for the synthetic validation pairs
    val_pairs: int = 256
    cache_size: int = 160                 # scenes are cached at this side (UCM 256 px at 0.3 m → ≈0.5 m)
    # architecture
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 96])
    decoder: int = 32
    normalise: str = "per_image"
    backbone: str = "scratch"             # or a TerraVL dual encoder (terravl-default): its frozen image tower
    tower_stages: int = 3
    # synthetic pairs (terravl.train.change_synth.SynthSettings)
    crop: int = 128
    scale_min: float = 0.75
    scale_max: float = 1.0
    p_no_change: float = 0.1
    max_changes: int = 4
    p_buildings: float = 0.45
    p_remove: float = 0.25
    p_after: float = 0.7
    p_same_paste: float = 0.25
    p_landcover: float = 0.0
    p_whole_scene: float = 0.0
    p_large_building: float = 0.0
    landcover_classes: list[str] = field(default_factory=list)  # scene classes whose ground may change unlabelled
    max_shift: int = 2
    photometric: float = 1.0
    p_jpeg: float = 0.2
    p_blur: float = 0.2
    min_region: int = 10
    # loop
    epochs: int = 20
    steps_per_epoch: int = 200
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    dice_weight: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    max_steps: int | None = None
    stop_after_epochs: int | None = None
    progress: bool = True
    name: str = "terravl-change"

    @classmethod
    def from_dict(cls, values: dict) -> "ChangeTrainConfig":
        return settings_from_dict(cls, values)

    def synth(self, **changes) -> SynthSettings:
        return SynthSettings(**{**{f.name: getattr(self, f.name) for f in fields(SynthSettings)}, **changes})


def scene_paths(data: str, splits: set[str], limit: int | None) -> list[Path]:
    """Image paths of ``splits`` in a dataset TerraVL reads (caption JSON, class folders, …), deduplicated."""
    return [p for p, _ in scenes(data, splits, limit)]


def scenes(data: str, splits: set[str], limit: int | None) -> list[tuple[Path, str]]:
    """(image path, scene class or "") of ``splits``, deduplicated, at most ``limit``."""
    from terravl.datasets import open_dataset

    seen, out = set(), []
    for r in open_dataset(data):
        path = getattr(r, "path", None)
        if path is None or getattr(r, "split", None) not in splits or path in seen:
            continue
        seen.add(path)
        out.append((Path(path), str(getattr(r, "label", None) or "")))
    return out[:limit] if limit else out


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − soft Dice of the change class over the batch (pooled, so change-free pairs do not divide by zero)."""
    p = torch.sigmoid(logits.float())
    inter = (p * target).sum()
    return 1 - (2 * inter + 1) / (p.sum() + target.sum() + 1)


def pooled_scores(probs: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> dict:
    """Precision, recall, F1 and IoU of the change class over all pixels pooled."""
    pred, gt = probs >= threshold, masks > 0
    tp = float(np.sum(pred & gt))
    fp = float(np.sum(pred & ~gt))
    fn = float(np.sum(~pred & gt))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    return {"precision": p, "recall": r, "F1": f1, "IoU": iou}


def _datasets(cfg: ChangeTrainConfig) -> list[str]:
    data = [cfg.data] if isinstance(cfg.data, str) else list(cfg.data or [])
    if not data:
        raise InputError("data", "no training data: give --data or a `data:` list in the --config YAML")
    for d in data:
        if not Path(d).exists():
            raise InputError(d, "no such dataset file or folder")
    return data


def train(cfg: ChangeTrainConfig, resume: bool = False, log=print) -> dict:
    """Train on ``cfg.device``, checkpoint every epoch (``--resume`` continues), export the best epoch (synthetic
    validation F1) to ``out/model``."""
    data = _datasets(cfg)
    run = start(cfg)
    train_scenes = [scenes(d, {cfg.train_split}, cfg.max_images) for d in data]
    train_paths = [[p for p, _ in ts] for ts in train_scenes]
    val_paths = [scene_paths(d, set(cfg.val_splits), cfg.val_images) for d in data]
    if not any(train_paths):
        raise InputError(data[0], f"no images in split {cfg.train_split!r}")
    overlap = {p for ps in train_paths for p in ps} & {p for ps in val_paths for p in ps}
    if overlap:
        raise InputError("val_splits", f"{len(overlap)} validation images are also training images")
    cache = run.out / "cache"
    train_images = np.concatenate([load_image_cache(ps, cfg.cache_size, cache / f"train_{i}.npy", log)
                                   for i, ps in enumerate(train_paths) if ps])
    weights = _weights(cfg, [len(ps) for ps in train_paths])
    wanted = {c.lower() for c in cfg.landcover_classes}
    labels = [label.lower() for ts in train_scenes for _, label in ts]
    landcover = np.array([i for i, label in enumerate(labels) if label in wanted], dtype=np.int64)
    synth = PairSynthesizer(train_images, cfg.synth(), weights, landcover)
    n_val = sum(len(ps) for ps in val_paths)
    if n_val >= 2:
        val_images = np.concatenate([load_image_cache(ps, cfg.cache_size, cache / f"val_{i}.npy", log)
                                     for i, ps in enumerate(val_paths) if ps])
        val_a, val_b, val_m = PairSynthesizer(val_images, cfg.synth()).batch(np.random.default_rng(12345),
                                                                              cfg.val_pairs)
    else:
        val_a = val_b = val_m = None
        log("no validation images: every epoch is kept")

    detector = ChangeDetector.build(widths=list(cfg.widths), decoder=cfg.decoder, normalise=cfg.normalise,
                                    backbone=cfg.backbone, tower_stages=cfg.tower_stages)
    detector.device = run.device
    net = detector.net.to(run.device)
    if run.device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = total_steps(cfg.max_steps, cfg.epochs, cfg.steps_per_epoch)
    log(f"training {detector.n_params(trainable=True) / 1e6:.3f} M parameters on synthetic pairs from {len(train_images)} "
        f"scenes ({', '.join(str(len(p)) for p in train_paths)}); validation: {cfg.val_pairs if n_val >= 2 else 0} "
        f"pairs from {n_val} held-out scenes; {total} steps of {cfg.batch_size}; {run.device}, {run.precision}")

    def plan_epoch() -> np.random.Generator:
        """This epoch's pair generator, seeded from NumPy's global state (restored by ``--resume``)."""
        return np.random.default_rng(int(np.random.randint(0, 2 ** 31 - 1)))

    def make_batch(rng: np.random.Generator, b: int):
        before, after, mask = synth.batch(rng, cfg.batch_size)
        return torch.from_numpy(before), torch.from_numpy(after), torch.from_numpy(mask)

    def compute_loss(batch) -> torch.Tensor:
        before, after, mask = batch
        a, b = detector.prepare_tensor(before), detector.prepare_tensor(after)
        if run.device.type == "cpu":
            a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
        logits = net(a, b)
        target = mask[:, None].float()
        bce = F.binary_cross_entropy_with_logits(logits.float(), target)
        return bce + cfg.dice_weight * dice_loss(logits, target)

    def validate() -> dict:
        if val_a is None:
            return {}
        net.eval()
        probs = np.concatenate([np.stack(detector.predict_batch(list(val_a[i:i + 32]), list(val_b[i:i + 32])))
                                for i in range(0, len(val_a), 32)])
        return {f"val_{k}": v for k, v in pooled_scores(probs, val_m).items()}

    state = fit(run, cfg, net, optimizer, total=total, steps_per_epoch=cfg.steps_per_epoch, warmup=cfg.warmup_steps,
                plan_epoch=plan_epoch, make_batch=make_batch, compute_loss=compute_loss, evaluate=validate,
                resume=resume, clip_grad=1.0, keep_best="val_F1" if val_a is not None else None, log=log)
    best_file = run.out / "best.pt"
    if best_file.is_file() and val_a is not None:
        net.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True))
    net = net.to(memory_format=torch.contiguous_format).eval()
    info = {"config": asdict(cfg), "method": "single-temporal supervised: synthetic before/after pairs "
                                              "(terravl.train.change_synth) from single-date scenes",
            "best_epoch": state["best"], "history": state["history"], "steps": state["step"],
            "data": _describe(cfg, data, train_paths, val_paths), "parameters": detector.n_params(),
            "trainable_parameters": detector.n_params(trainable=True),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(run.device),
            "precision": run.precision, "elapsed_s": round(state["elapsed"], 1)}
    detector.save(run.out / "model", info)
    return info


def _weights(cfg: ChangeTrainConfig, sizes: list[int]) -> np.ndarray | None:
    """Per-image sampling weights so that each dataset gives its share of base scenes."""
    if cfg.dataset_weights is None:
        return None
    if len(cfg.dataset_weights) != len(sizes):
        raise InputError("dataset_weights", f"{len(cfg.dataset_weights)} weights for {len(sizes)} datasets")
    return np.concatenate([np.full(n, w / n) for w, n in zip(cfg.dataset_weights, sizes) if n])


def _describe(cfg: ChangeTrainConfig, data: list[str], train_paths, val_paths) -> dict:
    from terravl.train.data import file_checksum

    out = []
    for d, tp, vp in zip(data, train_paths, val_paths):
        entry = {"dataset": d, "train_split": cfg.train_split, "train_images": len(tp),
                 "validation_splits": list(cfg.val_splits), "validation_images": len(vp)}
        if Path(d).is_file():
            entry["dataset_sha256"] = file_checksum(Path(d))
        out.append(entry)
    return {"datasets": out, "validation_pairs": cfg.val_pairs, "validation_seed": 12345,
            "note": "validation pairs are synthesised from held-out splits only; no test benchmark is trained on"}

