"""The files a change run writes: ``change.tif`` (probability), ``mask.tif``, ``regions.geojson``, ``preview.png``.

GeoTIFFs are written block by block (tiled, deflate) on the grid of the before image's overlap with the after
image, georeferenced like it, so they open in any GIS over the inputs. Every file is written to ``NAME.part`` and
renamed when complete: a killed run never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np

from terravl.errors import OutputError
from terravl.io.georef import GeoReference, PixelWindow

MASK_NODATA = 255
"""``mask.tif``: 1 changed, 0 unchanged, 255 where either date has no valid pixel."""


def prepare_folder(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(out, f"cannot create the output folder ({exc.strerror or exc})") from None
    return out


class GridWriter:
    """A single-band GeoTIFF on the pair's grid, written window by window (``with`` closes and renames it)."""

    def __init__(self, path: Path, width: int, height: int, georef: GeoReference | None, dtype: str, nodata,
                 tags: dict[str, str]):
        import rasterio
        import rasterio.errors

        self.path, self.part = path, path.with_name(path.name + ".part")
        profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": dtype,
                   "nodata": nodata, "compress": "deflate", "tiled": True, "blockxsize": 256, "blockysize": 256,
                   "BIGTIFF": "IF_SAFER"}
        if georef is not None:
            profile.update(crs=georef.crs_wkt, transform=georef.transform)
        try:
            with warnings.catch_warnings():  # a pair without georeference gives outputs without one, as said
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self.dst = rasterio.open(self.part, "w", **profile)
            self.dst.update_tags(**tags)
        except Exception as exc:  # rasterio raises several types for an unwritable target
            raise OutputError(path, f"cannot write ({_first_line(exc)})") from None

    def write(self, data: np.ndarray, window: PixelWindow) -> None:
        from rasterio.windows import Window

        self.dst.write(data, 1, window=Window(window.col_off, window.row_off, window.width, window.height))

    def __enter__(self) -> "GridWriter":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        self.dst.close()
        if exc_type is None:
            self.part.replace(self.path)
        else:
            with contextlib.suppress(OSError):
                self.part.unlink()


def write_json(path: Path, value: dict) -> Path:
    part = path.with_name(path.name + ".part")
    try:
        part.write_text(json.dumps(value, indent=1, ensure_ascii=False), encoding="utf-8")
        part.replace(path)
    except OSError as exc:
        raise OutputError(path, f"cannot write ({exc.strerror or exc})") from None
    return path


def write_preview(path: Path, before: np.ndarray, after: np.ndarray, mask: np.ndarray, valid: np.ndarray) -> Path:
    """``before | after | overlay``: the after image with changed pixels tinted red and outlined."""
    from PIL import Image
    from scipy import ndimage

    changed = mask == 1
    overlay = after.astype(np.float32)
    overlay[changed] = 0.45 * overlay[changed] + 0.55 * np.array([255, 0, 0], dtype=np.float32)
    edge = changed & ~ndimage.binary_erosion(changed)
    overlay[edge] = (255, 255, 0)
    overlay[~valid] = 0
    gap = np.full((before.shape[0], 4, 3), 255, dtype=np.uint8)
    strip = np.concatenate([before, gap, after, gap, overlay.astype(np.uint8)], axis=1)
    part = path.with_name(path.name + ".part")
    try:
        Image.fromarray(strip).save(part, format="PNG")
        part.replace(path)
    except OSError as exc:
        raise OutputError(path, f"cannot write ({exc.strerror or exc})") from None
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
