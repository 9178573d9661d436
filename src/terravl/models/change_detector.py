"""TerraVL's trained change detector: a small siamese CNN that maps two co-registered RGB images to a per-pixel
change probability.

Why its own network and not the image tower's features: the tower pools away location (a 150 px scene becomes one
vector), while a change mask needs full-resolution, pixel-aligned evidence; a few hundred thousand weights trained on
synthetic pairs (:mod:`terravl.train.change_synth`) fit on a CPU and run at tile speed.

Architecture: one encoder shared by both dates (four stride-2 stages), fused at every scale by
``conv1x1([|a - b|, a, b])`` (the difference says *where*, the concatenation lets the network discount changes of
illumination it has seen both dates of), and a light U-Net decoder back to full resolution. Each date is
standardised per image and channel before the network, so global brightness or colour casts between dates cost
nothing to ignore.

A folder holds ``change_detector.json`` (architecture + normalisation), ``model.safetensors`` and ``training.json``.

``backbone: <encoder name>`` (e.g. ``terravl-default``) swaps the learned encoder for the FROZEN stem and first
``tower_stages`` stages of that dual encoder's image tower (:class:`terravl.models.image_towers.SmallResNet`):
features trained contrastively on real scenes (buildings vs bare land/vegetation) instead of learned from synthetic
pairs only. Only fusion and decoder train; the tower's weights are not written into the detector's folder but
loaded from the shipped encoder by name, and the input is normalised with the tower's own mean/std.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from terravl.errors import InputError
from terravl.models.registry import WeightsNotFoundError

DEFAULT_CHANGE_DETECTOR = "terravl-change"
SETTINGS_FILE = "change_detector.json"
WEIGHTS_FILE = "model.safetensors"
MIN_SIZE = 16


@dataclass
class ChangeArch:
    """The architecture of a detector (everything needed to rebuild it before loading weights)."""

    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 96])
    decoder: int = 32
    normalise: str = "per_image"        # per_image: each date standardised per channel; "dataset": fixed mean/std
    mean: list[float] = field(default_factory=lambda: [0.40, 0.41, 0.37])
    std: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.18])
    tile_size: int = 256
    context: int = 16
    backbone: str = "scratch"           # "scratch", or a registered TerraVL dual encoder whose image tower is frozen
    tower_stages: int = 3               # with a tower backbone: stem + this many residual stages (scales /2 … )


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SiameseUNet(nn.Module):
    """Shared encoder → per-scale fusion (|a − b|, a, b) → U-Net decoder → one logit per pixel."""

    def __init__(self, widths: list[int], decoder: int):
        super().__init__()
        stages, cin = [], 3
        for w in widths:
            stages.append(nn.Sequential(_conv(cin, w, 2), _conv(w, w)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.fuse = nn.ModuleList(nn.Sequential(nn.Conv2d(3 * w, w, 1, bias=False), nn.BatchNorm2d(w),
                                                nn.ReLU(inplace=True)) for w in widths)
        dec = [max(decoder, w // 2) for w in widths]
        self.lateral = nn.ModuleList(nn.Conv2d(w, d, 1) for w, d in zip(widths, dec))
        self.up = nn.ModuleList(_conv(dec[i + 1], dec[i]) for i in range(len(widths) - 1))
        self.refine = nn.ModuleList(_conv(d, d) for d in dec[:-1])
        self.head = nn.Sequential(_conv(dec[0] + 6, 16), nn.Conv2d(16, 1, 1))

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        feats = self.encode(torch.cat([a, b], 0))  # one pass for both dates (shared weights)
        fused = [f(torch.cat([(x[:n] - x[n:]).abs(), x[:n], x[n:]], 1)) for f, x in zip(self.fuse, feats)]
        y = self.lateral[-1](fused[-1])
        for i in range(len(fused) - 2, -1, -1):
            y = F.interpolate(y, size=fused[i].shape[-2:], mode="bilinear", align_corners=False)
            y = self.refine[i](self.up[i](y) + self.lateral[i](fused[i]))
        y = F.interpolate(y, size=a.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([y, (a - b).abs(), a - b], 1))


class FrozenTower(nn.ModuleList):
    """The tower's stages as the detector's encoder stages; always in eval mode (batch-norm statistics are the
    tower's, never re-estimated on synthetic pairs) and without gradients."""

    def train(self, mode: bool = True) -> "FrozenTower":
        return super().train(False)


def tower_settings(name: str) -> tuple[Path, dict]:
    """(folder, ``image`` settings) of the registered TerraVL dual encoder ``name`` (its SmallResNet tower)."""
    from terravl.models.registry import get_config, resolve_weights

    folder = resolve_weights(get_config(name))
    try:
        settings = json.loads((Path(folder) / "terravl_config.json").read_text())
        image = settings["image"]
        if settings.get("arch") != "terravl-cnn":
            raise ValueError(f"arch {settings.get('arch')!r} is not terravl-cnn")
    except (OSError, ValueError, KeyError) as exc:
        raise InputError("backbone", f"{name!r} has no TerraVL CNN image tower to use: {exc}") from None
    return Path(folder), image


def tower_net(arch: ChangeArch) -> SiameseUNet:
    """A SiameseUNet whose encoder is the frozen tower of ``arch.backbone`` (weights loaded from the encoder)."""
    from safetensors.torch import load_file

    from terravl.models.image_towers import SmallResNet

    folder, image = tower_settings(arch.backbone)
    widths, depths = list(image["widths"]), list(image["depths"])
    k = arch.tower_stages
    if not 1 <= k <= len(widths):
        raise InputError("tower_stages", f"must be 1..{len(widths)} for {arch.backbone!r}, got {k}")
    tower = SmallResNet(tuple(widths), tuple(depths))
    prefix = "image_tower."
    state = {n[len(prefix):]: v for n, v in load_file(str(folder / "model.safetensors")).items()
             if n.startswith(prefix) and not n[len(prefix):].startswith("head.")}
    tower.load_state_dict(state, strict=False)
    blocks, i, stages = list(tower.blocks), 0, []
    for s, d in enumerate(depths[:k]):
        mods = ([tower.stem] if s == 0 else []) + blocks[i:i + d]
        stages.append(nn.Sequential(*mods))
        i += d
    net = SiameseUNet(widths[:k], arch.decoder)
    net.stages = FrozenTower(stages)
    for p in net.stages.parameters():
        p.requires_grad_(False)
    net.stages.eval()
    return net


def make_net(arch: ChangeArch) -> SiameseUNet:
    """The network of ``arch``: learned from scratch, or over a frozen tower."""
    return SiameseUNet(list(arch.widths), arch.decoder) if arch.backbone == "scratch" else tower_net(arch)


def resolve_arch(**arch) -> ChangeArch:
    """A ChangeArch; with a tower backbone, its widths and mean/std are the tower's (dataset normalisation)."""
    try:
        a = ChangeArch(**arch)
    except TypeError as exc:
        raise InputError("arch", str(exc)) from None
    if a.backbone != "scratch":
        _, image = tower_settings(a.backbone)
        a.widths = list(image["widths"])[:max(1, a.tower_stages)]
        a.normalise, a.mean, a.std = "dataset", list(image["mean"]), list(image["std"])
    return a


class ChangeDetector:
    """Two dates in, per-pixel change probability out. Stateless between calls (thread-safe for inference)."""

    def __init__(self, arch: ChangeArch, net: SiameseUNet, device: str | torch.device | None = None,
                 training: dict | None = None):
        self.arch = arch
        self.device = torch.device(device or "cpu")
        self.net = net.to(self.device).eval()
        self.training = training or {}
        self.tile_size = arch.tile_size
        self.context = arch.context

    # -- construction and files ---------------------------------------------------------------------------------

    @classmethod
    def build(cls, **arch) -> "ChangeDetector":
        """A randomly initialised detector (tests, the start of training)."""
        a = resolve_arch(**arch)
        return cls(a, make_net(a))

    def n_params(self, trainable: bool = False) -> int:
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad or not trainable)

    def own_state(self) -> dict:
        """The weights that belong in the folder: all of them, less a frozen tower (loaded from its encoder)."""
        state = self.net.state_dict()
        if self.arch.backbone != "scratch":
            state = {k: v for k, v in state.items() if not k.startswith("stages.")}
        return state

    def save(self, folder: str | Path, training: dict | None = None) -> Path:
        """Write the settings JSON, the weights (safetensors) and ``training.json`` (the recipe and scores)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SETTINGS_FILE).write_text(json.dumps({"kind": "change-detector", **asdict(self.arch)}, indent=2)
                                            + "\n")
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.own_state().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        info = training if training is not None else self.training
        (folder / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device=None) -> "ChangeDetector":
        """A detector from a folder written by :meth:`save` (``terravl train change-detector``)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        settings, weights = folder / SETTINGS_FILE, folder / WEIGHTS_FILE
        if not settings.is_file() or not weights.is_file():
            raise WeightsNotFoundError(folder, f"not a change-detector folder ({SETTINGS_FILE} and {WEIGHTS_FILE} "
                                               "expected)")
        try:
            data = json.loads(settings.read_text())
            data.pop("kind", None)
            arch = ChangeArch(**data)
            net = make_net(arch)
            state = load_file(str(weights))
            if arch.backbone != "scratch":
                state = {**{k: v for k, v in net.state_dict().items() if k.startswith("stages.")}, **state}
            net.load_state_dict(state)
        except (ValueError, TypeError, RuntimeError, OSError, SafetensorError) as exc:
            raise InputError(folder, f"unreadable change-detector folder: {exc}") from None
        training = {}
        if (folder / "training.json").is_file():
            try:
                training = json.loads((folder / "training.json").read_text())
            except ValueError:
                training = {}
        if device in (None, "auto"):
            device = "cpu"
        return cls(arch, net, device, training)

    # -- inference ----------------------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 array → normalised (N, 3, H, W) float tensor on the CPU."""
        return self.prepare_tensor(torch.from_numpy(np.ascontiguousarray(image)))

    def prepare_tensor(self, image: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 tensor (any device) → normalised (N, 3, H, W) float: the one transform of training
        and inference."""
        return normalise(image.float().div(255.0).permute(0, 3, 1, 2), self.arch)

    def predict(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """(H, W) float32 change probability in [0, 1] for two (H, W, 3) uint8 images on the same grid."""
        return self.predict_batch([before], [after])[0]

    def predict_batch(self, befores: list[np.ndarray], afters: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`predict` of each pair; pairs of one size run as one batch."""
        if len(befores) != len(afters):
            raise InputError("after", f"{len(befores)} before images but {len(afters)} after images")
        out: list[np.ndarray | None] = [None] * len(befores)
        groups: dict[tuple, list[int]] = {}
        for i, (a, b) in enumerate(zip(befores, afters)):
            a, b = _check(a, "before"), _check(b, "after")
            if a.shape != b.shape:
                raise InputError("after", f"shape {b.shape} differs from the before image's {a.shape}")
            groups.setdefault(a.shape, []).append(i)
        for shape, idx in groups.items():
            a = np.stack([_check(befores[i], "before") for i in idx])
            b = np.stack([_check(afters[i], "after") for i in idx])
            probs = self._run(a, b)
            for k, i in enumerate(idx):
                out[i] = probs[k]
        return out  # type: ignore[return-value]

    def _run(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h, w = a.shape[1:3]
        mult = 2 ** len(self.arch.widths)
        ph, pw = (-h) % mult, (-w) % mult
        ta, tb = self.prepare(a), self.prepare(b)
        if ph or pw:  # reflect-pad to a multiple of the encoder's stride (replicate where reflect cannot)
            mode = "reflect" if ph < h and pw < w else "replicate"
            ta, tb = F.pad(ta, (0, pw, 0, ph), mode=mode), F.pad(tb, (0, pw, 0, ph), mode=mode)
        with torch.inference_mode():
            logits = self.net(ta.to(self.device), tb.to(self.device))
        probs = torch.sigmoid(logits[:, 0, :h, :w].float()).cpu().numpy()
        return np.clip(probs, 0.0, 1.0).astype(np.float32)


def normalise(x: torch.Tensor, arch: ChangeArch) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] → network input. ``per_image``: each image and channel to zero mean, unit variance
    (with a floor so flat images stay finite)."""
    if arch.normalise == "per_image":
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True).clamp_min(0.02)
        return (x - mean) / std
    mean = torch.tensor(arch.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(arch.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _check(image, name: str) -> np.ndarray:
    """An (H, W, 3) uint8 array, or an InputError naming ``name``."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(name, f"expected an (H, W, 3) RGB array, got shape {image.shape}")
    if image.shape[0] < MIN_SIZE or image.shape[1] < MIN_SIZE:
        raise InputError(name, f"image of {image.shape[1]}x{image.shape[0]} px is smaller than {MIN_SIZE}x{MIN_SIZE}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and np.nanmax(image) <= 1.0:
            image = np.nan_to_num(image) * 255.0
        image = np.clip(np.nan_to_num(image), 0, 255).astype(np.uint8)
    return image


def load_change_detector(name_or_path: str | Path = DEFAULT_CHANGE_DETECTOR, device=None) -> ChangeDetector:
    """A detector by registered name (the package's shipped folder, then ``$TERRAVL_HOME/models/<file>``), by the
    name of a folder in ``$TERRAVL_HOME/models``, or by folder path."""
    from terravl import config

    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    looks_like_path = os.sep in text or text.startswith(".") or path.exists()
    if looks_like_path:
        if not path.is_dir():
            raise WeightsNotFoundError(text, "no such change-detector folder")
        return ChangeDetector.load(path, device)
    from terravl.models.registry import CHANGE_DETECTORS, resolve_weights

    if text in CHANGE_DETECTORS:  # a registered name: shipped folder, then $TERRAVL_HOME/models/<file>
        return ChangeDetector.load(resolve_weights(CHANGE_DETECTORS[text]), device)
    folder = config.models_dir() / text
    if (folder / SETTINGS_FILE).is_file():
        return ChangeDetector.load(folder, device)
    raise WeightsNotFoundError(text, f"no change detector named {text!r}: registered: "
                                     f"{', '.join(sorted(CHANGE_DETECTORS)) or 'none'}, or a folder with "
                                     f"{SETTINGS_FILE} in {config.models_dir()}; train one with `terravl train "
                                     "change-detector`")
