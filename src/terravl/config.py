"""Where TerraVL looks for things on disk. Nothing here touches the network."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MAX_PIXELS = 200_000_000
"""Largest image (width × height) read whole into memory; larger rasters must be tiled. Override with
``TERRAVL_MAX_PIXELS``. Pillow's own bomb check (about 179 Mpx) is replaced by this limit."""


def terravl_home() -> Path:
    """``$TERRAVL_HOME``, default ``~/.cache/terravl``."""
    return Path(os.environ.get("TERRAVL_HOME", Path.home() / ".cache" / "terravl")).expanduser()


def models_dir() -> Path:
    """Folder searched for checkpoint files by registry name: ``$TERRAVL_HOME/models``."""
    return terravl_home() / "models"


def max_pixels() -> int:
    """The pixel limit in force (``TERRAVL_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`)."""
    value = os.environ.get("TERRAVL_MAX_PIXELS")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"TERRAVL_MAX_PIXELS must be an integer, got {value!r}") from exc


def packaged_models_dir() -> Path:
    """Weights shipped inside the package (TerraVL's own default models)."""
    return Path(__file__).resolve().parent / "weights"


def samples_dir() -> Path:
    """The sample GeoTIFFs shipped inside the package (see ``samples/SOURCE.md``)."""
    return Path(__file__).resolve().parent / "samples"


def shared_dir() -> Path | None:
    """The project's shared data folder (``$TERRAVL_SHARED``, else ``../shared`` beside a source checkout)."""
    env = os.environ.get("TERRAVL_SHARED")
    if env:
        path = Path(env)
        return path if path.is_dir() else None
    candidate = Path(__file__).resolve().parents[3] / "shared"
    return candidate if candidate.is_dir() else None
