"""Multispectral files that say what they are: RGB from band descriptions, reported in the result and on stderr."""

import logging

import numpy as np
import pytest
import rasterio

from fakedata import write_geotiff
from terravl.errors import BandError
from terravl.io import iter_tiles, open_raster, raster_info, read_image
from terravl.io.bands import band_colour, choose_bands, resolve_bands

S2_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S2_NO_ZEROS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
LANDSAT89 = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11")


def write_described(path, descriptions, count=None, dtype="uint16", size=16):
    """A small multiband GeoTIFF whose band i holds values around 1000·i, with GDAL band descriptions."""
    count = count or len(descriptions)
    rng = np.random.default_rng(7)
    data = np.stack([rng.integers(1000 * i, 1000 * i + 500, (size, size)) for i in range(1, count + 1)])
    write_geotiff(path, size, size, count=count, dtype=dtype, data=data.astype(dtype))
    with rasterio.open(path, "r+") as ds:
        for i, description in enumerate(descriptions, start=1):
            if description is not None:
                ds.set_band_description(i, description)
    return path


@pytest.mark.parametrize("descriptions,named", [(S2_L1C, "B04,B03,B02"), (S2_NO_ZEROS, "B4,B3,B2")])
def test_sentinel2_thirteen_bands_open_as_rgb_from_descriptions(tmp_path, caplog, descriptions, named):
    path = write_described(tmp_path / "s2.tif", descriptions)
    with caplog.at_level(logging.INFO, logger="terravl.io"):
        img = read_image(path)
    assert img.meta["bands_used"] == {"bands": [4, 3, 2], "reason": f"band descriptions {named}"}
    np.testing.assert_array_equal(img.array, read_image(path, bands="sentinel2").array)  # the same pixels
    lines = [r for r in caplog.records if r.name == "terravl.io" and r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "s2.tif" in lines[0].getMessage() and "4,3,2" in lines[0].getMessage()
    assert named in lines[0].getMessage()


def test_landsat89_and_colour_names(tmp_path):
    assert raster_info(write_described(tmp_path / "l8.tif", LANDSAT89)).bands_used.bands == (4, 3, 2)
    names = ("Coastal", "Blue", "GREEN", "red", "nir", "swir1", "swir2")
    with open_raster(write_described(tmp_path / "named.tif", names)) as src:
        assert src.bands == (4, 3, 2) and src.bands_used.reason == "band descriptions red,GREEN,Blue"
        assert src.info.to_dict()["bands_used"] == {"bands": [4, 3, 2], "reason": "band descriptions red,GREEN,Blue"}
    # three uint16 bands stored blue-first: the descriptions, not the order, decide what is red
    with open_raster(write_described(tmp_path / "bgr.tif", ("B2", "B3", "B4"))) as src:
        assert src.bands == (3, 2, 1)


def test_tiles_of_a_described_file(tmp_path):
    path = write_described(tmp_path / "s2.tif", S2_L1C, size=40)
    tiles = list(iter_tiles(path, size=32))
    assert len(tiles) == 4 and tiles[0].array.shape == (32, 32, 3)


@pytest.mark.parametrize("descriptions", [
    (None,) * 13,  # nothing in the file tells
    ("nir", "swir1", "swir2", "red edge 1", "B8A", "B11", "B12", "B10", "B9", "B8", "B1", "B5", "B6"),  # no RGB
    ("red", "red", "green", "blue") + (None,) * 9,  # two bands call themselves red: ambiguous
])
def test_files_that_do_not_say_keep_the_clear_refusal(tmp_path, descriptions):
    path = write_described(tmp_path / "mystery.tif", descriptions)
    with pytest.raises(BandError, match="mystery.tif.*13 bands") as caught:
        read_image(path)
    assert "give a band profile (bands=" in caught.value.message and "--bands" not in caught.value.message
    assert raster_info(path).bands_used is None and raster_info(path).to_dict()["bands_used"] is None
    assert read_image(path, bands="sentinel2").meta["bands_used"] == {"bands": [4, 3, 2],
                                                                      "reason": "band profile sentinel2"}


def test_colour_tags_win_and_existing_defaults_keep_their_bands(tmp_path, samples):
    info = raster_info(samples / "landsat7_rgb.tif")
    assert info.bands_used.bands == (1, 2, 3) and info.bands_used.reason.startswith("colour interpretation")
    four = raster_info(write_geotiff(tmp_path / "four.tif", 8, 8, count=4))
    assert four.bands_used.bands == (1, 2, 3)
    assert resolve_bands("auto", 4, "x", ("blue", "green", "red", "undefined"), ("B4", "B3", "B2", "B8")) == (3, 2, 1)
    assert choose_bands((5, 4, 3), 13, "x").reason == "bands given"


@pytest.mark.parametrize("description,colour", [
    ("B04", "red"), ("B4", "red"), ("b4", "red"), ("B04_10m", "red"), ("SR_B4", "red"), ("B4 (665 nm)", "red"),
    ("Red", "red"), ("RED", "red"), ("B03", "green"), ("green", "green"), ("B2", "blue"), ("Blue (B2)", "blue"),
    ("nir", None), ("NIR", None), ("Red Edge 1", None), ("B8A", None), ("B8", None), ("B11", None), ("B12", None),
    ("B1", None), ("coastal blue", None), (None, None), ("", None),
])
def test_band_colour(description, colour):
    assert band_colour(description) == colour


def test_generic_band_names_and_infrared_numbers_are_not_read_as_colours():
    from terravl.io.bands import band_colour, choose_bands

    naip_like = choose_bands("auto", 4, "x.tif", ("gray", "undefined", "undefined", "undefined"),
                             ("Band 1", "Band 2", "Band 3", "Band 4"))
    assert naip_like.bands == (1, 2, 3)  # as before: GDAL's generic names say nothing about colour
    assert choose_bands("auto", 4, "x.tif", (), ("band_1", "band_2", "band_3", "band_4")).bands == (1, 2, 3)
    assert band_colour("B4 (NIR)") is None and band_colour("B04") == "red" and band_colour("SR_B3") == "green"


@pytest.mark.parametrize("low,high", [(0.0, 65535.0), (1834.6, 4711.2), (100.0, 101.0), (-50.5, 300.25),
                                      (60000.0, 70000.0)])
def test_16_bit_stretch_matches_the_lookup_table_it_replaced_at_every_level(low, high):
    """16-bit data is scaled arithmetically now (faster than a 65,536-entry table); every level must map to the
    byte the table gave (float32, clip, round half to even)."""
    from terravl.io.bands import Stretch, to_uint8

    levels = np.arange(65536, dtype=np.float32)
    table = np.clip((levels - low) * (255.0 / (high - low)), 0, 255).round().astype(np.uint8)
    data = np.stack([np.arange(65536, dtype=np.uint16).reshape(256, 256)] * 3)
    out = to_uint8(data, Stretch((low,) * 3, (high,) * 3))
    assert out.dtype == np.uint8 and out.shape == data.shape
    assert np.array_equal(out[1].ravel(), table)
    widened = to_uint8(data, Stretch((np.float64(low),) * 3, (np.float64(high),) * 3))  # numpy limits: same bytes
    assert np.array_equal(widened, out)
    valid = np.ones((256, 256), dtype=bool)
    valid[0, :10] = False
    masked = to_uint8(data, Stretch((low,) * 3, (high,) * 3), valid)
    assert (masked[:, 0, :10] == 0).all() and np.array_equal(masked[2].ravel()[10:], table[10:])
