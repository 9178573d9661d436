"""Memory bounded by design: a tile costs a tile (never the image or chunk it was cut from), and images or tiles
with no valid pixels say so (``valid_fraction`` against ``MIN_VALID_FRACTION``)."""

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from fakedata import write_geotiff
from terravl.io import MIN_VALID_FRACTION, iter_tiles, open_raster, read_image
from terravl.io.georef import PixelWindow


def write_photo(path, width=1000, height=1000):
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def owned_bytes(array: np.ndarray) -> int:
    """Bytes of the buffer that keeps ``array`` alive (its own, or its base's)."""
    return array.nbytes if array.base is None else array.base.nbytes


@pytest.mark.parametrize("name", ["photo.png", "photo.jpg", "photo.tif"])
def test_held_tiles_cost_tiles_not_images(tmp_path, name):
    if name.endswith(".tif"):
        data = np.random.default_rng(5).integers(0, 256, (3, 1000, 1000), dtype=np.uint8)
        path = write_geotiff(tmp_path / name, 1000, 1000, data=data)
    else:
        path = write_photo(tmp_path / name)
    tracemalloc.start()
    try:
        tiles = list(iter_tiles(path, size=32))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(tiles) == 32 * 32
    tile_bytes = 32 * 32 * 3
    for tile in tiles:
        assert tile.array.base is None or tile.array.base.nbytes <= tile.array.nbytes * 2
        assert owned_bytes(tile.array) == tile_bytes and owned_bytes(tile.valid) <= 32 * 32
    buffers = {id(t.array.base if t.array.base is not None else t.array): owned_bytes(t.array) for t in tiles}
    assert sum(buffers.values()) == len(tiles) * tile_bytes
    # what stays allocated while the tiles are held: the tiles (and their masks and objects), not a 3 MB image
    # per chunk as before (that was > 700 MB for this 1000 × 1000 image)
    assert held < 2 * len(tiles) * (tile_bytes + 32 * 32) + 1_500_000


def test_pillow_windows_copy_only_the_window(tmp_path):
    with open_raster(write_photo(tmp_path / "p.png", 300, 200)) as src:
        data, valid = src.read(PixelWindow(10, 20, 40, 30))
        assert data.shape == (3, 30, 40) and owned_bytes(data) == data.nbytes
        rgb, _ = src.read_rgb(PixelWindow(0, 0, 50, 50))
        assert owned_bytes(rgb) == rgb.nbytes


def test_valid_fraction_of_images_and_tiles(tmp_path):
    empty = write_geotiff(tmp_path / "empty.tif", 40, 40, nodata=0, data=np.zeros((3, 40, 40), np.uint8))
    img = read_image(empty)
    assert img.valid_fraction == 0.0 < MIN_VALID_FRACTION
    assert all(t.valid_fraction == 0.0 for t in iter_tiles(empty, size=32))
    nan = np.full((3, 20, 20), np.nan, np.float32)
    assert read_image(write_geotiff(tmp_path / "nan.tif", 20, 20, dtype="float32", data=nan)).valid_fraction == 0
    full = write_geotiff(tmp_path / "full.tif", 33, 33)
    tiles = list(iter_tiles(full, size=32))
    assert read_image(full).valid_fraction == 1.0
    # an edge tile with one real column: its padding does not count, its real pixels are all valid
    assert tiles[1].window.width == 1 and tiles[1].valid_fraction == 1.0 and tiles[3].valid_fraction == 1.0
    assert 0 < MIN_VALID_FRACTION < 0.1
