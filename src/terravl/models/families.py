"""How each model family turns a config and its weights into an :class:`~terravl.models.encoder.Encoder`.

The factory never compares family names: it looks the family up in :data:`BUILDERS`, filled by
:func:`register_family`. A new family is one decorated function here (or anywhere that is imported before use).
Encoder classes are imported inside the builders so that loading one family never imports another's libraries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from terravl.errors import InputError
from terravl.models.encoder import Encoder
from terravl.models.registry import ModelConfig

Builder = Callable[[ModelConfig, Path, object, "str | None"], Encoder]
"""``builder(cfg, weights, device, precision)``: ``weights`` is the file or folder the config resolved to."""

BUILDERS: dict[str, Builder] = {}

HF_MODEL_TYPES = ("clip", "siglip", "siglip2", "chinese_clip", "altclip")
"""``model_type`` values of Hugging Face dual encoders (``get_image_features``/``get_text_features``)."""


def register_family(family: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``builder`` the way to build models of ``family``."""

    def add(builder: Builder) -> Builder:
        BUILDERS[family] = builder
        return builder

    return add


def build_encoder(cfg: ModelConfig, weights: Path, device=None, precision: str | None = None) -> Encoder:
    """Dispatch to the builder of ``cfg.family``; an unknown family is an :class:`InputError` that lists those
    known."""
    try:
        builder = BUILDERS[cfg.family]
    except KeyError:
        raise InputError(cfg.name, f"unknown model family {cfg.family!r}; known families: "
                                   f"{', '.join(sorted(BUILDERS))}") from None
    return builder(cfg, weights, device, precision)


@register_family("open_clip")
def _open_clip(cfg: ModelConfig, weights: Path, device, precision) -> Encoder:
    """A checkpoint file, or a folder written by ``terravl train clip`` (``model.safetensors`` inside)."""
    from terravl.models.openclip_encoder import OpenCLIPEncoder

    file = weights / "model.safetensors" if weights.is_dir() else weights
    return OpenCLIPEncoder.from_checkpoint(file, cfg.arch or None, cfg.quick_gelu, cfg.name or None, device,
                                           precision)


@register_family("terravl")
def _terravl(cfg: ModelConfig, weights: Path, device, precision) -> Encoder:
    from terravl.models.terravl_encoder import TerraVLEncoder

    return TerraVLEncoder.from_folder(weights, name=cfg.name or None, device=device, precision=precision)


@register_family("hf")
def _hugging_face(cfg: ModelConfig, weights: Path, device, precision) -> Encoder:
    from terravl.models.hf_encoder import HFCLIPEncoder

    return HFCLIPEncoder(weights, name=cfg.name or None, device=device, precision=precision)


def folder_config(path: Path) -> ModelConfig:
    """The config a model folder describes: ``terravl_config.json`` (its ``family``, default ``terravl``) or a
    Hugging Face ``config.json`` of a CLIP/SigLIP model (family ``hf``)."""
    from terravl.models.checkpoints import CheckpointError

    settings_file = path / "terravl_config.json"
    if settings_file.is_file():
        try:
            settings = json.loads(settings_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(settings_file, f"unreadable ({exc})") from None
        return ModelConfig(path.name, str(settings.get("family", "terravl")), str(settings.get("arch") or ""),
                           path.name, bool(settings.get("quick_gelu")))
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            model_type = json.loads(config_file.read_text()).get("model_type", "")
        except (OSError, json.JSONDecodeError, AttributeError):
            model_type = ""
        if model_type in HF_MODEL_TYPES:
            return ModelConfig(path.name, "hf", model_type, path.name)
    raise CheckpointError(path, "folder is neither a TerraVL model (terravl_config.json) nor a Hugging Face "
                                "CLIP/SigLIP model (config.json with model_type clip/siglip)")
