"""Named model configs — dual encoders and captioners in two registries — and where their weights are on disk.

Each shipped model is one small JSON file, ``configs/encoders/<name>.json`` or ``configs/captioners/<name>.json``
(keyword fields of :class:`ModelConfig` / :class:`CaptionerConfig`): adding a model means adding a file. A config
says which family builds it and which file its authors publish; it holds no weights. Weights are resolved in this
order, never over the network: an explicit path → shipped in the package → ``$TERRAVL_HOME/models/<file>`` → the
Hugging Face cache (only files already there). ``terravl models pull NAME`` is the one place that downloads, and
only when a user runs it. Folders written by ``terravl train caption`` and copied into ``$TERRAVL_HOME/models``
join the captioner registry under their folder name.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar, TypeVar, Union

from terravl import config
from terravl.errors import InputError
from terravl.models.sources import cached_hub_file, cached_hub_folder

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
CAPTIONER_SETTINGS_FILE = "captioner.json"  # the same name as terravl.models.bridge.SETTINGS_FILE (kept import-free)


class WeightsNotFoundError(InputError):
    """A model's checkpoint is not on disk; the message says which file to put where."""


class _Config:
    """What every registry entry answers: its fields as a dict (``models list --format json``)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelConfig(_Config):
    """One named dual encoder. ``family`` picks the builder in :data:`terravl.models.families.BUILDERS`:
    ``open_clip`` (OpenCLIP architectures), ``hf`` (a transformers CLIP/SigLIP folder) or ``terravl`` (TerraVL's
    own small dual encoder). ``shipped`` models live inside the package, so there is nothing to download."""

    kind: ClassVar[str] = "encoder"

    name: str
    family: str
    arch: str
    file: str
    quick_gelu: bool = False
    hf_repo: str | None = None
    hf_filename: str | None = None
    source: str = ""
    description: str = ""
    shipped: bool = False
    notes: str = ""


@dataclass(frozen=True)
class CaptionerConfig(_Config):
    """One named captioner: a folder (``captioner.json`` + ``bridge.safetensors`` [+ ``lm/``]) that
    :meth:`terravl.models.bridge.Captioner.load` reads; ``encoder`` is the dual encoder whose features it uses."""

    kind: ClassVar[str] = "captioner"
    family: ClassVar[str] = "bridge"

    name: str
    arch: str
    file: str
    shipped: bool = False
    encoder: str = "terravl-default"
    hf_repo: str | None = None
    hf_filename: str | None = None
    source: str = ""
    description: str = ""
    notes: str = ""


@dataclass(frozen=True)
class ChangeDetectorConfig(_Config):
    """One named change detector: a folder (``change_detector.json`` + ``model.safetensors``) that
    :func:`terravl.models.change_detector.load_change_detector` reads."""

    kind: ClassVar[str] = "change-detector"
    family: ClassVar[str] = "siamese-unet"

    name: str
    arch: str
    file: str
    shipped: bool = False
    source: str = ""
    description: str = ""
    notes: str = ""


AnyConfig = Union[ModelConfig, CaptionerConfig, ChangeDetectorConfig]
C = TypeVar("C", ModelConfig, CaptionerConfig, ChangeDetectorConfig)

REGISTRY: dict[str, ModelConfig] = {}
"""Dual encoders by name."""
CAPTIONERS: dict[str, CaptionerConfig] = {}
"""Captioners by name (the shipped ones; folders in ``$TERRAVL_HOME/models`` are added by :func:`captioners`)."""
CHANGE_DETECTORS: dict[str, ChangeDetectorConfig] = {}
"""Change detectors by name (``configs/change/<name>.json``)."""


def config_from_dict(cls: type[C], data: dict, origin: str | Path) -> C:
    """A config from keyword fields; unknown or missing keys are an :class:`InputError` naming ``origin``."""
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(origin, f"unknown config keys {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise InputError(origin, f"incomplete model config ({exc})") from None


def read_config_file(cls: type[C], path: Path) -> C:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"unreadable model config ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "a model config must be a JSON object")
    return config_from_dict(cls, data, path)


def read_configs(cls: type[C], folder: Path) -> dict[str, C]:
    """Every named config of one registry folder (``models/configs/<kind>/*.json``), by name: the registries of
    grounders, object heads and routers."""
    return {cfg.name: cfg for cfg in (read_config_file(cls, p) for p in sorted(folder.glob("*.json")))}


def model_folder(name_or_path: str | Path, registered: dict, settings_file: str, kind: str, train: str,
                 folder_kind: str | None = None) -> Path:
    """The folder of a small trained model (grounder, object head, router): a folder path, a registered name
    (shipped folder, then ``$TERRAVL_HOME/models/<file>``) or the name of a folder in ``$TERRAVL_HOME/models``;
    a clear error naming what there is otherwise (``train``: the command that makes one)."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if os.sep in text or text.startswith(".") or path.exists():
        if not (path / settings_file).is_file():
            raise WeightsNotFoundError(text, f"no {folder_kind or kind} folder here (it needs {settings_file})")
        return path
    if text in registered:
        return resolve_weights(registered[text])
    folder = config.models_dir() / text
    if (folder / settings_file).is_file():
        return folder
    raise WeightsNotFoundError(text, f"no {kind} named {text!r}: registered: {', '.join(sorted(registered)) or 'none'}"
                                     f", or a folder with {settings_file}; train one with `{train}`")


def register(cfg: ModelConfig) -> ModelConfig:
    """Add (or replace) a named dual encoder; returns it."""
    REGISTRY[cfg.name] = cfg
    return cfg


def register_captioner(cfg: CaptionerConfig) -> CaptionerConfig:
    """Add (or replace) a named captioner; returns it."""
    CAPTIONERS[cfg.name] = cfg
    return cfg


def _load_packaged() -> None:
    for path in sorted((CONFIGS_DIR / "encoders").glob("*.json")):
        register(read_config_file(ModelConfig, path))
    for path in sorted((CONFIGS_DIR / "captioners").glob("*.json")):
        register_captioner(read_config_file(CaptionerConfig, path))
    for path in sorted((CONFIGS_DIR / "change").glob("*.json")):
        cfg = read_config_file(ChangeDetectorConfig, path)
        CHANGE_DETECTORS[cfg.name] = cfg
    if not REGISTRY:
        raise RuntimeError(f"no model configs found in {CONFIGS_DIR}: the package was installed without its data "
                           f"files (package-data must include models/configs/*/*.json)")


_load_packaged()


def captioners() -> dict[str, CaptionerConfig]:
    """Registered captioners, then captioner folders in ``$TERRAVL_HOME/models`` (e.g. the ``model/`` folder of a
    ``terravl train caption`` run copied there), named after their folder."""
    found = dict(CAPTIONERS)
    folder = config.models_dir()
    if folder.is_dir():
        for settings in sorted(folder.glob(f"*/{CAPTIONER_SETTINGS_FILE}")):
            name = settings.parent.name
            found.setdefault(name, CaptionerConfig(name, "bridge", name, source=str(settings.parent),
                                                   encoder=_settings_encoder(settings),
                                                   description="captioner folder in $TERRAVL_HOME/models"))
    return found


def _settings_encoder(settings: Path) -> str:
    try:
        return str(json.loads(settings.read_text()).get("encoder", ""))
    except (OSError, json.JSONDecodeError, AttributeError):
        return ""


def names() -> set[str]:
    """Every name a bare reference may mean, encoders and captioners."""
    return set(REGISTRY) | set(captioners())


def get_config(name: str) -> ModelConfig:
    """The dual encoder registered as ``name``; a captioner's name or an unknown name is an :class:`InputError`."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name in captioners():
        raise InputError(name, "is a captioner, not a dual encoder: load it with terravl.models.load_captioner")
    raise InputError(name, f"unknown model; registered: {', '.join(sorted(REGISTRY))} "
                           f"(or give a checkpoint file or a Hugging Face model folder, or a prefixed source: "
                           f"terravl:NAME, file:PATH, hf-hub:ORG/REPO[/FILE])")


def get_captioner_config(name: str) -> CaptionerConfig:
    """The captioner registered as ``name``; a dual encoder's name or an unknown name is an :class:`InputError`."""
    found = captioners()
    if name in found:
        return found[name]
    listed = ", ".join(sorted(found))
    if name in REGISTRY:
        raise InputError(name, f"is a dual encoder, not a captioner; captioners: {listed}")
    raise InputError(name, f"unknown captioner; registered: {listed} (or give a folder written by "
                           f"`terravl train caption`)")


def lookup(name: str) -> AnyConfig:
    """The config of ``name`` in either registry (encoders first)."""
    if name in REGISTRY:
        return REGISTRY[name]
    found = captioners()
    if name in found:
        return found[name]
    return get_config(name)  # raises: unknown name


def config_for_file(path: Path) -> ModelConfig | None:
    """The downloadable encoder whose published file name ``path`` ends with (whole path components), or None:
    a bare path keeps loading as it did before prefixes existed. Prefer ``load(NAME, weights=PATH)`` to say so."""
    posix = path.as_posix()
    return next((c for c in REGISTRY.values()
                 if not c.shipped and (posix == c.file or posix.endswith("/" + c.file))), None)


def config_for_hub(repo: str, filename: str | None) -> ModelConfig | None:
    """The registered encoder published as ``repo``/``filename`` on the Hugging Face Hub, or None."""
    return next((c for c in REGISTRY.values() if c.hf_repo == repo and c.hf_filename == filename), None)


def find_weights(cfg: AnyConfig) -> Path | None:
    """The checkpoint file (or model folder) of ``cfg`` on disk, or None. Looks only at local files."""
    if cfg.shipped:
        shipped = config.packaged_models_dir() / cfg.file
        return shipped if shipped.exists() else None
    local = config.models_dir() / cfg.file
    if local.exists():
        return local
    if cfg.hf_repo:
        return cached_hub_file(cfg.hf_repo, cfg.hf_filename) if cfg.hf_filename else cached_hub_folder(cfg.hf_repo)
    return None


def resolve_weights(cfg: AnyConfig, path: str | Path | None = None) -> Path:
    """Explicit ``path`` → package / ``$TERRAVL_HOME/models`` → Hugging Face cache; else a
    :class:`WeightsNotFoundError` that names the file and where to put it."""
    if path is not None:
        if not Path(path).exists():
            raise WeightsNotFoundError(path, "no such checkpoint file")
        return Path(path)
    found = find_weights(cfg)
    if found is not None:
        return found
    if cfg.shipped:
        raise WeightsNotFoundError(cfg.name, f"the package is missing its shipped weights "
                                             f"({config.packaged_models_dir() / cfg.file}); reinstall terravl")
    where = config.models_dir() / cfg.file
    if cfg.source and cfg.source.startswith("train:"):  # weights a user makes here, not downloads
        raise WeightsNotFoundError(cfg.name, f"not trained yet: {cfg.source[6:].strip()}, then put the model "
                                             f"folder at {where}")
    hint = f"run `terravl models pull {cfg.name}` on a machine with internet, or " if cfg.hf_repo else ""
    raise WeightsNotFoundError(cfg.name, f"weights not found: put {cfg.file!r} at {where} ({hint}download it from "
                                         f"{cfg.source or 'its authors'}); TerraVL never downloads implicitly")


def list_models(extra: tuple = ()) -> list[dict]:
    """Every registered encoder, then every captioner, change detector and grounder (then the configs in
    ``extra``: registries of higher layers, e.g. routers), with ``kind``, ``present`` (weights found on disk) and
    the path found."""
    from terravl.models.grounder import grounders

    out = []
    for cfg in [*REGISTRY.values(), *captioners().values(), *CHANGE_DETECTORS.values(), *grounders().values(),
                *extra]:
        found = find_weights(cfg)
        out.append({"name": cfg.name, "kind": cfg.kind, "arch": cfg.arch, "file": cfg.file,
                    "present": found is not None, "path": str(found) if found else None, "family": cfg.family,
                    "shipped": cfg.shipped, "description": cfg.description})
    return out
