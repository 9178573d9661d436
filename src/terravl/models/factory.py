"""``terravl.models.load``: one entry point from a registry name or a path to a ready :class:`Encoder`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from terravl.errors import InputError
from terravl.models.encoder import Encoder
from terravl.models.registry import REGISTRY, get_config, resolve_weights

DEFAULT_MODEL = "terravl-default"
DEFAULT_CAPTIONER = "terravl-captioner"


def load(name_or_path: str | Path = DEFAULT_MODEL, device: str | torch.device | None = None,
         precision: str | None = None, arch: str | None = None, quick_gelu: bool | None = None,
         threads: int | None = None) -> Encoder:
    """Load a dual encoder by registry name (weights resolved on disk) or from a path.

    A path may be a checkpoint file (``.pt``/``.bin``/``.safetensors``; architecture from ``arch``, from a
    registered config with the same file name, or inferred from the state dict) or a Hugging Face CLIP/SigLIP
    folder. ``precision`` defaults to fp32 on CPU and fp16 on a GPU; ``threads`` sets torch's CPU threads.
    """
    if threads:
        torch.set_num_threads(int(threads))
    encoder = _load(name_or_path, device, precision, arch, quick_gelu)
    name = str(name_or_path)
    encoder.source = name if name in REGISTRY else str(Path(name_or_path).expanduser().resolve())
    return encoder


def _load(name_or_path, device, precision, arch, quick_gelu) -> Encoder:
    name = str(name_or_path)
    if name in REGISTRY:
        cfg = get_config(name)
        if cfg.family == "captioner":
            raise InputError(name, "is a captioner, not a dual encoder: load it with terravl.models.load_captioner")
        weights = resolve_weights(cfg)
        if cfg.family == "terravl":
            from terravl.models.terravl_encoder import TerraVLEncoder

            return TerraVLEncoder.from_folder(weights, name=cfg.name, device=device, precision=precision)
        from terravl.models.openclip_encoder import OpenCLIPEncoder

        return OpenCLIPEncoder.from_checkpoint(weights, arch or cfg.arch,
                                               cfg.quick_gelu if quick_gelu is None else quick_gelu,
                                               cfg.name, device, precision)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        get_config(name)  # raises: unknown name, with the list of registered names
    if path.is_dir():
        return _load_folder(path, device, precision)
    from terravl.models.openclip_encoder import OpenCLIPEncoder

    match = next((c for c in REGISTRY.values() if c.family == "open_clip" and path.as_posix().endswith(c.file)), None)
    if match and arch is None:
        return OpenCLIPEncoder.from_checkpoint(path, match.arch, match.quick_gelu if quick_gelu is None else quick_gelu,
                                               match.name, device, precision)
    return OpenCLIPEncoder.from_checkpoint(path, arch, bool(quick_gelu), None, device, precision)


def _load_folder(path: Path, device, precision) -> Encoder:
    if (path / "terravl_config.json").is_file():
        settings = json.loads((path / "terravl_config.json").read_text())
        if settings.get("family") == "open_clip":  # a fine-tuned OpenCLIP model written by `terravl train clip`
            from terravl.models.openclip_encoder import OpenCLIPEncoder

            return OpenCLIPEncoder.from_checkpoint(path / "model.safetensors", settings.get("arch"),
                                                   bool(settings.get("quick_gelu")), path.name, device, precision)
        from terravl.models.terravl_encoder import TerraVLEncoder

        return TerraVLEncoder.from_folder(path, device=device, precision=precision)
    config_file = path / "config.json"
    if config_file.is_file():
        model_type = json.loads(config_file.read_text()).get("model_type", "")
        if model_type in ("clip", "siglip", "siglip2", "chinese_clip", "altclip"):
            from terravl.models.hf_encoder import HFCLIPEncoder

            return HFCLIPEncoder(path, device=device, precision=precision)
    from terravl.models.checkpoints import CheckpointError

    raise CheckpointError(path, "folder is neither a TerraVL model (terravl_config.json) nor a Hugging Face "
                                "CLIP/SigLIP model (config.json with model_type clip/siglip)")


def load_captioner(name_or_path: str | Path = DEFAULT_CAPTIONER, device: str | torch.device | None = None,
                   threads: int | None = None):
    """A :class:`~terravl.models.bridge.Captioner` by registry name (``terravl-captioner``, shipped) or from a
    folder written by ``terravl train caption``. Its image encoder loads on first use."""
    from terravl.models.bridge import SETTINGS_FILE, Captioner

    if threads:
        torch.set_num_threads(int(threads))
    name = str(name_or_path)
    if name in REGISTRY:
        cfg = get_config(name)
        if cfg.family != "captioner":
            raise InputError(name, f"is a dual encoder, not a captioner; captioners: "
                                   f"{', '.join(n for n, c in REGISTRY.items() if c.family == 'captioner')}")
        folder = resolve_weights(cfg)
    else:
        folder = Path(name_or_path).expanduser()
        if not (folder / SETTINGS_FILE).is_file():
            if not folder.exists():
                get_config(name)  # raises: unknown name, with the registered names
            raise InputError(folder, f"not a captioner folder (no {SETTINGS_FILE}); give a registered captioner "
                                     f"name or a folder written by `terravl train caption`")
    captioner = Captioner.load(folder, device=device)
    captioner.name = name if name in REGISTRY else folder.name
    captioner.source = name if name in REGISTRY else str(folder.resolve())
    return captioner
