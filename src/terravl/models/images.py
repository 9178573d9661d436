"""Turn whatever a caller passes as an image into a PIL RGB image: paths (any raster TerraVL reads), PIL images,
arrays (H, W, 3) or (H, W), TerraVL ``GeoImage``/``Tile`` objects, and zero-argument callables returning one of these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from terravl import config
from terravl.errors import ImageTooLargeError, RasterReadError
from terravl.paths import missing_reason
from terravl.io.raster import PILLOW_SUFFIXES, open_pillow, read_image
from terravl.io.remote import is_remote

ImageInput = Any
"""str | Path | PIL.Image.Image | np.ndarray | GeoImage | Tile"""


def to_pil(item: ImageInput) -> Image.Image:
    """One input as an RGB PIL image; raises a typed error naming the file for unreadable paths."""
    if isinstance(item, Image.Image):
        return item if item.mode == "RGB" else item.convert("RGB")
    if isinstance(item, (str, Path)):
        return _open_path(Path(item))
    if callable(item):  # a deferred image (e.g. path + augmentation), decoded in the encoder's worker threads
        return to_pil(item())
    array = getattr(item, "array", item)
    if isinstance(array, np.ndarray):
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ValueError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")
        if array.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 (use terravl.io to stretch other types); got {array.dtype}")
        return Image.fromarray(np.ascontiguousarray(array[..., :3]), "RGB")
    raise TypeError(f"cannot use {type(item).__name__} as an image")


def _open_path(path: Path) -> Image.Image:
    if path.suffix.lower() not in PILLOW_SUFFIXES or is_remote(path):  # s3:// objects: GDAL reads them
        return Image.fromarray(np.ascontiguousarray(read_image(path).with_data().array), "RGB")
    if not path.is_file():
        raise RasterReadError(path, missing_reason(path))
    try:
        img = open_pillow(str(path))
        width, height = img.size
        if width * height > config.max_pixels():
            raise ImageTooLargeError(path, f"{width} × {height} pixels exceeds the limit of {config.max_pixels():,}")
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img
    except ImageTooLargeError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise RasterReadError(path, f"unreadable image ({exc.__class__.__name__}: {exc})") from exc


def describe(item: ImageInput, index: int) -> str:
    """A name for an input in error reports: its path, or its position in the batch."""
    if isinstance(item, (str, Path)):
        return str(item)
    source = getattr(item, "source", None) or getattr(item, "path", None)
    return f"{source}" if source else f"image #{index}"

