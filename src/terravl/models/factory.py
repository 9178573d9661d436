"""``terravl.models.load`` / ``load_captioner``: one entry point each, from a reference to a ready model.

A reference is a registry name, a path, or a prefixed source (``terravl:NAME``, ``file:PATH``,
``hf-hub:ORG/REPO[/FILE]``; see :mod:`terravl.models.sources`). The factory resolves it to a config and a weights
location on disk, then hands both to the family's builder (:mod:`terravl.models.families`). Nothing downloads.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from terravl.errors import InputError
from terravl.models.encoder import Encoder
from terravl.models.families import build_encoder, folder_config
from terravl.models.registry import (CAPTIONER_SETTINGS_FILE, ModelConfig, WeightsNotFoundError, config_for_file,
                                     config_for_hub, get_captioner_config, get_config, names, resolve_weights)
from terravl.models.sources import (FILE_PREFIX, HUB_PREFIX, REGISTRY_PREFIX, WeightSource, cached_hub_file,
                                    cached_hub_folder, hub_cache_dir, parse_source)

DEFAULT_MODEL = "terravl-default"
DEFAULT_CAPTIONER = "terravl-captioner"


def load(name_or_path: str | Path = DEFAULT_MODEL, device: str | torch.device | None = None,
         precision: str | None = None, arch: str | None = None, quick_gelu: bool | None = None,
         threads: int | None = None, weights: str | Path | None = None) -> Encoder:
    """Load a dual encoder from a registry name, a path or a prefixed source.

    A file is a checkpoint (``.pt``/``.bin``/``.safetensors``): its architecture comes from ``arch``, from the
    registered model that publishes a file of that name, or from the state dict's shapes. A folder is a TerraVL
    model or a Hugging Face CLIP/SigLIP model. ``weights`` gives a registered model's checkpoint at another path
    (``load("georsclip-vit-b-32", weights="renamed.pt")``). ``precision`` defaults to fp32 on CPU and fp16 on a
    GPU; ``threads`` sets torch's CPU threads. ``encoder.source`` is a reference that loads the same model again.
    """
    if threads:
        torch.set_num_threads(int(threads))
    source = parse_source(name_or_path, names())
    cfg, location, canonical = _resolve_encoder(source, weights, arch, quick_gelu)
    encoder = build_encoder(cfg, location, device, precision)
    encoder.source = canonical
    return encoder


def _resolve_encoder(source: WeightSource, weights: str | Path | None, arch: str | None,
                     quick_gelu: bool | None) -> tuple[ModelConfig, Path, str]:
    """(config, weights on disk, canonical reference) of an encoder source. ``arch``/``quick_gelu`` apply to
    registered models and checkpoint files; a model folder describes itself."""
    if weights is not None and source.prefix != REGISTRY_PREFIX:
        raise InputError(str(source), "weights= goes with a registered model name (terravl:NAME); this source "
                                      "already says where its weights are")
    if source.prefix == FILE_PREFIX:
        path = source.path
        if not path.exists():
            raise WeightsNotFoundError(path, "no such checkpoint file or model folder")
        if path.is_dir():
            return folder_config(path), path, str(path.resolve())
        return _file_config(config_for_file(path), path, arch, quick_gelu), path, str(path.resolve())
    if source.prefix == HUB_PREFIX:
        return _hub_config(source, arch, quick_gelu) + (str(source),)
    cfg = get_config(source.target)
    cfg = replace(cfg, arch=arch or cfg.arch, quick_gelu=cfg.quick_gelu if quick_gelu is None else quick_gelu)
    return cfg, resolve_weights(cfg, weights), cfg.name


def _file_config(known: ModelConfig | None, file: Path, arch: str | None, quick_gelu: bool | None) -> ModelConfig:
    """A checkpoint file's config: the registered model it is known to be (unless the caller names another
    ``arch``), else an OpenCLIP CLIP of ``arch`` or of the architecture the state dict's shapes describe."""
    if known is not None and arch is None:
        return known if quick_gelu is None else replace(known, quick_gelu=quick_gelu)
    return ModelConfig("", "open_clip", arch or "", file.name, bool(quick_gelu))


def _hub_config(source: WeightSource, arch: str | None, quick_gelu: bool | None) -> tuple[ModelConfig, Path]:
    repo, filename = source.hub_repo, source.hub_file
    if filename is None:
        folder = cached_hub_folder(repo)
        if folder is None:
            raise _not_in_hub_cache(source, "its files (config.json and the weights)")
        return folder_config(folder), folder
    file = cached_hub_file(repo, filename)
    if file is None:
        raise _not_in_hub_cache(source, repr(filename))
    return _file_config(config_for_hub(repo, filename), file, arch, quick_gelu), file


def _not_in_hub_cache(source: WeightSource, what: str) -> WeightsNotFoundError:
    command = f"hf download {source.hub_repo}" + (f" {source.hub_file}" if source.hub_file else "")
    return WeightsNotFoundError(str(source), f"{what} of {source.hub_repo} not in the Hugging Face cache "
                                             f"({hub_cache_dir()}): put it there with `{command}` on a machine with "
                                             f"internet; TerraVL never downloads implicitly")


def load_captioner(name_or_path: str | Path = DEFAULT_CAPTIONER, device: str | torch.device | None = None,
                   threads: int | None = None):
    """A :class:`~terravl.models.bridge.Captioner` from the captioner registry (``terravl-captioner`` ships;
    folders in ``$TERRAVL_HOME/models`` join it), a folder written by ``terravl train caption``, or a prefixed
    source (``terravl:NAME``, ``file:FOLDER``, ``hf-hub:ORG/REPO``). Its image encoder loads on first use."""
    from terravl.models.bridge import Captioner

    if threads:
        torch.set_num_threads(int(threads))
    source = parse_source(name_or_path, names())
    folder, name, canonical = _resolve_captioner(source)
    captioner = Captioner.load(folder, device=device)
    captioner.name = name
    captioner.source = canonical
    return captioner


def _resolve_captioner(source: WeightSource) -> tuple[Path, str, str]:
    """(folder, name, canonical reference) of a captioner source."""
    if source.prefix == FILE_PREFIX:
        folder = source.path
        if not (folder / CAPTIONER_SETTINGS_FILE).is_file():
            raise InputError(folder, f"not a captioner folder (no {CAPTIONER_SETTINGS_FILE}); give a registered "
                                     f"captioner name or a folder written by `terravl train caption`")
        return folder, folder.name, str(folder.resolve())
    if source.prefix == HUB_PREFIX:
        folder = cached_hub_folder(source.hub_repo)
        if folder is None or not (folder / CAPTIONER_SETTINGS_FILE).is_file():
            raise _not_in_hub_cache(source, f"the captioner folder ({CAPTIONER_SETTINGS_FILE} and its weights)")
        return folder, source.hub_repo.split("/")[-1], str(source)
    cfg = get_captioner_config(source.target)
    return resolve_weights(cfg), cfg.name, cfg.name
