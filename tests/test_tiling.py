import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import box, shape
from shapely.ops import unary_union

from fakedata import truncate, write_geotiff, write_image
from terravl.io import PixelWindow, iter_tiles, raster_info, tile_windows, write_tiles
from terravl.results import Problem


@pytest.mark.parametrize("width,height,size,overlap", [(300, 200, 64, 0), (300, 200, 64, 16), (64, 64, 64, 0),
                                                        (65, 10, 64, 8), (10, 10, 64, 0)])
def test_windows_cover_every_pixel_and_stay_inside(width, height, size, overlap):
    covered = np.zeros((height, width), dtype=int)
    for _, _, w in tile_windows(width, height, size, overlap):
        assert w.col_off + w.width <= width and w.row_off + w.height <= height
        covered[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert covered.min() >= 1
    if overlap == 0:
        assert covered.max() == 1


def test_bad_tile_parameters():
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(100, 100, 32, 32)
    with pytest.raises(ValueError, match="size"):
        tile_windows(100, 100, 0)


def test_tiles_carry_padded_pixels_and_partial_flags(tmp_path):
    data = np.random.default_rng(0).integers(1, 255, (3, 100, 150), dtype=np.uint8)
    path = write_geotiff(tmp_path / "s.tif", 150, 100, data=data)
    tiles = list(iter_tiles(path, size=64, overlap=0))
    assert len(tiles) == 3 * 2
    last = tiles[-1]
    assert last.partial and (last.window.width, last.window.height) == (150 - 128, 100 - 64)
    assert last.array.shape == (64, 64, 3)
    np.testing.assert_array_equal(last.array[:36, :22], np.moveaxis(data[:, 64:, 128:], 0, -1))
    assert not last.valid[36:].any() and not last.array[36:].any()
    assert not tiles[0].partial and tiles[0].valid.all()


@pytest.mark.parametrize("crs,transform", [
    ("EPSG:4326", Affine(0.001, 0, -74.7, 0, -0.001, -8.3)),
    ("EPSG:32618", Affine(30.0, 0, 300000.0, 0, -30.0, 4000000.0)),
])
def test_footprints_tile_the_raster_footprint_exactly(tmp_path, crs, transform):
    path = write_geotiff(tmp_path / "r.tif", 301, 203, crs=crs, transform=transform)
    result = write_tiles(path, tmp_path / "out", size=64, overlap=0)
    collection = json.loads((tmp_path / "out" / "tiles.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == result.tiles == 20
    polygons = [shape(f["geometry"]) for f in collection["features"]]
    union = unary_union(polygons)
    raster = shape(raster_info(path).footprint())
    assert sum(p.area for p in polygons) == pytest.approx(union.area, rel=1e-9)  # no overlaps
    if crs == "EPSG:4326":  # straight edges: the union is the raster's rectangle exactly
        assert union.symmetric_difference(raster).area < 1e-12 * raster.area
    else:  # in lon/lat, a UTM edge bends slightly at interior tile corners: about 1 m, a 30th of a pixel
        assert union.area == pytest.approx(raster.area, rel=1e-6)
        assert union.hausdorff_distance(raster) < 3e-5  # degrees, about 3 m
    native = unary_union([box(*f["properties"]["bounds"]) for f in collection["features"]])
    assert native.equals(box(*raster_info(path).georef.window_bounds(PixelWindow(0, 0, 301, 203))))
    props = collection["features"][-1]["properties"]
    assert props["partial"] and props["crs"] == crs and props["window"]["width"] == 301 - 256
    assert (tmp_path / "out" / props["file"]).is_file()


def test_geotiff_chips_are_georeferenced_at_their_window(tmp_path):
    path = write_geotiff(tmp_path / "r.tif", 130, 70)
    write_tiles(path, tmp_path / "out", size=64, overlap=8, fmt="tif")
    src_transform = raster_info(path).georef.transform
    with rasterio.open(tmp_path / "out" / "r_r0001_c0002.tif") as chip:
        assert chip.crs.to_epsg() == 32618
        assert chip.transform == src_transform @ Affine.translation(112, 56)
        assert chip.count == 3 and chip.width == 64


def test_batch_reports_bad_files_and_goes_on(tmp_path):
    good = write_geotiff(tmp_path / "good.tif", 70, 70)
    bad = truncate(write_geotiff(tmp_path / "bad.tif", 400, 400), 0.3)
    png = write_image(tmp_path / "plain.png", 50, 40)
    result = write_tiles([good, bad, tmp_path / "missing.tif", png], tmp_path / "out", size=32)
    assert [s["path"] for s in result.sources] == [str(good), str(png)]
    assert all(isinstance(p, Problem) for p in result.problems)
    assert {p.path for p in result.problems} == {str(bad), str(tmp_path / "missing.tif")}
    assert {p["path"] for p in result.to_dict()["problems"]} == {str(bad), str(tmp_path / "missing.tif")}
    features = json.loads((tmp_path / "out" / "tiles.geojson").read_text())["features"]
    plain = [f for f in features if f["properties"]["source"] == str(png)]
    assert len(plain) == 4 and plain[0]["geometry"] is None  # no CRS, no footprint, still tiled


def test_sixteen_bit_tiles_share_one_stretch(tmp_path):
    data = np.zeros((4, 128, 128), dtype=np.uint16)
    data[:, :, :64] = 1000
    data[:, :, 64:] = 3000
    path = write_geotiff(tmp_path / "u16.tif", 128, 128, count=4, dtype="uint16", data=data)
    left, right = [t for t in iter_tiles(path, size=64) if t.row == 0]
    assert left.array.max() < right.array.min()  # a per-tile stretch would map both to the same value


def test_workers_sample_the_stretch_as_one_thread_does(tmp_path):
    """With worker threads, the stretch's sample windows are read by the workers (faster in a fresh process):
    the same windows in the same order, so the same limits and the same tiles as one thread reading them all."""
    from terravl.io.raster import open_raster

    rng = np.random.default_rng(5)
    data = np.minimum(rng.gamma(2.0, 900.0, (3, 1300, 1100)), 65535).astype(np.uint16)  # > 1024²: windows
    path = write_geotiff(tmp_path / "u16.tif", 1100, 1300, dtype="uint16", data=data, tiled=True,
                         blockxsize=256, blockysize=256)
    with open_raster(path) as src:
        alone = src.stretch
    readers = set()

    def read(window):  # which threads read the sample windows
        readers.add(threading.current_thread().name)
        return reader(window)

    with open_raster(path) as src, ThreadPoolExecutor(2, thread_name_prefix="sampler") as pool:
        reader, src.read = src.read, read
        assert src.prepare_stretch(pool.map) == alone
        assert src.stretch == alone
    assert readers and all(name.startswith("sampler") for name in readers)
    one = list(iter_tiles(path, size=200, workers=1))
    two = list(iter_tiles(path, size=200, workers=2))
    assert len(one) == len(two) == 6 * 7
    for a, b in zip(one, two):
        assert (a.row, a.col) == (b.row, b.col)
        np.testing.assert_array_equal(a.array, b.array)


def test_tile_size_is_bounded_before_any_allocation(tmp_path, samples, capsys):
    from terravl.cli.main import main
    from terravl.errors import InputError
    from terravl.io import MAX_TILE_SIZE

    raster = samples / "landsat7_rgb.tif"
    with pytest.raises(InputError, match="^size: .*100000.*8192"):
        next(iter_tiles(raster, size=100_000))
    with pytest.raises(InputError, match="^size: "):
        write_tiles(raster, tmp_path / "out", size=MAX_TILE_SIZE + 1)
    assert not (tmp_path / "out").exists()  # refused before touching the disk
    code = main(["tiles", str(raster), "--size", "100000", "--out", str(tmp_path / "cli")])
    assert code == 2 and "--size" in capsys.readouterr().err


def test_unwritable_out_is_a_clear_error_and_claims_nothing(tmp_path, capsys):
    from terravl.cli.main import main
    from terravl.errors import OutputError

    raster = write_geotiff(tmp_path / "r.tif", 70, 70)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OutputError, match="file.txt"):
        write_tiles(raster, blocker / "out", size=32)
    out = tmp_path / "out"
    (out / "r_r0001_c0001.png").mkdir(parents=True)  # a chip that cannot be written, midway through the run
    with pytest.raises(OutputError, match="r_r0001_c0001.png.*no tiles.geojson was written"):
        write_tiles(raster, out, size=32)
    assert not (out / "tiles.geojson").exists() and not (out / "tiles.geojson.part").exists()
    code = main(["tiles", str(raster), "--size", "32", "--out", str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "file.txt" in err and "Traceback" not in err
