"""Put two rasters of the same place (BEFORE and AFTER) on one pixel grid, window by window, for change detection.

BEFORE's grid is the reference: the comparison grid is BEFORE's pixels restricted to the overlap of the two
footprints. AFTER is read in one of two ways:

* **direct** — same CRS, same pixel size and an integer pixel offset (or no georeference, pixel for pixel): a
  window of the overlap is a window of AFTER shifted by whole pixels, read as is (no resampling, exact values);
* **resampled** — a different CRS, resolution or a sub-pixel offset: for each requested window, only the region
  of AFTER under it (plus a few pixels of margin) is read and warped onto the window with
  :func:`rasterio.warp.reproject` (bilinear for colour, nearest for the valid mask). Windows whose AFTER region
  would be large (AFTER much finer than BEFORE) are split, so memory stays bounded by the window, never the raster.

Radiometry is left alone: each file keeps its own band choice and 8-bit stretch; change methods normalise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from affine import Affine

from terravl.errors import AlignmentError, InputError
from terravl.io.georef import GeoReference, PixelWindow
from terravl.io.raster import RasterInfo, RasterSource, open_raster
from terravl.io.tiling import tile_windows as _tile_grid

log = logging.getLogger("terravl.io")

GRID_TOLERANCE = 1e-3
"""Largest drift, in BEFORE pixels over AFTER's whole extent, for AFTER to count as on BEFORE's grid (direct
reads): a thousandth of a pixel changes no value, while header round-off (29.9999999 m) would otherwise force a
needless resampling."""

MAX_SOURCE_PIXELS = 4 * 1024 * 1024
"""Most AFTER pixels read at once to resample one window: a window whose AFTER region is larger (AFTER much finer
than BEFORE) is resampled in parts, so a read never costs more than this however the resolutions compare."""


@dataclass
class _Plan:
    """How AFTER maps onto BEFORE's pixels: a whole-pixel shift (``offset``: AFTER's origin in BEFORE pixels) or,
    when ``offset`` is None, a warp between the two georeferences."""

    offset: tuple[int, int] | None
    before_crs: object = None
    after_crs: object = None
    after_box: PixelWindow | None = None
    """AFTER's bounding box on BEFORE's pixel grid (beyond BEFORE's extent too): where warping can find pixels."""


@dataclass
class AlignedPair:
    """BEFORE and AFTER on one grid: BEFORE's pixels over the overlap of the two footprints. A context manager;
    :meth:`close` closes both sources.

    ``window`` is the overlap as a window on BEFORE's pixel grid and ``georef`` the georeference of the overlap grid
    (None when neither file has one); ``width`` × ``height`` is its size. ``overlap_fraction`` is the overlap's share
    of BEFORE's area, ``resampled`` whether AFTER is warped onto BEFORE's grid, and ``warnings`` what the user should
    know about the pairing (also logged)."""

    before: RasterInfo
    after: RasterInfo
    window: PixelWindow
    georef: GeoReference | None
    width: int
    height: int
    overlap_fraction: float
    resampled: bool
    warnings: tuple[str, ...] = ()
    _before_src: RasterSource | None = field(default=None, repr=False)
    _after_src: RasterSource | None = field(default=None, repr=False)
    _plan: _Plan | None = field(default=None, repr=False)

    # -- context -------------------------------------------------------------------------------------
    def close(self) -> None:
        for src in (self._before_src, self._after_src):
            if src is not None:
                src.close()

    def __enter__(self) -> "AlignedPair":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- grid ----------------------------------------------------------------------------------------
    def tile_windows(self, size: int, overlap: int = 0) -> list[PixelWindow]:
        """Windows of ``size`` pixels (stepping ``size - overlap``) over the overlap grid, clipped to it, in
        row-major order: the same grid as :func:`terravl.io.tiling.tile_windows`."""
        return [window for _, _, window in _tile_grid(self.width, self.height, size, overlap)]

    def pixel_area_m2(self) -> float | None:
        """Area of one pixel of the overlap grid in square metres, or None without a georeference. A projected
        CRS gives |det(transform)| in its linear unit converted to metres; a geographic one the geodesic area of
        the pixel at the overlap's centre (degrees shrink with latitude)."""
        if self.georef is None:
            return None
        from pyproj import CRS

        crs = CRS.from_wkt(self.georef.crs_wkt)
        t = self.georef.transform
        if crs.is_geographic:
            cx, cy = self.width // 2, self.height // 2
            corners = [t @ (cx, cy), t @ (cx + 1, cy), t @ (cx + 1, cy + 1), t @ (cx, cy + 1)]
            lons, lats = zip(*corners)
            area, _ = crs.get_geod().polygon_area_perimeter(lons, lats)
            return abs(float(area))
        unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return abs(t.a * t.e - t.b * t.d) * (unit or 1.0) ** 2

    def to_dict(self) -> dict:
        return {"before": self.before.path, "after": self.after.path, "window": self.window.to_dict(),
                "width": self.width, "height": self.height, "crs": self.georef.crs_name if self.georef else None,
                "transform": list(self.georef.transform)[:6] if self.georef else None,
                "overlap_fraction": self.overlap_fraction, "resampled": self.resampled,
                "pixel_area_m2": self.pixel_area_m2(), "warnings": list(self.warnings),
                "bands_used": {"before": self.before.bands_used.to_dict() if self.before.bands_used else None,
                               "after": self.after.bands_used.to_dict() if self.after.bands_used else None}}

    # -- reading -------------------------------------------------------------------------------------
    def read(self, window: PixelWindow) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """BEFORE's and AFTER's 8-bit RGB (H, W, 3) and valid masks (H, W) over ``window`` of the overlap grid
        (0, 0 = the overlap's top-left pixel), on the same pixels. Pixels outside either raster are invalid and
        zero. Reads only what the window needs, whatever the rasters' sizes."""
        if window.width < 0 or window.height < 0:
            raise ValueError(f"window size must not be negative, got {window.to_dict()}")
        if self._before_src is None or self._after_src is None or self._plan is None:
            raise ValueError("this AlignedPair has no open sources (build it with align_pair)")
        on_before = PixelWindow(window.col_off + self.window.col_off, window.row_off + self.window.row_off,
                                window.width, window.height)
        before_rgb, before_valid = _read_padded(self._before_src, on_before)
        if self._plan.offset is not None:
            dx, dy = self._plan.offset
            on_after = PixelWindow(on_before.col_off - dx, on_before.row_off - dy, window.width, window.height)
            after_rgb, after_valid = _read_padded(self._after_src, on_after)
        else:
            after_rgb, after_valid = self._read_resampled(on_before)
        return before_rgb, before_valid, after_rgb, after_valid

    def _read_resampled(self, on_before: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        """AFTER warped onto ``on_before`` (a window of BEFORE's grid). Only the part inside the overlap is warped:
        Only the part inside AFTER's bounding box is warped: outside it AFTER has no pixels, and its corners may not
        even transform into AFTER's CRS."""
        rgb = np.zeros((3, on_before.height, on_before.width), dtype=np.uint8)
        valid = np.zeros((on_before.height, on_before.width), dtype=bool)
        part = _intersect(on_before, self._plan.after_box)
        if part is not None:
            x0, y0 = part.col_off - on_before.col_off, part.row_off - on_before.row_off
            self._warp_into(part, rgb[:, y0:y0 + part.height, x0:x0 + part.width],
                            valid[y0:y0 + part.height, x0:x0 + part.width])
        return rgb.transpose(1, 2, 0), valid

    def _warp_into(self, dst: PixelWindow, rgb: np.ndarray, valid: np.ndarray) -> None:
        """Warp the AFTER region under ``dst`` into the (3, h, w) ``rgb`` and (h, w) ``valid`` views, splitting
        ``dst`` in halves while its AFTER region is over :data:`MAX_SOURCE_PIXELS`."""
        from rasterio.enums import Resampling
        from rasterio.warp import reproject

        src_win, inside = self._after_region(dst)
        if src_win is None:
            return  # no AFTER pixel under this window: stays invalid
        if src_win.width * src_win.height > MAX_SOURCE_PIXELS and (dst.width > 1 or dst.height > 1):
            if dst.width >= dst.height:
                half = dst.width // 2
                parts = [PixelWindow(dst.col_off, dst.row_off, half, dst.height),
                         PixelWindow(dst.col_off + half, dst.row_off, dst.width - half, dst.height)]
            else:
                half = dst.height // 2
                parts = [PixelWindow(dst.col_off, dst.row_off, dst.width, half),
                         PixelWindow(dst.col_off, dst.row_off + half, dst.width, dst.height - half)]
            for p in parts:
                x0, y0 = p.col_off - dst.col_off, p.row_off - dst.row_off
                self._warp_into(p, rgb[:, y0:y0 + p.height, x0:x0 + p.width],
                                valid[y0:y0 + p.height, x0:x0 + p.width])
            return
        planar, src_valid = self._after_src.read_planar(src_win)
        after_t = self._after_src.info.georef.transform
        before_t = self._before_src.info.georef.transform
        src_t = after_t @ Affine.translation(src_win.col_off, src_win.row_off)
        dst_t = before_t @ Affine.translation(dst.col_off, dst.row_off)
        common = {"src_transform": src_t, "src_crs": self._plan.after_crs, "dst_transform": dst_t,
                  "dst_crs": self._plan.before_crs}
        if inside and src_valid.all():
            # the common case: every pixel of the window falls on AFTER, all valid — one plain bilinear warp
            dst3 = np.zeros((3, dst.height, dst.width), dtype=np.uint8)
            reproject(np.ascontiguousarray(planar), dst3, resampling=Resampling.bilinear, **common)
            rgb[...] = dst3
            valid[...] = True
            return
        # colour: bilinear, weighted by the valid mask as an alpha band, so nodata never bleeds into valid pixels
        src4 = np.empty((4, *planar.shape[1:]), dtype=np.uint8)
        src4[:3] = planar
        src4[3] = src_valid
        src4[3] *= 255
        dst4 = np.zeros((4, dst.height, dst.width), dtype=np.uint8)
        reproject(src4, dst4, src_alpha=4, dst_alpha=4, resampling=Resampling.bilinear, **common)
        # validity: nearest, so a pixel is valid exactly when its centre falls on a valid AFTER pixel
        mask = np.zeros((dst.height, dst.width), dtype=np.uint8)
        reproject(src4[3], mask, resampling=Resampling.nearest, init_dest_nodata=False, **common)
        ok = mask > 0
        rgb[...] = dst4[:3]
        rgb[:, ~ok] = 0
        valid[...] = ok

    def _after_region(self, dst: PixelWindow) -> tuple[PixelWindow | None, bool]:
        """The window of AFTER under ``dst`` (BEFORE pixels), with a margin for the resampling kernel, clipped to
        AFTER (the margin grows with how many AFTER pixels one BEFORE pixel spans: bilinear downsampling reads
        all of them); and whether all of ``dst`` lies inside AFTER's extent."""
        bounds = self._before_src.info.georef.window_bounds(dst)
        try:
            if self._plan.before_crs == self._plan.after_crs:
                region = bounds
            else:
                from rasterio.warp import transform_bounds

                region = transform_bounds(self._plan.before_crs, self._plan.after_crs, *bounds, densify_pts=21)
        except Exception as exc:  # noqa: BLE001 - PROJ raises several types
            raise AlignmentError(self.before.path, self.after.path,
                                 f"cannot transform window {dst.to_dict()} into {self.after.path}'s CRS "
                                 f"({_first_line(exc)})") from None
        if not all(math.isfinite(v) for v in region):
            raise AlignmentError(self.before.path, self.after.path,
                                 f"window {dst.to_dict()} has no place in {self.after.path}'s CRS")
        after = self._after_src.info
        c0, r0, c1, r1 = _pixel_box(after.georef.transform, region)
        scale = max((c1 - c0) / max(dst.width, 1), (r1 - r0) / max(dst.height, 1), 1.0)
        margin = int(math.ceil(scale)) + 2
        win = PixelWindow(int(math.floor(c0)) - margin, int(math.floor(r0)) - margin, 0, 0)
        win = PixelWindow(win.col_off, win.row_off, int(math.ceil(c1)) + margin - win.col_off,
                          int(math.ceil(r1)) + margin - win.row_off)
        # a pixel of slack: a densified footprint may cut a hair inside a curved edge of a reprojected window
        inside = c0 >= 1 and r0 >= 1 and c1 <= after.width - 1 and r1 <= after.height - 1
        return _intersect(win, PixelWindow(0, 0, after.width, after.height)), inside


def align_pair(before: str | Path, after: str | Path, min_overlap: float = 0.05, bands="auto",
               trusted: bool = True) -> AlignedPair:
    """Open BEFORE and AFTER and put them on BEFORE's grid over their overlap (see the module's docstring).

    ``bands`` applies to both files ("auto": what each file says); ``trusted=False`` reads both as uploads.
    Raises the readers' own errors (naming the file) for a missing, corrupt or unshowable file, and
    :class:`~terravl.errors.AlignmentError` (an :class:`~terravl.errors.InputError`, naming both files) when the
    two do not overlap, overlap under ``min_overlap`` of BEFORE's area, cannot be placed (no georeference and
    different sizes), or their CRSs cannot be transformed into each other.
    """
    if not 0.0 <= float(min_overlap) <= 1.0:
        raise InputError("min_overlap", f"must be between 0 and 1, got {min_overlap}")
    before_src = open_raster(before, bands=bands, trusted=trusted)
    try:
        after_src = open_raster(after, bands=bands, trusted=trusted)
    except BaseException:
        before_src.close()
        raise
    try:
        return _pair(before_src, after_src, float(min_overlap))
    except BaseException:
        before_src.close()
        after_src.close()
        raise


def _pair(before_src: RasterSource, after_src: RasterSource, min_overlap: float) -> AlignedPair:
    b, a = before_src.info, after_src.info
    notes = _band_notes(b, a)
    full = PixelWindow(0, 0, b.width, b.height)
    if b.georef is None or a.georef is None:
        if (b.width, b.height) != (a.width, a.height):
            which = "neither has a georeference" if b.georef is None and a.georef is None else \
                f"{(a if a.georef is None else b).path} has no georeference"
            raise AlignmentError(b.path, a.path, f"{which} and their sizes differ ({b.width} × {b.height} and "
                                                 f"{a.width} × {a.height}), so their pixels cannot be matched")
        if b.georef is None and a.georef is None:
            notes.append(f"neither {b.path} nor {a.path} has a georeference: treated as aligned pixel for pixel")
        else:
            missing, having = (a, b) if a.georef is None else (b, a)
            notes.append(f"{missing.path} has no georeference: treated as aligned pixel for pixel with "
                         f"{having.path} (whose georeference is used)")
        georef = b.georef or a.georef
        return _made(before_src, after_src, full, georef, 1.0, _Plan((0, 0)), notes)

    from rasterio.crs import CRS

    before_crs, after_crs = CRS.from_wkt(b.georef.crs_wkt), CRS.from_wkt(a.georef.crs_wkt)
    same_crs = before_crs == after_crs
    after_box = PixelWindow(0, 0, a.width, a.height)
    offset = _grid_offset(b.georef.transform, a.georef.transform, a.width, a.height) if same_crs else None
    if offset is not None:
        dx, dy = offset
        c0, r0, c1, r1 = float(dx), float(dy), float(dx + a.width), float(dy + a.height)
    else:
        bounds = a.georef.window_bounds(after_box)
        if not same_crs:
            from rasterio.warp import transform_bounds

            try:
                bounds = transform_bounds(after_crs, before_crs, *bounds, densify_pts=21)
            except Exception as exc:  # noqa: BLE001 - PROJ raises several types
                raise AlignmentError(b.path, a.path, f"cannot transform {a.path}'s footprint from {a.georef.crs_name} "
                                                     f"to {b.georef.crs_name} ({_first_line(exc)})") from None
            if not all(math.isfinite(v) for v in bounds):
                raise AlignmentError(b.path, a.path, f"{a.path}'s footprint has no place in {b.georef.crs_name} "
                                                     f"(transforming it from {a.georef.crs_name} failed)")
        c0, r0, c1, r1 = _pixel_box(b.georef.transform, bounds)
    ix0, iy0, ix1, iy1 = max(c0, 0.0), max(r0, 0.0), min(c1, float(b.width)), min(r1, float(b.height))
    if ix1 - ix0 <= GRID_TOLERANCE or iy1 - iy0 <= GRID_TOLERANCE:
        raise AlignmentError(b.path, a.path, f"do not overlap ({b.path} covers {_fmt_bounds(b)} and {a.path} covers "
                                             f"{_fmt_bounds(a)})")
    fraction = min(1.0, (ix1 - ix0) * (iy1 - iy0) / (b.width * b.height))
    if fraction < min_overlap:
        raise AlignmentError(b.path, a.path, f"overlap only {_pct(fraction)} of {b.path}'s area, under the minimum of "
                                             f"{_pct(min_overlap)} (min_overlap)")
    col0, row0 = int(math.floor(ix0 + GRID_TOLERANCE)), int(math.floor(iy0 + GRID_TOLERANCE))
    col1, row1 = int(math.ceil(ix1 - GRID_TOLERANCE)), int(math.ceil(iy1 - GRID_TOLERANCE))
    window = PixelWindow(col0, row0, col1 - col0, row1 - row0)
    box = PixelWindow(int(math.floor(c0 + GRID_TOLERANCE)), int(math.floor(r0 + GRID_TOLERANCE)), 0, 0)
    box = PixelWindow(box.col_off, box.row_off, int(math.ceil(c1 - GRID_TOLERANCE)) - box.col_off,
                      int(math.ceil(r1 - GRID_TOLERANCE)) - box.row_off)
    plan = _Plan(offset, before_crs, after_crs, box)
    if offset is None:
        why = "CRS" if not same_crs else "pixel grid (resolution, rotation or a sub-pixel offset)"
        log.info("%s: resampled onto %s's grid (different %s)", a.path, b.path, why)
    return _made(before_src, after_src, window, b.georef.for_window(window), fraction, plan, notes)


def _made(before_src: RasterSource, after_src: RasterSource, window: PixelWindow, georef: GeoReference | None,
          fraction: float, plan: _Plan, notes: list[str]) -> AlignedPair:
    for note in notes:
        log.warning("%s", note)
    return AlignedPair(before_src.info, after_src.info, window, georef, window.width, window.height, fraction,
                       plan.offset is None, tuple(notes), before_src, after_src, plan)


def _band_notes(b: RasterInfo, a: RasterInfo) -> list[str]:
    """Warnings about files that differ in what they hold (both already resolve to RGB, or opening failed)."""
    notes = []
    if b.count != a.count:
        notes.append(f"{b.path} has {b.count} band(s) and {a.path} has {a.count}: showing bands "
                     f"{_bands(b)} of {b.path} and {_bands(a)} of {a.path} as red, green, blue")
    if b.dtype != a.dtype:
        notes.append(f"{b.path} is {b.dtype} and {a.path} is {a.dtype}: each is stretched to 8 bits on its own")
    return notes


def _bands(info: RasterInfo) -> str:
    used = info.bands_used
    return f"{','.join(map(str, used.bands))} ({used.reason})" if used else "?"


def _grid_offset(before_t: Affine, after_t: Affine, width: int, height: int) -> tuple[int, int] | None:
    """AFTER's origin in whole BEFORE pixels when AFTER lies on BEFORE's grid (same pixel size and orientation,
    integer shift, to :data:`GRID_TOLERANCE` over AFTER's extent); else None."""
    m = ~before_t @ after_t  # AFTER pixel → BEFORE pixel
    drift = max(abs(m.a - 1) * width, abs(m.b) * height, abs(m.d) * width, abs(m.e - 1) * height)
    dx, dy = round(m.c), round(m.f)
    if drift > GRID_TOLERANCE or abs(m.c - dx) > GRID_TOLERANCE or abs(m.f - dy) > GRID_TOLERANCE:
        return None
    return int(dx), int(dy)


def _pixel_box(transform: Affine, bounds: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """(col0, row0, col1, row1): the pixel-space box of CRS ``bounds`` under ``transform`` (its corners' extent)."""
    minx, miny, maxx, maxy = bounds
    inv = ~transform
    cols, rows = zip(*(inv @ xy for xy in ((minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy))))
    return min(cols), min(rows), max(cols), max(rows)


def _intersect(win: PixelWindow, box: PixelWindow) -> PixelWindow | None:
    c0, r0 = max(win.col_off, box.col_off), max(win.row_off, box.row_off)
    c1 = min(win.col_off + win.width, box.col_off + box.width)
    r1 = min(win.row_off + win.height, box.row_off + box.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return PixelWindow(c0, r0, c1 - c0, r1 - r0)


def _read_padded(src: RasterSource, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
    """RGB (H, W, 3) and a writable valid mask of ``window`` on ``src``'s pixels; the part outside the raster is
    zero and invalid. Reads only the part inside."""
    inside = _intersect(window, PixelWindow(0, 0, src.info.width, src.info.height))
    if inside == window:
        rgb, valid = src.read_rgb(window)
        return rgb, valid if valid.flags.writeable else valid.copy()
    rgb = np.zeros((3, window.height, window.width), dtype=np.uint8)
    valid = np.zeros((window.height, window.width), dtype=bool)
    if inside is not None:
        planar, part_valid = src.read_planar(inside)
        x0, y0 = inside.col_off - window.col_off, inside.row_off - window.row_off
        rgb[:, y0:y0 + inside.height, x0:x0 + inside.width] = planar
        valid[y0:y0 + inside.height, x0:x0 + inside.width] = part_valid
    return rgb.transpose(1, 2, 0), valid


def _fmt_bounds(info: RasterInfo) -> str:
    box = info.georef.window_bounds(PixelWindow(0, 0, info.width, info.height))
    return f"[{', '.join(f'{v:.10g}' for v in box)}] in {info.georef.crs_name}"


def _pct(value: float) -> str:
    pct = value * 100
    return f"{pct:.2g}%" if pct < 1 else f"{pct:.1f}%"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
