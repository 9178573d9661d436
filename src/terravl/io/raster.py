"""Open any raster TerraVL accepts — PNG, JPEG, TIFF, GeoTIFF and other GDAL formats — behind one interface.

:func:`open_raster` returns a :class:`RasterSource` that reads pixel windows at constant memory (GeoTIFFs are
never read whole unless asked). :func:`read_image` reads a whole image as 8-bit RGB with its valid-pixel mask and
georeference, guarded by a pixel limit. Every failure is a typed :class:`~terravl.errors.InputError` naming the
file, so batch callers can skip it, report it and go on.

Files from untrusted sources (uploads) are read with ``trusted=False``: their first bytes must say JPEG, PNG,
TIFF or WebP (:func:`~terravl.io.formats.sniff_format`), and only that format's decoder sees them — Pillow for
JPEG/PNG/WebP whatever the file's name, GDAL's GTiff driver alone for TIFF, with no sidecar file read — so a GDAL
VRT or other recipe that references files on the server is refused, never decoded.

Importing this module changes nothing in the host process: GDAL settings are scoped to TerraVL's own opens and
reads (:mod:`terravl.io.gdalenv`), and Pillow's ``MAX_IMAGE_PIXELS`` is neither changed nor relied on —
TerraVL checks its own limit (:func:`terravl.config.max_pixels`) on the header, before any pixel is decoded.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import warnings
import weakref
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
from PIL import Image, UnidentifiedImageError
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from terravl import config
from terravl.errors import BandError, ImageTooLargeError, RasterReadError
from terravl.io.bands import BandChoice, Stretch, alpha_band, choose_bands, percentile_stretch, to_uint8
from terravl.io.formats import DRIVERS, PILLOW_FORMATS, check_file, sniff_format
from terravl.io.gdalenv import acquire_block_cache, gdal_env, release_block_cache
from terravl.io.georef import GeoReference, PixelWindow
from terravl.io.metadata import acquisition_date
from terravl.io.remote import gdal_path, is_remote, read_error, to_url

log = logging.getLogger("terravl.io")

PILLOW_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
"""Plain image formats decoded by Pillow (whole, fast) when the file is trusted; everything else goes through
rasterio/GDAL. Untrusted files are routed by their content instead (:data:`~terravl.io.formats.PILLOW_FORMATS`)."""

MIN_VALID_FRACTION = 0.01
"""An image or tile whose share of valid pixels (not nodata, not NaN, not transparent) is below this has "no valid
pixels": there is nothing in it to classify, caption or index, and tasks refuse it rather than answer confidently
about a blank. See :attr:`GeoImage.valid_fraction` and :attr:`~terravl.io.tiling.Tile.valid_fraction`."""


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
    descriptions: tuple[str | None, ...] = ()
    bands_used: BandChoice | None = None
    """The bands shown as RGB and why; for :func:`raster_info`, those a default (``bands="auto"``) read uses, or
    None when the file does not say and a band profile must be given."""

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
                "footprint": self.footprint(), "acquired": self.acquired,
                "bands_used": self.bands_used.to_dict() if self.bands_used else None}


@dataclass
class GeoImage:
    """An 8-bit RGB image (H, W, 3), its valid-pixel mask (H, W) and, if it has one, its georeference."""

    array: np.ndarray
    valid: np.ndarray
    path: str
    georef: GeoReference | None = None
    window: PixelWindow | None = None
    meta: dict = field(default_factory=dict)

    @property
    def valid_fraction(self) -> float:
        """Share of the image's pixels that are valid; below :data:`MIN_VALID_FRACTION` it has no valid pixels."""
        return float(self.valid.mean()) if self.valid.size else 0.0

    def with_data(self) -> "GeoImage":
        """This image, or :class:`RasterReadError` "no valid pixels" when under :data:`MIN_VALID_FRACTION` of it is
        data (all nodata or NaN): the one rule every reader of whole images applies before answering about it."""
        if self.valid_fraction < MIN_VALID_FRACTION:
            raise RasterReadError(self.path, f"no valid pixels (under {MIN_VALID_FRACTION:.0%} of the image is "
                                             "valid data; the rest is nodata)")
        return self

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
    """An open raster that reads (bands, h, w) windows plus a validity mask. Use as a context manager.

    ``trusted=False`` is for files from untrusted sources (uploads): see the module's docstring. The bands shown
    as RGB, and why, are in ``bands_used`` (and ``info.bands_used``)."""

    def __init__(self, path: str | Path, bands="auto", stretch: str | Stretch = "auto", trusted: bool = True):
        self.remote = is_remote(path)  # s3:// or /vsis3/: read by GDAL over HTTP (terravl.io.remote)
        self.path = to_url(path) if self.remote else str(path)
        # GDAL's S3 settings for the reads too: a remote file, or a VRT (STAC bands) that may name remote files
        self._s3 = self.remote or Path(self.path).suffix.lower() == ".vrt"
        self.trusted = trusted
        self._stack = ExitStack()
        self._pil_data: np.ndarray | None = None
        self._pil_valid: np.ndarray | None = None
        self._ds = None
        self._driver: str | None = None
        self._local = threading.local()
        self._handles: list = []
        self._handles_lock = threading.Lock()
        acquire_block_cache()
        self._release_cache = weakref.finalize(self, release_block_cache)  # also if never closed
        self._release_cache.atexit = False
        try:
            if self.remote and not trusted:
                raise RasterReadError(self.path, "URLs are not accepted from untrusted sources; send the file")
            if trusted:
                fmt = None
                pillow = not self.remote and Path(self.path).suffix.lower() in PILLOW_SUFFIXES
            else:
                fmt = sniff_format(self.path)
                pillow = fmt in PILLOW_FORMATS
            if pillow:
                self.info = self._open_pillow((PILLOW_FORMATS[fmt],) if fmt else None)
            else:
                self._driver = DRIVERS[fmt][0] if fmt else None
                self.info = self._open_rasterio()
            choice = choose_bands(bands, self.info.count, self.path, self.info.colorinterp, self.info.descriptions)
            flags = ()
            if self._ds is not None:  # (a file Pillow decoded has no GDAL handle: no GDAL settings to enter)
                with gdal_env(not trusted, self._s3):
                    flags = self._ds.mask_flag_enums[0]
        except BaseException:
            self.close()
            raise
        self.bands = choice.bands
        self.bands_used = choice
        self.info = replace(self.info, bands_used=choice)
        if choice.inferred:
            log.warning("%s: %d bands; showing bands %s as red, green, blue (from its %s); give a band profile "
                        "(bands=…) to choose others", self.path, self.info.count, ",".join(map(str, choice.bands)),
                        choice.reason)
        self._dataset_mask = MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags
        self._alpha = alpha_band(self.info.colorinterp)
        self._stretch_arg = stretch
        self._stretch: Stretch | None = stretch if isinstance(stretch, Stretch) else None

    # -- opening ---------------------------------------------------------------------------------------
    def _open_pillow(self, formats: tuple[str, ...] | None) -> RasterInfo:
        path = self.path
        check_file(path)
        try:
            img = self._stack.enter_context(open_pillow(path, formats))
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
        if not self.remote:
            check_file(path, allow_dir=True)  # some GDAL formats are folders
        ds = self._dataset()
        self._ds = ds
        georef = GeoReference.from_rasterio(ds.crs, ds.transform)
        colorinterp = tuple(ci.name for ci in ds.colorinterp)
        nodata = ds.nodata
        with gdal_env(not self.trusted, self._s3):
            tags = ds.tags()
        return RasterInfo(path, ds.driver, ds.width, ds.height, ds.count, ds.dtypes[0],
                          float(nodata) if nodata is not None else None, colorinterp, georef,
                          acquisition_date(path, tags), tuple(ds.descriptions))

    def _dataset(self):
        """This thread's rasterio handle (GDAL handles must not be shared between threads), opened inside this
        thread's :func:`~terravl.io.gdalenv.gdal_env` and, for an untrusted file, by the GTiff driver alone."""
        ds = getattr(self._local, "ds", None)
        if ds is None:
            # an untrusted file is named by its absolute path, so GDAL never reads it as a /vsi… or URL recipe
            target = gdal_path(self.path) if self.remote else \
                self.path if self.trusted else os.path.abspath(self.path)
            try:
                with gdal_env(not self.trusted, self._s3), warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    ds = rasterio.open(target, driver=self._driver)
            except (RasterioError, OSError, ValueError) as exc:
                if self.remote:  # what S3 answered: no such object, access denied…
                    raise read_error(self.path, exc) from exc
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
        self._pil_data = self._pil_valid = None
        self._release_cache()  # once only, however often close() is called

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
            # window first, then bands: a copy of the window only, never of the whole image (a tile that views
            # a whole-image copy keeps that copy alive for as long as the tile lives)
            data = self._pil_data[(slice(None), *sl)][idx]
            valid = self._pil_valid[sl].copy() if self._pil_valid is not None else np.ones(data.shape[1:], bool)
            return data, valid & _finite(data)
        return self._read_rasterio(window)

    def _read_rasterio(self, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        ds = self._dataset()
        win = Window(window.col_off, window.row_off, window.width, window.height)
        unique = sorted(set(self.bands))
        if self._s3:  # ranged HTTP reads: the endpoint and region settings apply to them too
            with gdal_env(remote=True):
                return self._read_window(ds, win, window, unique)
        if self.trusted:  # GDAL's settings matter when a file is opened (its sidecars are looked up then)
            return self._read_window(ds, win, window, unique)
        with gdal_env(untrusted=True):  # an upload: belt and braces, for any lookup a driver makes lazily
            return self._read_window(ds, win, window, unique)

    def _read_window(self, ds, win: Window, window: PixelWindow, unique: list[int]
                     ) -> tuple[np.ndarray, np.ndarray]:
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

    def prepare_stretch(self, map_windows: Callable | None = None) -> Stretch:
        """Compute the stretch now, before threads read with it. ``map_windows`` (an executor's ``map``) reads the
        sample windows in those threads, each with the GDAL handle it then keeps for its tiles: the same windows
        in the same order, so the same limits. In a fresh process the sample reads fill GDAL's block cache with
        new memory (page faults), which two threads share: tiling the 8,000² raster of ``benchmarks/bench_tiling.py``
        took 274–280 ms in a fresh process against 301 ms with the samples read by one thread."""
        if self._stretch is None:
            self._stretch = self._compute_stretch(self._stretch_arg, map_windows or map)
        return self._stretch

    def _compute_stretch(self, how: str, map_windows: Callable = map) -> Stretch:
        if how == "none" or (how == "auto" and self.info.dtype == "uint8"):
            return Stretch.none()
        if how not in ("auto", "percentile"):
            raise ValueError(f"stretch must be 'auto', 'percentile', 'none' or a Stretch, got {how!r}")
        samples, valid = self._sample_for_stats(map_windows=map_windows)
        return percentile_stretch(samples, valid)

    def _sample_for_stats(self, grid: int = 8, size: int = 128, map_windows: Callable = map
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Read up to grid×grid windows spread evenly over the raster: stretch limits at constant cost."""
        width, height = self.info.width, self.info.height
        if width * height <= (grid * size) ** 2:
            return self.read()
        w, h = min(size, width), min(size, height)
        windows = [PixelWindow(int((width - w) * gx / max(grid - 1, 1)), int((height - h) * gy / max(grid - 1, 1)),
                               w, h) for gy in range(grid) for gx in range(grid)]
        datas, valids = [], []
        for data, valid in map_windows(self.read, windows):
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


def read_window_rgb(path: str | Path, window: dict | None = None, bands="auto") -> np.ndarray:
    """(H, W, 3) uint8 pixels of ``window`` (an indexed tile's window as stored: a dict of ``col_off``, ``row_off``,
    ``width``, ``height``; None for the whole file), a copy that outlives the open file. Errors as
    :func:`open_raster`'s."""
    from terravl.io.georef import PixelWindow

    with open_raster(path, bands=bands) as src:
        array, _ = src.read_rgb(PixelWindow(**window) if window else None)
    return array.copy()


def open_raster(path: str | Path, bands="auto", stretch: str | Stretch = "auto", trusted: bool = True
                ) -> RasterSource:
    """Open ``path`` for windowed reading. Raises :class:`RasterReadError` / :class:`BandError` naming the file,
    and, with ``trusted=False``, :class:`~terravl.errors.UnsupportedFormatError` for anything but JPEG, PNG,
    TIFF/GeoTIFF or WebP bytes."""
    return RasterSource(path, bands=bands, stretch=stretch, trusted=trusted)


def raster_info(path: str | Path, trusted: bool = True) -> RasterInfo:
    """Read a raster's header only, without decoding its pixels (``trusted=False``: as :func:`open_raster`).
    ``path`` may be an ``s3://`` URL or ``/vsis3/`` path (:mod:`terravl.io.remote`)."""
    path = to_url(path) if is_remote(path) else str(path)
    fmt = None if trusted or is_remote(path) else sniff_format(path)
    if (fmt in PILLOW_FORMATS) if fmt else (trusted and not is_remote(path)
                                            and Path(path).suffix.lower() in PILLOW_SUFFIXES):
        check_file(path)
        try:
            with open_pillow(path, (PILLOW_FORMATS[fmt],) if fmt else None) as img:
                names = tuple(_PIL_BAND_NAMES.get(n, n.lower()) for n in img.getbands())
                grey = _pillow_is_grey(img)
                used = BandChoice((1, 1, 1), "single band as grey") if grey else \
                    BandChoice((1, 2, 3), "colour interpretation red,green,blue")
                return RasterInfo(path, img.format or "PIL", img.width, img.height, len(names),
                                  "uint16" if img.mode.startswith("I;16") else "uint8", None, names, None,
                                  acquisition_date(path, {}), bands_used=used)
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
            raise RasterReadError(path, f"not a readable image ({exc.__class__.__name__}: {exc})") from exc
    with open_raster(path, bands=(1,), trusted=trusted) as src:
        info = src.info
    try:
        used = choose_bands("auto", info.count, path, info.colorinterp, info.descriptions)
    except BandError:
        used = None  # the file does not say which bands are RGB: a read needs a band profile
    return replace(info, bands_used=used)


def read_image(path: str | Path, bands="auto", stretch: str | Stretch = "auto",
               max_pixels: int | None = None, trusted: bool = True) -> GeoImage:
    """Read a whole image as 8-bit RGB with its valid mask and georeference.

    Refuses images over ``max_pixels`` (default :func:`terravl.config.max_pixels`) with
    :class:`ImageTooLargeError`: tile those with :func:`terravl.io.tiling.iter_tiles` instead. ``trusted=False``:
    as :func:`open_raster`. ``meta["bands_used"]`` says which bands are shown as RGB, and why.
    """
    limit = config.max_pixels() if max_pixels is None else max_pixels
    path = to_url(path) if is_remote(path) else str(path)
    fmt = None if trusted or is_remote(path) else sniff_format(path)
    # a Pillow file is checked on its header before decoding: against the default limit by open_raster itself,
    # so here only against a caller's own limit (one header read less for each image an index build reads)
    if max_pixels is not None and ((fmt in PILLOW_FORMATS) if fmt else (
            trusted and not is_remote(path) and Path(path).suffix.lower() in PILLOW_SUFFIXES)):
        _check_pixels(path, *_pillow_size(path, (PILLOW_FORMATS[fmt],) if fmt else None), limit=limit)
    with open_raster(path, bands=bands, stretch=stretch, trusted=trusted) as src:
        _check_pixels(path, src.info.width, src.info.height, limit=limit)
        rgb, valid = src.read_rgb()
        return GeoImage(rgb, valid, path, src.info.georef, PixelWindow(0, 0, src.info.width, src.info.height),
                        {"acquired": src.info.acquired, "crs": src.info.georef.crs_name if src.info.georef else None,
                         "bands_used": src.bands_used.to_dict()})


_PIL_BAND_NAMES = {"R": "red", "G": "green", "B": "blue", "A": "alpha", "L": "gray", "I": "gray", "F": "gray",
                   "P": "palette"}
_PIL_CONVERTED = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1")
"""Pillow modes that :func:`_pillow_to_bands` converts to RGB(A) before reading."""


def _pillow_is_grey(img: Image.Image) -> bool:
    """Whether :func:`_pillow_to_bands` reads ``img`` as one grey band (replicated to RGB)."""
    return img.mode not in _PIL_CONVERTED and img.mode != "RGBA" and len(img.getbands()) - ("A" in img.mode) == 1


def open_pillow(path: str, formats: tuple[str, ...] | None = None) -> Image.Image:
    """Open ``path`` lazily like :func:`PIL.Image.open` (header only), limited to Pillow plugins ``formats``
    (None: any), but without Pillow's process-wide bomb check: TerraVL checks its own limit on the header before
    any pixel is decoded, so the host's ``Image.MAX_IMAGE_PIXELS`` is neither changed nor relied on. Other
    TerraVL modules that open images with Pillow use this, then check :func:`terravl.config.max_pixels` on
    ``img.size`` before ``img.load()``."""
    with open(path, "rb") as fh:
        prefix = fh.read(16)
    tried: set[str] = set()
    for loader in (Image.preinit, Image.init):  # the common plugins first, then every plugin, as Image.open does
        loader()
        for fmt in formats if formats is not None else tuple(Image.ID):
            if fmt in tried or fmt not in Image.OPEN:
                continue
            tried.add(fmt)
            factory, accept = Image.OPEN[fmt]
            result = accept(prefix) if accept else True
            if isinstance(result, str) or not result:
                continue
            try:
                return factory(path, path)  # a path: the image opens (and later closes) its own file
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    raise UnidentifiedImageError(f"cannot identify image file {path!r}")


def _pillow_size(path: str, formats: tuple[str, ...] | None = None) -> tuple[int, int]:
    check_file(path)
    try:
        with open_pillow(path, formats) as img:
            return img.size
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
