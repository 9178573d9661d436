"""Raster I/O: open PNG/JPEG/GeoTIFF into 8-bit RGB with georeference, and tile rasters of any size."""

from terravl.io.align import AlignedPair, align_pair
from terravl.io.bands import BAND_PROFILES, Stretch
from terravl.io.georef import GeoReference, PixelWindow
from terravl.io.raster import (MIN_VALID_FRACTION, GeoImage, RasterInfo, RasterSource, open_raster, raster_info,
                               read_image, read_window_rgb)
from terravl.io.tiling import MAX_TILE_SIZE, Tile, TilingResult, iter_tiles, tile_windows, write_tiles

__all__ = ["AlignedPair", "BAND_PROFILES", "MAX_TILE_SIZE", "MIN_VALID_FRACTION", "GeoImage", "GeoReference",
           "PixelWindow", "RasterInfo", "RasterSource", "Stretch", "Tile", "TilingResult", "align_pair", "iter_tiles",
           "open_raster", "raster_info", "read_image", "read_window_rgb", "tile_windows", "write_tiles"]
