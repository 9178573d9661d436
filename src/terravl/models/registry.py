"""Named model configs and where their weights are found on disk.

A config says which architecture to build and which file its authors publish; it holds no weights. Weights are
resolved in this order, never over the network: an explicit path → ``$TERRAVL_HOME/models/<file>`` → the Hugging
Face cache (only files already there). ``terravl models pull NAME`` is the one place that downloads, and only
when a user runs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from terravl import config
from terravl.errors import InputError


class WeightsNotFoundError(InputError):
    """A model's checkpoint is not on disk; the message says which file to put where."""


@dataclass(frozen=True)
class ModelConfig:
    """One named model. ``family`` picks the builder: ``open_clip`` (OpenCLIP architectures), ``hf`` (a
    transformers CLIP/SigLIP folder) or ``terravl`` (TerraVL's own small dual encoder, shipped in the package)."""

    name: str
    family: str
    arch: str
    file: str
    quick_gelu: bool = False
    hf_repo: str | None = None
    hf_filename: str | None = None
    source: str = ""
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


_REMOTECLIP = "https://huggingface.co/chendelong/RemoteCLIP"
_GEORSCLIP = "https://huggingface.co/Zilun/GeoRSCLIP"
_SKYCLIP = "https://github.com/wangzhecheng/SkyScript#pretrained-models"

REGISTRY: dict[str, ModelConfig] = {}


def register(cfg: ModelConfig) -> ModelConfig:
    """Add (or replace) a named config; returns it."""
    REGISTRY[cfg.name] = cfg
    return cfg


for _cfg in [
    # RemoteCLIP (Liu et al., TGRS 2024): plain open_clip state dicts; its README builds the plain (GELU) arch.
    ModelConfig("remoteclip-rn50", "open_clip", "RN50", "RemoteCLIP-RN50.pt", False, "chendelong/RemoteCLIP",
                "RemoteCLIP-RN50.pt", _REMOTECLIP, "RemoteCLIP ResNet-50"),
    ModelConfig("remoteclip-vit-b-32", "open_clip", "ViT-B-32", "RemoteCLIP-ViT-B-32.pt", False,
                "chendelong/RemoteCLIP", "RemoteCLIP-ViT-B-32.pt", _REMOTECLIP, "RemoteCLIP ViT-B/32"),
    ModelConfig("remoteclip-vit-l-14", "open_clip", "ViT-L-14", "RemoteCLIP-ViT-L-14.pt", False,
                "chendelong/RemoteCLIP", "RemoteCLIP-ViT-L-14.pt", _REMOTECLIP, "RemoteCLIP ViT-L/14"),
    # GeoRSCLIP (Zhang et al., RS5M, TGRS 2024): state dicts over OpenAI (QuickGELU) and LAION-2B (GELU) bases.
    ModelConfig("georsclip-vit-b-32", "open_clip", "ViT-B-32", "RS5M_ViT-B-32.pt", True, "Zilun/GeoRSCLIP",
                "ckpt/RS5M_ViT-B-32.pt", _GEORSCLIP, "GeoRSCLIP ViT-B/32 (RS5M), OpenAI base"),
    ModelConfig("georsclip-vit-l-14", "open_clip", "ViT-L-14", "RS5M_ViT-L-14.pt", True, "Zilun/GeoRSCLIP",
                "ckpt/RS5M_ViT-L-14.pt", _GEORSCLIP, "GeoRSCLIP ViT-L/14 (RS5M), OpenAI base"),
    ModelConfig("georsclip-vit-h-14", "open_clip", "ViT-H-14", "RS5M_ViT-H-14.pt", False, "Zilun/GeoRSCLIP",
                "ckpt/RS5M_ViT-H-14.pt", _GEORSCLIP, "GeoRSCLIP ViT-H/14 (RS5M), LAION-2B base"),
    # SkyCLIP (Wang et al., SkyScript, AAAI 2024): open_clip training checkpoints ({'state_dict'}, 'module.').
    ModelConfig("skyclip-vit-b-32", "open_clip", "ViT-B-32", "SkyCLIP_ViT_B32_top50pct/epoch_20.pt", True,
                None, None, _SKYCLIP, "SkyCLIP ViT-B/32, top 50 % of SkyScript, OpenAI base"),
    ModelConfig("skyclip-vit-l-14", "open_clip", "ViT-L-14", "SkyCLIP_ViT_L14_top50pct/epoch_20.pt", True,
                None, None, _SKYCLIP, "SkyCLIP ViT-L/14, top 50 % of SkyScript, OpenAI base"),
    # OpenAI CLIP through open_clip's packaging of the original weights.
    ModelConfig("openai-vit-b-32", "open_clip", "ViT-B-32", "openai-ViT-B-32.bin", True,
                "timm/vit_base_patch32_clip_224.openai", "open_clip_pytorch_model.bin",
                "https://huggingface.co/timm/vit_base_patch32_clip_224.openai", "OpenAI CLIP ViT-B/32"),
    # TerraVL's own small dual encoder, trained here and shipped inside the package.
    ModelConfig("terravl-default", "terravl", "terravl-default", "terravl-default", False, None, None,
                "shipped in the terravl package", "TerraVL's small RS dual encoder (frozen MiniLM text tower)"),
    # TerraVL's own captioner / VQA model: a bridge from terravl-default to a small GPT-2 trained from scratch.
    ModelConfig("terravl-captioner", "captioner", "bridge+gpt2-small", "terravl-captioner", False, None, None,
                "shipped in the terravl package", "TerraVL's captioning and VQA model (terravl-default features "
                                                  "→ MLP prefix → small GPT-2)"),
]:
    register(_cfg)


def get_config(name: str) -> ModelConfig:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(name, f"unknown model; registered: {', '.join(sorted(REGISTRY))} "
                               f"(or give a checkpoint file or a Hugging Face model folder)") from None


def find_weights(cfg: ModelConfig) -> Path | None:
    """The checkpoint of ``cfg`` on disk, or None. Looks only at local files."""
    if cfg.family in ("terravl", "captioner"):
        shipped = config.packaged_models_dir() / cfg.file
        return shipped if shipped.exists() else None
    local = config.models_dir() / cfg.file
    if local.is_file():
        return local
    if cfg.hf_repo and cfg.hf_filename:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        cached = try_to_load_from_cache(cfg.hf_repo, cfg.hf_filename)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    return None


def resolve_weights(cfg: ModelConfig, path: str | Path | None = None) -> Path:
    """Explicit ``path`` → ``$TERRAVL_HOME/models`` → Hugging Face cache; else a :class:`WeightsNotFoundError`
    that names the file and where to put it."""
    if path is not None:
        if not Path(path).exists():
            raise WeightsNotFoundError(path, "no such checkpoint file")
        return Path(path)
    found = find_weights(cfg)
    if found is not None:
        return found
    where = config.models_dir() / cfg.file
    hint = f"run `terravl models pull {cfg.name}` on a machine with internet, or " if cfg.hf_repo else ""
    raise WeightsNotFoundError(cfg.name, f"weights not found: put {cfg.file!r} at {where} ({hint}download it from "
                                         f"{cfg.source or 'its authors'}); TerraVL never downloads implicitly")


def list_models() -> list[dict]:
    """Every registered config with ``present`` (weights found on disk) and the path found."""
    out = []
    for cfg in REGISTRY.values():
        found = find_weights(cfg)
        out.append({"name": cfg.name, "arch": cfg.arch, "file": cfg.file, "present": found is not None,
                    "path": str(found) if found else None, "family": cfg.family, "description": cfg.description})
    return out
