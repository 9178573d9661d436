import numpy as np
import pytest

from fakedata import truncate, write_geotiff, write_image, write_png_bomb
from terravl.errors import BandError, ImageTooLargeError, RasterReadError
from terravl.io import open_raster, raster_info, read_image
from terravl.io.bands import Stretch, percentile_stretch, resolve_bands, to_uint8


def test_uint8_rgb_geotiff_keeps_pixels_and_georeference(tmp_path):
    data = np.random.default_rng(1).integers(1, 255, (3, 20, 30), dtype=np.uint8)
    path = write_geotiff(tmp_path / "a.tif", 30, 20, data=data)
    img = read_image(path)
    assert img.array.shape == (20, 30, 3) and img.array.dtype == np.uint8
    np.testing.assert_array_equal(img.array, np.moveaxis(data, 0, -1))
    assert img.valid.all()
    assert img.georef.crs_name == "EPSG:32618"
    ring = img.footprint()["coordinates"][0]
    assert len(ring) == 5 and ring[0] == ring[-1]
    lons = [p[0] for p in ring]
    assert all(-78 < lon < -74 for lon in lons)  # UTM 18N, easting 300 km: west of the central meridian -75


def test_16bit_four_band_is_stretched_per_band(tmp_path):
    rng = np.random.default_rng(2)
    data = np.stack([rng.integers(100, 200, (40, 40)), rng.integers(1000, 3000, (40, 40)),
                     rng.integers(0, 60000, (40, 40)), rng.integers(0, 10, (40, 40))]).astype(np.uint16)
    img = read_image(write_geotiff(tmp_path / "b.tif", 40, 40, count=4, dtype="uint16", data=data))
    for band in range(3):
        channel = img.array[..., band]
        assert channel.min() == 0 and channel.max() == 255  # 2-98 % stretch saturates both tails
        assert 100 < channel.mean() < 155


def test_float_nan_and_nodata_are_masked(tmp_path):
    data = np.full((3, 10, 10), 5.0, dtype=np.float32)
    data[:, 0, 0] = np.nan
    data[:, 1, 1] = -9999
    data[0, 2, 2] = np.nan  # a NaN in one band only is invalid too
    data[:, 5:, :] = 10.0
    img = read_image(write_geotiff(tmp_path / "f.tif", 10, 10, dtype="float32", data=data, nodata=-9999))
    assert not img.valid[0, 0] and not img.valid[1, 1] and not img.valid[2, 2]
    assert img.valid.sum() == 97
    assert (img.array[~img.valid] == 0).all()
    assert img.array[9, 9, 0] > img.array[3, 3, 0]


def test_grayscale_is_replicated_to_three_channels(tmp_path):
    img = read_image(write_geotiff(tmp_path / "g.tif", 12, 8, count=1))
    assert img.array.shape == (8, 12, 3)
    assert (img.array[..., 0] == img.array[..., 2]).all()


def test_band_profiles_and_wrong_band_counts(tmp_path):
    assert resolve_bands("sentinel2", 13, "x") == (4, 3, 2)
    assert resolve_bands((7,), 13, "x") == (7, 7, 7)
    assert resolve_bands("auto", 4, "x", ("blue", "green", "red", "undefined")) == (3, 2, 1)
    path = write_geotiff(tmp_path / "five.tif", 8, 8, count=5)
    with pytest.raises(BandError, match="five.tif.*5 bands"):
        read_image(path)
    with pytest.raises(BandError, match="s2.tif.*needs bands \\[4, 3, 2\\].*3 band"):
        read_image(write_geotiff(tmp_path / "s2.tif", 8, 8, count=3), bands="sentinel2")
    img = read_image(path, bands=(5, 4, 3))
    assert img.array.shape == (8, 8, 3)
    with pytest.raises(BandError, match="unknown band profile"):
        read_image(path, bands="nope")


def test_png_jpeg_and_alpha(tmp_path):
    rgb = read_image(write_image(tmp_path / "a.png", 20, 10))
    assert rgb.array.shape == (10, 20, 3) and rgb.georef is None and rgb.footprint() is None
    gray = read_image(write_image(tmp_path / "g.jpg", 20, 10, mode="L"))
    assert gray.array.shape == (10, 20, 3)
    rgba = read_image(write_image(tmp_path / "a4.png", 20, 10, mode="RGBA"))
    assert not rgba.valid[:5].any() and rgba.valid[5:].all()


@pytest.mark.parametrize("maker", ["jpg", "png", "tif"])
def test_truncated_and_corrupt_files_raise_typed_errors_naming_the_file(tmp_path, maker):
    if maker == "tif":
        path = write_geotiff(tmp_path / "t.tif", 400, 400, count=3)
    else:
        path = write_image(tmp_path / f"t.{maker}", 300, 300)
    truncate(path, 0.4)
    with pytest.raises(RasterReadError, match=f"t.{maker}"):
        read_image(path)
    garbage = tmp_path / f"garbage.{maker}"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(RasterReadError, match=f"garbage.{maker}"):
        read_image(garbage)
    with pytest.raises(RasterReadError, match="no such file"):
        read_image(tmp_path / f"missing.{maker}")


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = write_png_bomb(tmp_path / "bomb.png")
    with pytest.raises(ImageTooLargeError, match="bomb.png.*10,000,000,000 pixels"):
        read_image(bomb)
    with pytest.raises(ImageTooLargeError, match="bomb.png.*10,000,000,000 pixels"):
        read_image(bomb, trusted=False)  # an upload: the format sniffed, the same header check
    # a caller's own, smaller limit is checked on the header too, before any pixel is decoded
    small = write_image(tmp_path / "ok.png", 100, 100)
    from PIL import ImageFile

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real_load(self))
    with pytest.raises(ImageTooLargeError, match="ok.png.*10,000 pixels"):
        read_image(small, max_pixels=5_000)
    assert not decoded
    assert read_image(small, max_pixels=10_000).array.shape == (100, 100, 3) and decoded
    monkeypatch.undo()
    monkeypatch.setenv("TERRAVL_MAX_PIXELS", "100")
    with pytest.raises(ImageTooLargeError, match="small.tif"):
        read_image(write_geotiff(tmp_path / "small.tif", 20, 20))


def test_acquisition_date_from_tag_and_filename(tmp_path):
    tagged = write_geotiff(tmp_path / "x.tif", 8, 8, tags={"TIFFTAG_DATETIME": "2021:06:30 10:00:00"})
    assert raster_info(tagged).acquired == "2021-06-30"
    named = write_geotiff(tmp_path / "S2A_20190412_T18.tif", 8, 8)
    assert raster_info(named).acquired == "2019-04-12"
    assert raster_info(write_geotiff(tmp_path / "plain_99999999.tif", 8, 8)).acquired is None


def test_stretch_helpers():
    data = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    stretch = percentile_stretch(data, None, (0, 100))
    assert stretch.low == (0.0,) and stretch.high == (99.0,)
    out = to_uint8(data, stretch)  # planar (bands, H, W)
    assert out.shape == (1, 10, 10) and out[0, 0, 0] == 0 and out[0, 9, 9] == 255
    ident = to_uint8(np.full((3, 2, 2), 7, np.uint8), Stretch.none())
    assert (ident == 7).all()


def test_real_samples_open_with_their_georeference(samples):
    info = raster_info(samples / "landsat7_rgb.tif")
    assert (info.width, info.height, info.count) == (791, 718, 3)
    assert info.georef.crs_name == "EPSG:32618"
    naip = raster_info(samples / "naip_20090818.tif")
    assert naip.count == 4 and naip.acquired == "2009-08-18"
    lon, lat = naip.footprint()["coordinates"][0][0]
    assert -99.3 < lon < -99.0 and 46.9 < lat < 47.1  # central North Dakota, per the sample's SOURCE.md
    with open_raster(samples / "landsat7_rgb.tif") as src:
        _, valid = src.read()
        assert 0.5 < valid.mean() < 0.9  # the scene's nodata collar is masked


def test_histogram_percentiles_are_numpys_to_the_bit():
    """integer_percentiles reads percentiles off a histogram; it must give np.percentile's float64 values exactly
    (both sides of its interpolation formula, single values, constant data, the extremes)."""
    from terravl.io.bands import _integer_percentiles as integer_percentiles

    rng = np.random.default_rng(11)
    for case in range(1500):
        dtype = (np.uint8, np.uint16)[case % 2]
        top = int(rng.integers(1, np.iinfo(dtype).max + 1))
        n = int(rng.integers(1, 3000)) if case % 7 else int(rng.integers(1, 200_000))
        values = rng.integers(0, top, n, endpoint=True).astype(dtype)
        if case % 5 == 0:
            values = np.minimum(rng.gamma(2.0, top / 6, n), top).astype(dtype)
        if case % 11 == 0:
            values[:] = values[0]
        percentiles = ((2, 98), (0, 100), (50, 50), tuple(rng.uniform(0, 100, 3)))[case % 4]
        want = np.percentile(values, percentiles)
        got = integer_percentiles(values, percentiles)
        assert got.dtype == want.dtype == np.float64
        assert got.tobytes() == want.tobytes(), (case, n, percentiles, got, want)
    # a case where numpy's second form (b − d·(1 − γ), for γ ≥ 0.5) differs from a + d·γ in the last bit
    values = np.full(7034, 16997, np.uint16)
    values[:141] = 12653  # the 2nd percentile sits at 140.66, between the 141st and 142nd values
    want = np.percentile(values, (2, 98))
    assert want[0] != 12653 + (16997 - 12653) * (7033 * 0.02 - 140)
    assert integer_percentiles(values, (2, 98)).tobytes() == want.tobytes()
    for bad in ((-1, 50), (2, 101), (float("nan"), 50)):
        with pytest.raises(ValueError):
            integer_percentiles(values, bad)
    with pytest.raises(ValueError):
        integer_percentiles(values[:0], (2, 98))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_unsigned_percentiles_equal_the_float64_ones_exactly(dtype):
    """8- and 16-bit data skip the float64 copy when the stretch limits are computed; the limits must not move."""
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    for case in range(20):
        shape = (3, int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        data = np.minimum(rng.gamma(2.0, top / 8, shape), top).astype(dtype)
        valid = rng.random(shape[1:]) < 0.8 if case % 2 else None
        for percentiles in ((2, 98), (0, 100), (13.7, 61.3)):
            got = percentile_stretch(data, valid, percentiles)
            floats = data.astype(np.float64)
            keep = np.ones(shape[1:], bool) if valid is None else valid
            want = [np.percentile(floats[b][keep], percentiles) if keep.any() else (0.0, 1.0) for b in range(3)]
            assert got.low == tuple(float(w[0]) for w in want)
            assert got.high == tuple(float(w[1]) if w[1] > w[0] else float(w[0]) + 1.0 for w in want)
    # over a million samples (the even subsample) and nothing valid (the fallback limits)
    big = rng.integers(0, top, (2, 1100, 1000), endpoint=True).astype(dtype)
    got = percentile_stretch(big, None)
    for b in range(2):
        floats = big[b].astype(np.float64).reshape(-1)
        lo, hi = np.percentile(floats[:: floats.size // 1_000_000], (2, 98))
        assert (got.low[b], got.high[b]) == (float(lo), float(hi))
    nothing = percentile_stretch(big[:, :4, :4], np.zeros((4, 4), bool))
    assert nothing.low == (0.0, 0.0) and nothing.high == (1.0, 1.0)
