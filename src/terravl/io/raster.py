"""Open any raster TerraVL accepts — PNG, JPEG, TIFF, GeoTIFF and other GDAL formats — behind one interface.

:func:`open_raster` returns a :class:`RasterSource` that reads pixel windows at constant memory (GeoTIFFs are
never read whole unless asked). :func:`read_image` reads a whole image as 8-bit RGB with its valid-pixel mask and
georeference, guarded by a pixel limit. Every failure is a typed :class:`~terravl.errors.InputError` naming the
file, so batch callers can skip it, report it and go on.
"""

from __future__ import annotations

import os
import threading
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from terravl import config
from terravl.errors import ImageTooLargeError, RasterReadError
from terravl.io.bands import Stretch, alpha_band, percentile_stretch, resolve_bands, to_uint8
from terravl.io.georef import GeoReference, PixelWindow
from terravl.io.metadata import acquisition_date

PILLOW_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
"""Plain image formats decoded by Pillow (whole, fast). Everything else goes through rasterio/GDAL."""

GDAL_DEFAULTS = {"GDAL_CACHEMAX": "64", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
"""GDAL's block cache defaults to 5 % of RAM; capping it (unless the user set it) keeps tiling of huge rasters at
constant memory. Set through the environment so that it holds in every thread."""
for _key, _value in GDAL_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

Image.MAX_IMAGE_PIXELS = None  # TerraVL applies its own limit (config.max_pixels) before decoding


@dataclass(frozen=True)
class RasterInfo:
    """What a raster's header says: size, bands, data type, nodata, georeference and acquisition date."""

    path: str
    driver: str
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    colorinterp: tuple[str, ...]
    georef: GeoReference | None
    acquired: str | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def footprint(self) -> dict | None:
        """WGS84 GeoJSON polygon of the whole raster, or None when it has no CRS."""
        if self.georef is None:
            return None
        return self.georef.footprint(PixelWindow(0, 0, self.width, self.height))

    def to_dict(self) -> dict:
        return {"path": self.path, "driver": self.driver, "width": self.width, "height": self.height,
                "count": self.count, "dtype": self.dtype, "nodata": self.nodata,
                "crs": self.georef.crs_name if self.georef else None,
                "transform": list(self.georef.transform)[:6] if self.georef else None,
                "footprint": self.footprint(), "acquired": self.acquired}


@dataclass
class GeoImage:
    """An 8-bit RGB image (H, W, 3), its valid-pixel mask (H, W) and, if it has one, its georeference."""

    array: np.ndarray
    valid: np.ndarray
    path: str
    georef: GeoReference | None = None
    window: PixelWindow | None = None
    meta: dict = field(default_factory=dict)

    def footprint(self) -> dict | None:
        if self.georef is None:
            return None
        height, width = self.array.shape[:2]
        if self.window is not None:
            width, height = self.window.width, self.window.height
        return self.georef.footprint(PixelWindow(0, 0, width, height))

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.array, "RGB")


class RasterSource:
    """An open raster that reads (bands, h, w) windows plus a validity mask. Use as a context manager."""

    def __init__(self, path: str | Path, bands="auto", stretch: str | Stretch = "auto"):
        self.path = str(path)
        self._stack = ExitStack()
        self._pil_data: np.ndarray | None = None
        self._pil_valid: np.ndarray | None = None
        self._ds = None
        self._local = threading.local()
        self._handles: list = []
        self._handles_lock = threading.Lock()
        try:
            if Path(self.path).suffix.lower() in PILLOW_SUFFIXES:
                self.info = self._open_pillow()
            else:
                self.info = self._open_rasterio()
        except BaseException:
            self._stack.close()
            raise
        self.bands = resolve_bands(bands, self.info.count, self.path, self.info.colorinterp)
        flags = self._ds.mask_flag_enums[0] if self._ds is not None else ()
        self._dataset_mask = MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags
        self._alpha = alpha_band(self.info.colorinterp)
        self._stretch_arg = stretch
        self._stretch: Stretch | None = stretch if isinstance(stretch, Stretch) else None

    # -- opening ---------------------------------------------------------------------------------------
    def _open_pillow(self) -> RasterInfo:
        path = self.path
        if not Path(path).is_file():
            raise RasterReadError(path, "no such file")
        try:
            img = self._stack.enter_context(Image.open(path))
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
            raise RasterReadError(path, f"not a readable image ({exc.__class__.__name__}: {exc})") from exc
        width, height = img.size
        _check_pixels(path, width, height)
        try:
            img.load()
        except Exception as exc:  # noqa: BLE001
            raise RasterReadError(path, f"corrupt or truncated image ({exc})") from exc
        data, valid, colorinterp = _pillow_to_bands(img)
        self._pil_data, self._pil_valid = data, valid
        return RasterInfo(path, img.format or "PIL", width, height, data.shape[0], str(data.dtype), None,
                          colorinterp, None, acquisition_date(path, {}))

    def _open_rasterio(self) -> RasterInfo:
        path = self.path
        if not Path(path).exists():
            raise RasterReadError(path, "no such file")
        ds = self._dataset()
        self._ds = ds
        georef = GeoReference.from_rasterio(ds.crs, ds.transform)
        colorinterp = tuple(ci.name for ci in ds.colorinterp)
        nodata = ds.nodata
        return RasterInfo(path, ds.driver, ds.width, ds.height, ds.count, ds.dtypes[0],
                          float(nodata) if nodata is not None else None, colorinterp, georef,
                          acquisition_date(path, ds.tags()))

    def _dataset(self):
        """This thread's rasterio handle (GDAL handles must not be shared between threads)."""
        ds = getattr(self._local, "ds", None)
        if ds is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    ds = rasterio.open(self.path)
            except (RasterioError, OSError, ValueError) as exc:
                raise RasterReadError(self.path, f"not a readable raster ({_first_line(exc)})") from exc
            self._local.ds = ds
            with self._handles_lock:
                self._handles.append(ds)
        return ds

    # -- context -------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._handles_lock:
            for ds in self._handles:
                ds.close()
            self._handles.clear()
        self._stack.close()

    def __enter__(self) -> "RasterSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------------
    def read(self, window: PixelWindow | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw data of the selected bands, (3, h, w) in the file's dtype, and the valid mask (h, w)."""
        if window is None:
            window = PixelWindow(0, 0, self.info.width, self.info.height)
        if self._pil_data is not None:
            sl = (slice(window.row_off, window.row_off + window.height),
                  slice(window.col_off, window.col_off + window.width))
            idx = [b - 1 for b in self.bands]
            data = self._pil_data[idx][(slice(None), *sl)]
            valid = self._pil_valid[sl].copy() if self._pil_valid is not None else np.ones(data.shape[1:], bool)
            return data, valid & _finite(data)
        return self._read_rasterio(window)

    def _read_rasterio(self, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        ds = self._dataset()
        win = Window(window.col_off, window.row_off, window.width, window.height)
        unique = sorted(set(self.bands))
        try:
            raw = ds.read(unique, window=win)
            if len(unique) == 3 and tuple(unique) == tuple(self.bands):
                data = raw
            else:
                data = raw[[unique.index(b) for b in self.bands]]
            valid = _finite(data) if data.dtype.kind == "f" else all_valid(data.shape[1:])
            if self.info.nodata is not None and not np.isnan(self.info.nodata):
                valid = valid & ~np.all(data == np.array(self.info.nodata, dtype=data.dtype), axis=0)
            if self._alpha is not None:
                valid = valid & (ds.read(self._alpha, window=win) > 0)
            elif self._dataset_mask:
                valid = valid & (ds.read_masks(1, window=win) > 0)
        except (RasterioError, OSError, ValueError) as exc:
            raise RasterReadError(self.path, f"corrupt or truncated raster data at window "
                                             f"{window.to_dict()} ({_first_line(exc)})") from exc
        return data, valid

    @property
    def stretch(self) -> Stretch:
        """The stretch used for every window: identity for uint8 data, else 2–98 % percentiles of a sample."""
        if self._stretch is None:
            self._stretch = self._compute_stretch(self._stretch_arg)
        return self._stretch

    def _compute_stretch(self, how: str) -> Stretch:
        if how == "none" or (how == "auto" and self.info.dtype == "uint8"):
            return Stretch.none()
        if how not in ("auto", "percentile"):
            raise ValueError(f"stretch must be 'auto', 'percentile', 'none' or a Stretch, got {how!r}")
        samples, valid = self._sample_for_stats()
        return percentile_stretch(samples, valid)

    def _sample_for_stats(self, grid: int = 8, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Read up to grid×grid windows spread evenly over the raster: stretch limits at constant cost."""
        width, height = self.info.width, self.info.height
        if width * height <= (grid * size) ** 2:
            return self.read()
        datas, valids = [], []
        for gy in range(grid):
            for gx in range(grid):
                w, h = min(size, width), min(size, height)
                col = int((width - w) * gx / max(grid - 1, 1))
                row = int((height - h) * gy / max(grid - 1, 1))
                data, valid = self.read(PixelWindow(col, row, w, h))
                datas.append(data.reshape(data.shape[0], -1))
                valids.append(valid.reshape(-1))
        return np.concatenate(datas, axis=1)[:, None, :], np.concatenate(valids)[None, :]

    def read_planar(self, window: PixelWindow | None = None) -> tuple[np.ndarray, np.ndarray]:
        """8-bit planar RGB (3, h, w) and valid mask (h, w) of ``window``, stretched like the whole raster."""
        stretch = self.stretch
        data, valid = self.read(window)
        return to_uint8(data, stretch, valid), valid

    def read_rgb(self, window: PixelWindow | None = None, pad_to: tuple[int, int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """8-bit RGB (H, W, 3) and valid mask of ``window``, zero-padded at the bottom/right to ``pad_to``.

        The array is a channels-last view of a planar (3, H, W) buffer — ``array.transpose(2, 0, 1)`` gives the
        contiguous planar layout that tensors want, at no cost. Safe to call from several threads at once.
        """
        planar, valid = self.read_planar(window)
        if pad_to is not None and planar.shape[1:] != pad_to:
            padded = np.zeros((3, *pad_to), dtype=np.uint8)
            padded_valid = np.zeros(pad_to, dtype=bool)
            h, w = planar.shape[1:]
            padded[:, :h, :w] = planar
            padded_valid[:h, :w] = valid
            planar, valid = padded, padded_valid
        return planar.transpose(1, 2, 0), valid


def open_raster(path: str | Path, bands="auto", stretch: str | Stretch = "auto") -> RasterSource:
    """Open ``path`` for windowed reading. Raises :class:`RasterReadError` / :class:`BandError` naming the file."""
    return RasterSource(path, bands=bands, stretch=stretch)


def raster_info(path: str | Path) -> RasterInfo:
    """Read a raster's header only, without decoding its pixels."""
    path = str(path)
    if Path(path).suffix.lower() in PILLOW_SUFFIXES:
        if not Path(path).is_file():
            raise RasterReadError(path, "no such file")
        try:
            with Image.open(path) as img:
                bands = len(img.getbands())
                return RasterInfo(path, img.format or "PIL", img.width, img.height, bands,
                                  "uint16" if img.mode.startswith("I;16") else "uint8", None,
                                  tuple(n.lower() for n in img.getbands()), None, acquisition_date(path, {}))
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
            raise RasterReadError(path, f"not a readable image ({exc.__class__.__name__}: {exc})") from exc
    with open_raster(path, bands=(1,)) as src:
        return src.info


def read_image(path: str | Path, bands="auto", stretch: str | Stretch = "auto",
               max_pixels: int | None = None) -> GeoImage:
    """Read a whole image as 8-bit RGB with its valid mask and georeference.

    Refuses images over ``max_pixels`` (default :func:`terravl.config.max_pixels`) with
    :class:`ImageTooLargeError`: tile those with :func:`terravl.io.tiling.iter_tiles` instead.
    """
    limit = config.max_pixels() if max_pixels is None else max_pixels
    path = str(path)
    if Path(path).suffix.lower() in PILLOW_SUFFIXES:
        _check_pixels(path, *_pillow_size(path), limit=limit)
    with open_raster(path, bands=bands, stretch=stretch) as src:
        _check_pixels(path, src.info.width, src.info.height, limit=limit)
        rgb, valid = src.read_rgb()
        return GeoImage(rgb, valid, path, src.info.georef, PixelWindow(0, 0, src.info.width, src.info.height),
                        {"acquired": src.info.acquired, "crs": src.info.georef.crs_name if src.info.georef else None})


def _pillow_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError as exc:
        raise RasterReadError(path, "no such file") from exc
    except Exception as exc:  # noqa: BLE001
        raise RasterReadError(path, f"not a readable image ({exc.__class__.__name__}: {exc})") from exc


def _check_pixels(path: str, width: int, height: int, limit: int | None = None) -> None:
    limit = config.max_pixels() if limit is None else limit
    if width * height > limit:
        raise ImageTooLargeError(path, f"{width} × {height} = {width * height:,} pixels exceeds the limit of "
                                       f"{limit:,} (possible decompression bomb; raise TERRAVL_MAX_PIXELS or tile it)")


def _pillow_to_bands(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Pillow image → (bands, H, W) array, alpha-derived valid mask, colour interpretation names."""
    mode = img.mode
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        img = img.convert("RGBA" if ("A" in mode or "transparency" in img.info) else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA"):
        arr = np.asarray(img)
        alpha = arr[..., -1] > 0
        colour = arr[..., :-1]
        names = ("red", "green", "blue") if mode == "RGBA" else ("gray",)
        return np.ascontiguousarray(np.moveaxis(colour, -1, 0)), alpha, names
    arr = np.asarray(img)
    if arr.ndim == 2:
        return arr[None], None, ("gray",)
    return np.ascontiguousarray(np.moveaxis(arr, -1, 0)), None, ("red", "green", "blue")[: arr.shape[-1]]


@lru_cache(maxsize=8)
def all_valid(shape: tuple[int, int]) -> np.ndarray:
    """A shared, read-only all-True mask: most rasters have no nodata, so no per-window mask is built."""
    mask = np.ones(shape, dtype=bool)
    mask.flags.writeable = False
    return mask


def _finite(data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "f":
        return np.all(np.isfinite(data), axis=0)
    return np.ones(data.shape[1:], dtype=bool)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
