"""Georeference of a raster or tile: CRS, affine transform, and footprint in WGS84 longitude/latitude.

Footprints are polygons through the four corners of a pixel window, transformed to EPSG:4326. Tiles that share an
edge are computed from the same pixel corners through the same transform, so their footprints share vertices
exactly and the tiles of a raster cover its footprint with no gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from affine import Affine
from pyproj import CRS, Transformer


@dataclass(frozen=True)
class PixelWindow:
    """A rectangle of pixels: column/row offset of its top-left corner and its size."""

    col_off: int
    row_off: int
    width: int
    height: int

    def to_dict(self) -> dict[str, int]:
        return {"col_off": self.col_off, "row_off": self.row_off, "width": self.width, "height": self.height}


@lru_cache(maxsize=64)
def _to_wgs84(crs_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(crs_wkt), CRS.from_epsg(4326), always_xy=True)


@dataclass(frozen=True)
class GeoReference:
    """Where a raster's pixels lie: ``crs`` (WKT), ``transform`` (GDAL-ordered affine: pixel → CRS coordinates)."""

    crs_wkt: str
    transform: Affine
    crs_name: str

    @classmethod
    def from_rasterio(cls, crs, transform: Affine) -> "GeoReference | None":
        if crs is None:
            return None
        epsg = crs.to_epsg()
        return cls(crs.to_wkt(), transform, f"EPSG:{epsg}" if epsg else crs.to_string())

    def window_bounds(self, window: PixelWindow) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of ``window`` in the raster's own CRS."""
        xs, ys = zip(*self._corners(window))
        return (min(xs), min(ys), max(xs), max(ys))

    def _corners(self, window: PixelWindow) -> list[tuple[float, float]]:
        c0, r0 = window.col_off, window.row_off
        c1, r1 = c0 + window.width, r0 + window.height
        t = self.transform
        return [t @ (c0, r0), t @ (c1, r0), t @ (c1, r1), t @ (c0, r1)]

    def footprint(self, window: PixelWindow) -> dict:
        """GeoJSON Polygon (WGS84 lon/lat, counter-clockwise exterior ring) of ``window``."""
        xs, ys = zip(*self._corners(window))
        lons, lats = _to_wgs84(self.crs_wkt).transform(xs, ys)
        ring = [[float(lo), float(la)] for lo, la in zip(lons, lats)]
        if _signed_area(ring) < 0:
            ring.reverse()
        ring.append(ring[0])
        return {"type": "Polygon", "coordinates": [ring]}

    def for_window(self, window: PixelWindow) -> "GeoReference":
        """The georeference of a sub-window (its transform starts at the window's top-left pixel)."""
        return GeoReference(self.crs_wkt, self.transform @ Affine.translation(window.col_off, window.row_off),
                            self.crs_name)


def _signed_area(ring: list[list[float]]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1]))
