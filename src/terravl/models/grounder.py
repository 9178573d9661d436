"""TerraVL's referring-segmentation head ("terravl-grounder"): where in an image is the thing a sentence names?

Why a head over the dual encoder's frozen CNN tower and not a network of its own: the tower already knows what the
scene classes look like (trained contrastively on real captions), and the text tower already places an expression
near the scenes it describes; only *where* is missing. The tower's feature maps before pooling keep it: the last
stage (1/16 of the input) and the one before (1/8). The head, a few hundred thousand weights trained on CPU:

* **dense similarity**: the last stage's map goes through the tower's own linear head (the one the pooled vector
  goes through: a linear map commutes with average pooling, so each location gets an embedding in the joint space)
  and is compared with the expression's embedding — the training-free baseline's signal, one input channel here;
* **FiLM conditioning**: the expression's embedding scales and shifts every channel of the projected features at
  each scale (Perez et al. 2018), so the same maps answer "the beach" and "the forest" differently;
* **a learned match**: a trained key of each location (1/16 and 1/8) against a trained query of the expression,
  one more channel at each scale;
* **coordinates**: two channels of (x, y) at every scale, so "in the top right" and "the larger of the two" can be
  learned from where things are;
* **a light decoder**: 1/16 → 1/8 → 1/4 of the input, with a small convolution of the image itself at 1/4 for
  sharp edges, to one logit per pixel at 1/4, upsampled to the input. The box is the mask's.

A folder holds ``grounder.json`` (architecture, the encoder it was trained on and its weights' checksum),
``model.safetensors`` (the head only: the tower and the text tower come from the encoder, by name) and
``training.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from terravl.errors import InputError

DEFAULT_GROUNDER = "terravl-grounder"
SETTINGS_FILE = "grounder.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "grounders"


@dataclass
class GrounderArch:
    """Everything needed to rebuild a head before loading its weights."""

    encoder: str = "terravl-default-v2"  # the last default with a CNN tower (v3's EfficientNet is not read here)
    resolution: int = 224           # side of the square input the tower sees (tiles are resized to it)
    hidden: int = 48
    rgb_channels: int = 8
    text_dim: int = 384
    mid_channels: int = 128         # channels of the tower's stage before last (1/8)
    top_channels: int = 256         # channels of the tower's last stage (1/16)
    match_dim: int = 64             # width of the learned location–expression match
    encoder_sha256: str = ""        # checksum of the encoder's weights the head was trained on
    threshold: float = 0.5          # pixel probability above which a pixel matches (chosen on validation data)

    @classmethod
    def from_dict(cls, data: dict) -> "GrounderArch":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def coords(batch: int, height: int, width: int, device, dtype) -> torch.Tensor:
    """(B, 2, H, W) pixel-centre coordinates in [-1, 1]: x then y."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width * 2 - 1
    grid = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)])
    return grid[None].expand(batch, 2, height, width)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.GroupNorm(8 if cout % 8 == 0 else 1, cout),
                         nn.ReLU(inplace=True))


class FiLM(nn.Module):
    """x · (1 + γ(t)) + β(t), per channel: the expression decides which features matter."""

    def __init__(self, text_dim: int, channels: int):
        super().__init__()
        self.linear = nn.Linear(text_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.linear(text).chunk(2, dim=1)
        return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class GrounderHead(nn.Module):
    """Text-conditioned decoder over the frozen tower's two last feature maps; logits at 1/4 of the input."""

    def __init__(self, arch: GrounderArch):
        super().__init__()
        h, t, k = arch.hidden, arch.text_dim, arch.match_dim
        self.match_dim = k
        # a learned match of each location with the expression (beside the frozen joint-space similarity)
        self.top_key, self.top_query = nn.Conv2d(arch.top_channels, k, 1), nn.Linear(t, k)
        self.mid_key, self.mid_query = nn.Conv2d(arch.mid_channels, k, 1), nn.Linear(t, k)
        self.top_in = nn.Conv2d(arch.top_channels + 2 + 2, h, 1)
        self.mid_in = nn.Conv2d(arch.mid_channels + 1 + 2, h, 1)
        self.text_in = nn.Sequential(nn.Linear(t, t), nn.GELU())
        self.film_top, self.film_mid, self.film_low = FiLM(t, h), FiLM(t, h), FiLM(t, h // 2)
        self.top = nn.Sequential(_block(h, h), _block(h, h))
        self.film_top2 = FiLM(t, h)
        self.mid = _block(2 * h, h)
        self.rgb = _block(3 + 2, arch.rgb_channels)
        self.low = _block(h + arch.rgb_channels, h // 2)
        self.out = nn.Conv2d(h // 2, 1, 1)

    def forward(self, mid: torch.Tensor, top: torch.Tensor, sim: torch.Tensor, rgb: torch.Tensor,
                text: torch.Tensor) -> torch.Tensor:
        """``mid`` (B, C3, H/8, W/8), ``top`` (B, C4, H/16, W/16), ``sim`` (B, 1, H/16, W/16) dense similarity to
        the text, ``rgb`` (B, 3, H/4, W/4) normalised image, ``text`` (B, D) → (B, 1, H/4, W/4) logits."""
        b = top.shape[0]
        t = self.text_in(text)
        scale = self.match_dim ** -0.5
        top_match = (self.top_key(top) * self.top_query(t)[:, :, None, None]).sum(1, keepdim=True) * scale
        mid_match = (self.mid_key(mid) * self.mid_query(t)[:, :, None, None]).sum(1, keepdim=True) * scale
        x = self.top_in(torch.cat([top, sim, top_match, coords(b, *top.shape[2:], top.device, top.dtype)], 1))
        x = self.top(torch.relu(self.film_top(x, t)))
        x = self.film_top2(x, t)
        m = torch.relu(self.film_mid(self.mid_in(torch.cat([mid, mid_match, coords(b, *mid.shape[2:], mid.device,
                                                                                     mid.dtype)], 1)), t))
        x = self.mid(torch.cat([F.interpolate(x, size=mid.shape[2:], mode="bilinear", align_corners=False), m], 1))
        r = self.rgb(torch.cat([rgb, coords(b, *rgb.shape[2:], rgb.device, rgb.dtype)], 1))
        x = self.low(torch.cat([F.interpolate(x, size=rgb.shape[2:], mode="bilinear", align_corners=False), r], 1))
        return self.out(torch.relu(self.film_low(x, t)))


class Tower:
    """The frozen CNN image tower of a TerraVL dual encoder, read as feature maps (not pooled).

    Only TerraVL's own encoders (family ``terravl``) have a tower whose maps keep location and a linear head that
    maps them into the joint space; an OpenCLIP or Hugging Face encoder is refused by name."""

    def __init__(self, encoder):
        from terravl.models.terravl_encoder import TerraVLModel

        model = getattr(encoder, "model", None)
        if not isinstance(model, TerraVLModel) or "widths" not in model.config["image"]:
            raise InputError("model", f"grounding needs one of TerraVL's own encoders (a CNN image tower whose "
                                      f"feature maps keep location); {getattr(encoder, 'name', encoder)!r} is not one")
        self.encoder = encoder
        self.net = model.image_tower.eval()
        image = model.config["image"]
        self.mean = torch.tensor(image["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(image["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.depths = list(image["depths"])
        self.widths = list(image["widths"])
        self.device = encoder.device

    def normalise(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 → (B, 3, H, W) float normalised like the tower's training."""
        x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255)
        return ((x - self.mean) / self.std).to(self.device)

    @torch.inference_mode()
    def maps(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mid, top): the outputs of the last two stages (1/8 and 1/16 of the input)."""
        x = self.net.stem(pixels.contiguous(memory_format=torch.channels_last))
        ends = set(np.cumsum(self.depths) - 1)
        outs = []
        for i, block in enumerate(self.net.blocks):
            x = block(x)
            if i in ends:
                outs.append(x)
        return outs[-2].contiguous(), outs[-1].contiguous()

    def dense(self, top: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) L2-normalised joint-space embedding of each location of the last map: the tower's linear
        head applied per location (it is linear, so its average over locations is the pooled image embedding)."""
        head = self.net.head
        if not isinstance(head, nn.Linear):
            raise InputError("model", "the image tower's head is not linear: no per-location embedding")
        emb = F.conv2d(top, head.weight[:, :, None, None].to(top.dtype), head.bias.to(top.dtype))
        return F.normalize(emb, dim=1)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def encoder_checksum(encoder) -> str:
    """sha256 of the encoder's weights file when it is a shipped/registered TerraVL folder, else ''."""
    source = getattr(encoder, "source", None)
    try:
        from terravl.models.registry import get_config, resolve_weights

        folder = Path(source) if source and Path(source).exists() else resolve_weights(get_config(str(source)))
        return file_sha256(Path(folder) / "model.safetensors")
    except Exception:  # noqa: BLE001 - a checksum is informative only: no file, no checksum
        return ""


class Grounder:
    """A trained head with the encoder whose tower and text tower it reads: ``predict(images, text)`` → masks."""

    def __init__(self, arch: GrounderArch, head: GrounderHead, encoder, folder: Path | None = None):
        self.arch, self.head, self.encoder, self.folder = arch, head.eval(), encoder, folder
        self.tower = Tower(encoder)
        self.head.to(self.tower.device)
        self.warnings: list[str] = []

    @classmethod
    def load(cls, folder: str | Path, encoder=None) -> "Grounder":
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            arch = GrounderArch.from_dict(json.loads((folder / SETTINGS_FILE).read_text()))
            state = load_file(str(folder / WEIGHTS_FILE))
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise InputError(str(folder), f"not a readable grounder folder ({exc})") from None
        if encoder is None:
            import terravl.models as m

            encoder = m.load(arch.encoder)
        head = GrounderHead(arch)
        try:
            head.load_state_dict(state)
        except RuntimeError as exc:
            raise InputError(str(folder / WEIGHTS_FILE), f"weights do not fit the architecture ({exc})") from None
        grounder = cls(arch, head, encoder, folder)
        checksum = encoder_checksum(encoder)
        if arch.encoder_sha256 and checksum and checksum != arch.encoder_sha256:
            grounder.warnings.append(f"the grounder was trained on other weights of {arch.encoder!r} than those "
                                     "loaded; its masks may be worse than measured")
        return grounder

    def save(self, folder: str | Path, training: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(folder / WEIGHTS_FILE))
        (folder / SETTINGS_FILE).write_text(json.dumps(asdict(self.arch), indent=2) + "\n")
        if training is not None:
            (folder / "training.json").write_text(json.dumps(training, indent=2, default=str) + "\n")
        return folder

    @torch.inference_mode()
    def logits(self, images: np.ndarray, text: np.ndarray) -> torch.Tensor:
        """(B, R, R, 3) uint8 at the head's resolution and (D,) or (B, D) text embeddings → (B, 1, R/4, R/4)."""
        pixels = self.tower.normalise(images)
        mid, top = self.tower.maps(pixels)
        t = torch.as_tensor(np.atleast_2d(text), dtype=torch.float32, device=pixels.device)
        if t.shape[0] == 1 and pixels.shape[0] > 1:
            t = t.expand(pixels.shape[0], -1)
        sim = (self.tower.dense(top) * t[:, :, None, None]).sum(1, keepdim=True)
        low = F.interpolate(pixels, size=(mid.shape[2] * 2, mid.shape[3] * 2), mode="area")
        return self.head(mid, top, sim, low, t)

    def predict(self, images: np.ndarray, text: np.ndarray) -> np.ndarray:
        """(B, R, R) float32 probabilities at the input's resolution."""
        logits = self.logits(images, text)
        size = images.shape[1:3]
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(up)[:, 0].float().cpu().numpy()


@dataclass(frozen=True)
class GrounderConfig:
    """One named grounder (``models/configs/grounders/<name>.json``), resolved like the other registries."""

    name: str
    arch: str
    file: str
    shipped: bool = False
    hf_repo: str | None = None
    hf_filename: str | None = None
    source: str = ""
    description: str = ""
    notes: str = ""
    kind: str = field(default="grounder", repr=False)
    family: str = field(default="film-head", repr=False)


def grounders() -> dict[str, GrounderConfig]:
    from terravl.models.registry import read_configs

    return read_configs(GrounderConfig, CONFIG_DIR)


def load_grounder(name_or_path: str | Path = DEFAULT_GROUNDER, encoder=None) -> Grounder:
    """A grounder by registered name (shipped folder, then ``$TERRAVL_HOME/models/<file>``) or by folder path.
    ``encoder`` overrides the encoder named in its settings (it must be the one it was trained on to be useful)."""
    from terravl.models.registry import model_folder

    return Grounder.load(model_folder(name_or_path, grounders(), SETTINGS_FILE, "grounder",
                                      "terravl train grounder"), encoder)
