"""Alignment of a BEFORE/AFTER pair on BEFORE's grid (change detection): direct reads on a shared grid, windowed
warping otherwise, overlap and georeference rules, band choice per file, and memory bounded by the window."""

import json
import logging
import tracemalloc

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from pyproj import Transformer
from rasterio.windows import Window

from fakedata import write_geotiff, write_image
from terravl.errors import AlignmentError, BandError, InputError, RasterReadError, UnsupportedFormatError
from terravl.io import AlignedPair, PixelWindow, align_pair, open_raster
from terravl.io.raster import RasterSource

UTM18 = "EPSG:32618"
BEFORE_T = Affine(30.0, 0, 300000.0, 0, -30.0, 4000000.0)


def world_field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth 3-band scene defined in UTM 18N metres: every raster of it, on any grid, shows the same place."""
    bands = [128 + 90 * np.sin(x / 400.0) * np.cos(y / 530.0), 128 + 90 * np.cos((x + y) / 700.0),
             128 + 90 * np.sin((x - y) / 450.0)]
    return np.clip(np.rint(np.stack(bands)), 0, 255).astype(np.uint8)


def write_field(path, transform: Affine, width: int, height: int, crs: str = UTM18, **kw):
    """The world field sampled at the pixel centres of a raster on (crs, transform)."""
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x, y = transform @ (cols, rows)
    if crs != UTM18:
        x, y = Transformer.from_crs(crs, UTM18, always_xy=True).transform(x, y)
    return write_geotiff(path, width, height, crs=crs, transform=transform, data=world_field(x, y), **kw)


def direct_rgb(path, window: PixelWindow | None = None):
    with open_raster(path) as src:
        rgb, valid = src.read_rgb(window)
        return rgb.copy(), valid.copy()


def test_same_grid_reads_directly_and_exactly(tmp_path):
    before = write_geotiff(tmp_path / "b.tif", 120, 90, seed=1)
    after = write_geotiff(tmp_path / "a.tif", 120, 90, seed=2)
    with align_pair(before, after) as pair:
        assert isinstance(pair, AlignedPair)
        assert not pair.resampled and pair.warnings == ()
        assert pair.window == PixelWindow(0, 0, 120, 90) and (pair.width, pair.height) == (120, 90)
        assert pair.overlap_fraction == 1.0
        assert pair.georef.transform == BEFORE_T and pair.georef.crs_name == UTM18
        win = PixelWindow(10, 20, 50, 40)
        b, bv, a, av = pair.read(win)
        assert b.shape == a.shape == (40, 50, 3) and b.dtype == a.dtype == np.uint8
        assert bv.shape == av.shape == (40, 50) and bv.all() and av.all()
        np.testing.assert_array_equal(b, direct_rgb(before, win)[0])
        np.testing.assert_array_equal(a, direct_rgb(after, win)[0])
        assert not np.array_equal(a, b)
        tiles = pair.tile_windows(64, overlap=8)
        assert tiles[0] == PixelWindow(0, 0, 64, 64) and tiles[1] == PixelWindow(56, 0, 64, 64)
        assert all(w.col_off + w.width <= 120 and w.row_off + w.height <= 90 for w in tiles)
        assert pair.pixel_area_m2() == pytest.approx(900.0)
        summary = json.loads(json.dumps(pair.to_dict()))
        assert summary["window"] == {"col_off": 0, "row_off": 0, "width": 120, "height": 90}
        assert summary["crs"] == UTM18 and summary["resampled"] is False and summary["pixel_area_m2"] == 900.0
        assert summary["bands_used"]["after"]["bands"] == [1, 2, 3]


def test_integer_offset_is_direct_and_matches_the_shared_content(tmp_path):
    scene = np.random.default_rng(3).integers(0, 256, (3, 100, 160), dtype=np.uint8)
    before = write_geotiff(tmp_path / "b.tif", 120, 80, data=scene[:, 0:80, 0:120])
    # AFTER starts 30 columns right and 10 rows down of BEFORE's origin
    after_t = BEFORE_T @ Affine.translation(30, 10)
    after = write_geotiff(tmp_path / "a.tif", 130, 90, transform=after_t, data=scene[:, 10:100, 30:160])
    with align_pair(before, after) as pair:
        assert not pair.resampled
        assert pair.window == PixelWindow(30, 10, 90, 70)
        assert pair.overlap_fraction == pytest.approx(90 * 70 / (120 * 80))
        assert pair.georef.transform == after_t
        b, bv, a, av = pair.read(PixelWindow(0, 0, pair.width, pair.height))
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(b, np.moveaxis(scene[:, 10:80, 30:120], 0, -1))
        assert bv.all() and av.all()
        # a window running past the overlap's bottom-right: BEFORE ends there (invalid zeros), AFTER goes on
        b, bv, a, av = pair.read(PixelWindow(80, 60, 20, 20))
        assert bv[:10, :10].all() and not bv[10:].any() and not bv[:, 10:].any() and not b[10:].any()
        assert av.all()
        np.testing.assert_array_equal(a, np.moveaxis(scene[:, 70:90, 110:130], 0, -1))


def test_different_resolution_is_resampled_close_to_before(tmp_path):
    before = write_field(tmp_path / "b.tif", BEFORE_T, 200, 150)
    after = write_field(tmp_path / "a.tif", Affine(60.0, 0, 300000.0, 0, -60.0, 4000000.0), 100, 75)
    with align_pair(before, after) as pair:
        assert pair.resampled and pair.window == PixelWindow(0, 0, 200, 150)
        assert pair.overlap_fraction == pytest.approx(1.0)
        b, bv, a, av = pair.read(PixelWindow(0, 0, 200, 150))
        assert bv.all() and av.all()
        diff = np.abs(b.astype(int) - a.astype(int))[2:-2, 2:-2]
        assert diff.mean() < 1.5 and diff.max() <= 12
        # windows read apart give the same pixels as one read of the whole (window-by-window warping is seamless)
        part = pair.read(PixelWindow(37, 41, 64, 50))[2]
        np.testing.assert_array_equal(part, a[41:91, 37:101])


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:32617"])
def test_different_crs_is_reprojected_onto_before(tmp_path, crs):
    before = write_field(tmp_path / "b.tif", BEFORE_T, 160, 120)
    with rasterio.open(before) as ds:
        left, bottom, right, top = rasterio.warp.transform_bounds(ds.crs, crs, *ds.bounds)
    size = 0.0003 if crs == "EPSG:4326" else 30.0
    width, height = int((right - left) / size) + 4, int((top - bottom) / size) + 4
    after = write_field(tmp_path / "a.tif", Affine(size, 0, left - 2 * size, 0, -size, top + 2 * size), width, height,
                        crs=crs)
    with align_pair(before, after) as pair:
        assert pair.resampled and pair.overlap_fraction == pytest.approx(1.0)
        assert pair.georef.crs_name == UTM18 and pair.window == PixelWindow(0, 0, 160, 120)
        b, bv, a, av = pair.read(PixelWindow(0, 0, 160, 120))
        assert bv.all() and av.all()  # AFTER covers BEFORE with a margin
        diff = np.abs(b.astype(int) - a.astype(int))
        assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 8


def test_rasters_that_do_not_overlap_are_refused_naming_both(tmp_path):
    before = write_geotiff(tmp_path / "b.tif", 50, 50)
    after = write_geotiff(tmp_path / "a.tif", 50, 50, transform=BEFORE_T @ Affine.translation(50, 0))  # touches
    with pytest.raises(AlignmentError) as caught:
        align_pair(before, after)
    assert isinstance(caught.value, InputError)
    message = str(caught.value)
    assert "do not overlap" in message and str(before) in message and str(after) in message
    far = write_geotiff(tmp_path / "far.tif", 50, 50, crs="EPSG:4326", transform=Affine(0.001, 0, 10, 0, -0.001, 50))
    with pytest.raises(AlignmentError, match="do not overlap"):
        align_pair(before, far)


def test_tiny_overlap_is_refused_with_the_percentage_and_minimum(tmp_path):
    before = write_geotiff(tmp_path / "b.tif", 100, 100)
    after = write_geotiff(tmp_path / "a.tif", 100, 100, transform=BEFORE_T @ Affine.translation(98, 98))
    with pytest.raises(AlignmentError) as caught:
        align_pair(before, after)
    message = str(caught.value)
    assert "0.04%" in message and "minimum of 5.0%" in message and str(after) in message
    with align_pair(before, after, min_overlap=0.0001) as pair:
        assert pair.window == PixelWindow(98, 98, 2, 2) and pair.overlap_fraction == pytest.approx(0.0004)
    with pytest.raises(InputError, match="min_overlap"):
        align_pair(before, after, min_overlap=1.5)


def test_no_georeference_pairs_pixel_for_pixel_or_refuses_sizes(tmp_path, caplog):
    before = write_image(tmp_path / "b.png", 64, 48, seed=1)
    after = write_image(tmp_path / "a.png", 64, 48, seed=2)
    with caplog.at_level(logging.WARNING, logger="terravl.io"), align_pair(before, after) as pair:
        assert pair.georef is None and pair.pixel_area_m2() is None and not pair.resampled
        assert pair.window == PixelWindow(0, 0, 64, 48) and pair.overlap_fraction == 1.0
        assert len(pair.warnings) == 1 and "treated as aligned pixel for pixel" in pair.warnings[0]
        b, _, a, av = pair.read(PixelWindow(0, 0, 64, 48))
        np.testing.assert_array_equal(a, np.asarray(Image.open(after)))
        np.testing.assert_array_equal(b, np.asarray(Image.open(before)))
        assert av.all()
    assert "treated as aligned pixel for pixel" in caplog.text
    other = write_image(tmp_path / "other.png", 64, 47)
    with pytest.raises(AlignmentError) as caught:
        align_pair(before, other)
    assert "64 × 48" in str(caught.value) and "64 × 47" in str(caught.value) and str(other) in str(caught.value)


def test_one_georeference_is_used_for_the_pair(tmp_path):
    geo = write_geotiff(tmp_path / "geo.tif", 64, 48)
    plain = write_image(tmp_path / "plain.png", 64, 48)
    for before, after in ((geo, plain), (plain, geo)):
        with align_pair(before, after) as pair:
            assert pair.georef is not None and pair.georef.transform == BEFORE_T and not pair.resampled
            assert len(pair.warnings) == 1 and f"{plain} has no georeference" in pair.warnings[0]
            assert pair.pixel_area_m2() == pytest.approx(900.0)
    with pytest.raises(AlignmentError, match="64 × 48 and 64 × 40"):
        align_pair(geo, write_image(tmp_path / "small.png", 64, 40))


def test_different_band_counts_resolve_to_rgb_with_a_warning(tmp_path):
    before = write_geotiff(tmp_path / "b4.tif", 40, 30, count=4)
    after = write_geotiff(tmp_path / "a3.tif", 40, 30, count=3)
    with align_pair(before, after) as pair:
        assert pair.before.bands_used.bands == pair.after.bands_used.bands == (1, 2, 3)
        assert len(pair.warnings) == 1
        assert "4 band(s)" in pair.warnings[0] and "has 3" in pair.warnings[0] and "1,2,3" in pair.warnings[0]
    six = write_geotiff(tmp_path / "six.tif", 40, 30, count=6)
    with pytest.raises(BandError) as caught:
        align_pair(before, six)
    assert caught.value.source == str(six)
    with align_pair(before, six, bands="sentinel2") as pair:  # bands apply to both files
        assert pair.before.bands_used.bands == pair.after.bands_used.bands == (4, 3, 2)


def test_unreadable_files_raise_the_readers_errors(tmp_path):
    good = write_geotiff(tmp_path / "good.tif", 40, 30)
    with pytest.raises(RasterReadError) as caught:
        align_pair(good, tmp_path / "missing.tif")
    assert caught.value.source == str(tmp_path / "missing.tif")
    vrt = tmp_path / "recipe.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="40" rasterYSize="30"><VRTRasterBand dataType="Byte" band="1">'
                   f'<SimpleSource><SourceFilename>{good}</SourceFilename></SimpleSource></VRTRasterBand>'
                   f'</VRTDataset>')
    with pytest.raises(UnsupportedFormatError) as caught:
        align_pair(good, vrt, trusted=False)  # uploads: only JPEG/PNG/TIFF/WebP bytes are decoded
    assert caught.value.source == str(vrt)
    with align_pair(good, good, trusted=False) as pair:
        assert pair.window == PixelWindow(0, 0, 40, 30)


def test_crs_transform_failure_is_a_clear_error(tmp_path, monkeypatch):
    before = write_geotiff(tmp_path / "b.tif", 40, 30)
    after = write_geotiff(tmp_path / "a.tif", 40, 30, crs="EPSG:4326", transform=Affine(0.001, 0, -77, 0, -0.001, 36))

    def broken(*args, **kwargs):
        raise rasterio.errors.CRSError("PROJ: no transformation")

    monkeypatch.setattr(rasterio.warp, "transform_bounds", broken)
    with pytest.raises(AlignmentError) as caught:
        align_pair(before, after)
    assert "cannot transform" in str(caught.value) and "EPSG:4326" in str(caught.value)


def test_nodata_pixels_come_back_invalid_without_bleeding(tmp_path):
    before_data = world_field(*(BEFORE_T @ np.meshgrid(np.arange(100) + 0.5, np.arange(80) + 0.5)))
    before_data[:, 10:20, 10:30] = 0
    before = write_geotiff(tmp_path / "b.tif", 100, 80, data=before_data, nodata=0)
    coarse_t = Affine(60.0, 0, 300000.0, 0, -60.0, 4000000.0)
    after_data = world_field(*(coarse_t @ np.meshgrid(np.arange(50) + 0.5, np.arange(40) + 0.5)))
    after_data[:, 20:30, 25:50] = 0  # BEFORE pixels rows 40-59, columns 50-99
    after = write_geotiff(tmp_path / "a.tif", 50, 40, transform=coarse_t, data=after_data, nodata=0)
    with align_pair(before, after) as pair:
        assert pair.resampled
        b, bv, a, av = pair.read(PixelWindow(0, 0, 100, 80))
        expected = np.ones((80, 100), bool)
        expected[10:20, 10:30] = False
        np.testing.assert_array_equal(bv, expected)
        expected_after = np.ones((80, 100), bool)
        expected_after[40:60, 50:] = False
        np.testing.assert_array_equal(av, expected_after)
        assert not a[~av].any() and not b[~bv].any()
        # valid AFTER pixels beside the hole are not darkened by it: colour is weighted by validity
        ring = np.zeros_like(av)
        ring[38:40, 50:] = True
        ring[60:62, 50:] = True
        ring[40:60, 48:50] = True
        diff = np.abs(a.astype(int) - b.astype(int))[ring]
        assert diff.mean() < 3 and diff.max() <= 15
    # the direct path (same grid) masks AFTER's nodata too
    after_same = write_geotiff(tmp_path / "a_same.tif", 100, 80, data=before_data, nodata=0)
    with align_pair(before, after_same) as pair:
        assert not pair.resampled
        np.testing.assert_array_equal(pair.read(PixelWindow(0, 0, 100, 80))[3], expected)


def test_naip_dates_align(samples):
    before, after = samples / "naip_20090818.tif", samples / "naip_20200831.tif"
    with rasterio.open(before) as ds:
        t = ds.transform
    with align_pair(before, after) as pair:
        assert (pair.before.height, pair.after.height) == (724, 723)
        assert pair.overlap_fraction == pytest.approx(1.0, abs=0.005)
        assert (pair.width, pair.height) == (934, 724) and pair.window == PixelWindow(0, 0, 934, 724)
        assert pair.resampled  # the 2020 tile is offset by 1 m (a fifth of a pixel)
        assert pair.pixel_area_m2() == pytest.approx(abs(t.a * t.e)) == pytest.approx(25.0)
        b, bv, a, av = pair.read(PixelWindow(0, 0, 934, 724))
        assert bv.all() and av[:723].all() and not av[723].any()  # AFTER's last row is 1 m short of BEFORE's
        np.testing.assert_array_equal(b, direct_rgb(before)[0])
        # BEFORE's pixel centres fall 0.2 px up and 0.2 px right of AFTER's: bilinear by hand, to rounding
        d = direct_rgb(after)[0].astype(float)
        rows = 0.8 * d[1:, :-1] + 0.2 * d[:-1, :-1]
        rows_right = 0.8 * d[1:, 1:] + 0.2 * d[:-1, 1:]
        expected = 0.8 * rows + 0.2 * rows_right
        assert np.abs(a[1:723, :-1] - expected).max() <= 0.6
    with align_pair(after, before) as pair:  # the other way round: 723 rows of BEFORE, all covered
        assert (pair.width, pair.height) == (934, 723) and pair.overlap_fraction == pytest.approx(1.0, abs=0.005)
        assert pair.read(PixelWindow(0, 0, 934, 723))[3].all()


def test_geographic_pixel_area_is_geodesic(tmp_path):
    size = 0.0001
    path = write_geotiff(tmp_path / "g.tif", 20, 20, crs="EPSG:4326", transform=Affine(size, 0, 10, 0, -size, 60.001))
    with align_pair(path, path) as pair:
        lat = np.radians(60.001 - 10.5 * size)
        approx = (6371008.8 * np.radians(size)) ** 2 * np.cos(lat)
        assert pair.pixel_area_m2() == pytest.approx(approx, rel=0.01)


def write_sparse(path, size: int, pixel: float, blocks: list[tuple[int, int]], value: int):
    """A size × size tiled GeoTIFF with only ``blocks`` (256-pixel block indexes) written: kilobytes on disk."""
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": UTM18,
               "transform": Affine(pixel, 0, 300000.0, 0, -pixel, 4020000.0), "tiled": True, "blockxsize": 256,
               "blockysize": 256, "sparse_ok": True}
    with rasterio.open(path, "w", **profile) as dst:
        for bx, by in blocks:
            dst.write(np.full((3, 256, 256), value, np.uint8), window=Window(bx * 256, by * 256, 256, 256))
    return path


def count_reads(monkeypatch) -> list[int]:
    """Patch RasterSource.read to record the pixel count of every read (what a bounded reader may ask for)."""
    reads: list[int] = []
    real_read = RasterSource.read

    def counting_read(self, window=None):
        data, valid = real_read(self, window)
        reads.append(valid.size)
        return data, valid

    monkeypatch.setattr(RasterSource, "read", counting_read)
    return reads


@pytest.mark.parametrize("kind", ["resampled", "direct"])
def test_memory_is_bounded_by_the_window_on_a_huge_sparse_raster(tmp_path, monkeypatch, kind):
    before = write_sparse(tmp_path / "b.tif", 20000, 1.0, [(40, 40), (70, 10)], 200)
    if kind == "resampled":  # 2 m pixels: the block at BEFORE's (40, 40) is AFTER's (20, 20)
        after = write_sparse(tmp_path / "a.tif", 10000, 2.0, [(20, 20)], 90)
    else:
        after = write_sparse(tmp_path / "a.tif", 20000, 1.0, [(40, 40)], 90)
    assert before.stat().st_size < 5_000_000
    reads = count_reads(monkeypatch)
    with align_pair(before, after) as pair:
        assert pair.resampled == (kind == "resampled") and (pair.width, pair.height) == (20000, 20000)
        tracemalloc.start()
        try:
            windows = [PixelWindow(40 * 256, 40 * 256, 512, 512), PixelWindow(70 * 256, 10 * 256, 512, 512),
                       PixelWindow(19_800, 19_800, 512, 512)]
            results = [pair.read(w) for w in windows]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 12_000_000  # one RGB copy of the raster would be 1.2 GB
    assert max(reads) <= 530 * 530
    b, bv, a, av = results[0]
    n = 512 if kind == "resampled" else 256  # AFTER's written block, in BEFORE pixels
    assert (b[:256, :256] == 200).all() and (b[256:] == 0).all() and bv.all() and av.all()
    assert (a[2:n - 2, 2:n - 2] == 90).all() and (a[n + 2:] == 0).all() and (a[:, n + 2:] == 0).all()
    b, bv, a, av = results[1]  # a block of BEFORE only
    assert (b[:256, :256] == 200).all() and not a.any() and av.all()
    b, bv, a, av = results[2]  # runs 312 pixels past both rasters' edge
    assert bv[:200, :200].all() and not bv[200:].any() and not av[:, 200:].any()


def test_much_finer_after_is_resampled_in_bounded_parts(tmp_path, monkeypatch):
    from terravl.io import align

    before = write_field(tmp_path / "b.tif", Affine(90.0, 0, 300000.0, 0, -90.0, 4000000.0), 60, 50)
    after = write_field(tmp_path / "a.tif", Affine(10.0, 0, 300000.0, 0, -10.0, 4000000.0), 540, 450)
    window = PixelWindow(3, 4, 50, 40)
    with align_pair(before, after) as pair:
        whole = pair.read(window)
    reads = count_reads(monkeypatch)
    monkeypatch.setattr(align, "MAX_SOURCE_PIXELS", 20_000)
    with align_pair(before, after) as pair:
        parts = pair.read(window)
    assert max(reads[1:]) <= 20_000 and len(reads) > 8  # the first read is BEFORE's window
    np.testing.assert_array_equal(parts[2], whole[2])
    np.testing.assert_array_equal(parts[3], whole[3])
    diff = np.abs(whole[0].astype(int) - whole[2].astype(int))
    assert whole[3].all() and diff.mean() < 4  # 9 × 9 AFTER pixels averaged into each BEFORE pixel
