"""Change over time, end to end: `terravl change` / `terravl.tasks.change` on real and synthetic pairs, the files
it writes, the truthfulness of composed captions and answers, time series, and bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from terravl.cli.main import main
from terravl.io.georef import PixelWindow
from terravl.results import ChangeResult
from terravl.tasks import ask_change, change, change_series
from terravl.tasks.change_regions import Region, feature_collection
from terravl.tasks.change_text import answer_change_question, area_text, compose_caption, percent

UTM = "EPSG:32633"


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth random 'terrain' (not flat: CVA's normalisation needs variance), uint8 RGB."""
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 160, size=(h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _write(path, rgb: np.ndarray, transform=Affine(2.0, 0, 500000, 0, -2.0, 4000000), crs=UTM, nodata=None):
    profile = {"driver": "GTiff", "width": rgb.shape[1], "height": rgb.shape[0], "count": rgb.shape[2],
               "dtype": "uint8", "transform": transform, "nodata": nodata}
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    return path


@pytest.fixture()
def square_pair(tmp_path):
    """A 256² scene and the same scene with a bright 48² block appearing in its bottom-left part, slightly
    brighter overall (illumination is not change)."""
    before = _texture(256, 256, 0)
    after = np.clip(before.astype(np.int16) + 8, 0, 255).astype(np.uint8)
    after[180:228, 20:68] = (250, 245, 240)
    return _write(tmp_path / "before_20200101.tif", before), _write(tmp_path / "after_20210101.tif", after)


def test_square_found_where_and_as_large_as_it_is(square_pair, tmp_path):
    out = tmp_path / "out"
    result = change(*square_pair, out, method="cva", describe=False)
    assert result.changed and result.region_count >= 1
    top = result.regions["features"][0]["properties"]
    assert top["position"] == "bottom-left"
    assert abs(top["pixels"] - 48 * 48) < 0.35 * 48 * 48
    assert result.changed_area_m2 == pytest.approx(result.changed_pixels * 4.0)
    assert result.before_date == "2020-01-01" and result.after_date == "2021-01-01"
    # the files say the same as the result, on the before image's grid
    with rasterio.open(out / "mask.tif") as m, rasterio.open(square_pair[0]) as b:
        mask = m.read(1)
        assert m.crs == b.crs and m.transform == b.transform
    assert int((mask == 1).sum()) == result.changed_pixels
    assert int((mask != 255).sum()) == result.valid_pixels
    with rasterio.open(out / "change.tif") as c:
        prob = c.read(1)
    assert np.array_equal(prob > 0.5, mask == 1)
    assert prob[200, 40] > 0.5 and prob[60, 200] < 0.5
    regions = json.loads((out / "regions.geojson").read_text())
    assert regions["type"] == "FeatureCollection" and len(regions["features"]) == len(result.regions["features"])
    lon, lat = regions["features"][0]["geometry"]["coordinates"][0][0]
    assert 14 < lon < 16 and 35 < lat < 37  # UTM 33N at 500 km E, 4,000 km N → WGS84
    assert Image.open(out / "preview.png").size == (3 * 256 + 8, 256)
    assert json.loads((out / "change.json").read_text())["changed_pixels"] == result.changed_pixels


def test_no_change_on_identical_dates(square_pair):
    result = change(square_pair[0], square_pair[0], method="cva", describe=False)
    assert not result.changed and result.region_count == 0 and result.regions["features"] == []
    assert compose_caption(result).startswith("No changed region was found")


def test_naip_pair_cli_json_and_files(samples, tmp_path):
    out = tmp_path / "naip"
    before, after = samples / "naip_20090818.tif", samples / "naip_20200831.tif"
    assert main(["change", str(before), str(after), "--out", str(out), "--method", "cva", "--format", "json"]) == 0
    result = json.loads((out / "change.json").read_text())
    assert result["grid"]["crs"] == "EPSG:26914" and result["grid"]["overlap_fraction"] > 0.99
    assert result["grid"]["pixel_area_m2"] == pytest.approx(25.0)
    assert result["before_caption"] and result["after_caption"]  # each date's own caption
    classes = [f["properties"]["class_before"] for f in result["regions"]["features"][:5]]
    assert all(classes)
    for name in ("change.tif", "mask.tif", "regions.geojson", "preview.png"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("*.part")) and not list(out.glob(".terravl-change-*"))


def test_geojson_format_prints_regions(square_pair, capsys):
    assert main(["change", *map(str, square_pair), "--method", "cva", "--no-describe", "--format", "geojson"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["type"] == "FeatureCollection" and printed["features"]


def test_large_scene_scores_through_a_temporary_file(square_pair, monkeypatch, tmp_path):
    """Scenes over IN_MEMORY_PIXELS keep their scores on disk between the passes: the same answer."""
    import importlib

    change_module = importlib.import_module("terravl.tasks.change")  # the module: the package exports the function

    in_memory = change_module.change(*square_pair, method="cva", describe=False)
    monkeypatch.setattr(change_module, "IN_MEMORY_PIXELS", 1000)
    on_disk = change_module.change(*square_pair, tmp_path / "o", method="cva", describe=False)
    assert on_disk.changed_pixels == in_memory.changed_pixels and on_disk.threshold == in_memory.threshold
    assert not list((tmp_path / "o").glob(".terravl-change-*"))  # the temporary scores are gone


# --- truthfulness of what is said --------------------------------------------------------------------------------

def _fake_result(n_regions: int, seed: int, georef: bool = True) -> ChangeResult:
    rng = np.random.default_rng(seed)
    classes = ["bare land", "dense residential", "forest", "farmland", "parking"]
    positions = ["top-left", "top", "top-right", "left", "central", "right", "bottom-left", "bottom", "bottom-right"]
    valid = 1_000_000
    pixels = sorted(rng.integers(20, 50_000, size=n_regions).tolist(), reverse=True)
    regions = [Region(i + 1, p, p / valid, p * 0.25 if georef else None, PixelWindow(0, 0, 10, 10), (5.0, 5.0),
                      positions[rng.integers(9)], {"type": "Polygon", "coordinates": []},
                      classes[rng.integers(5)], classes[rng.integers(5)]) for i, p in enumerate(pixels)]
    changed = sum(pixels) + int(rng.integers(0, 500))
    return ChangeResult(before="a.tif", after="b.tif", method="cva", threshold=0.5, changed=bool(regions),
                        changed_fraction=changed / valid, changed_pixels=changed, valid_pixels=valid,
                        changed_area_m2=changed * 0.25 if georef else None, region_count=n_regions,
                        regions=feature_collection(regions, None, {}), caption="", caption_source="composed",
                        before_caption="an area of bare land.", after_caption="many buildings.", grid={})


@pytest.mark.parametrize("seed", range(12))
def test_composed_caption_states_only_the_results_facts(seed):
    result = _fake_result(n_regions=seed % 4, seed=seed, georef=seed % 3 != 0)
    caption = compose_caption(result)
    regions = [f["properties"] for f in result.regions["features"]]
    assert 1 <= caption.count(".") <= 3 + caption.count(",") and len(caption) < 400
    shares = re.findall(r"([\d.]+) % of the scene", caption)
    assert shares == [percent(result.changed_fraction)]
    assert float(shares[0]) == pytest.approx(100 * result.changed_fraction, abs=0.051)
    if not regions:
        assert "No changed region" in caption
        return
    assert area_text(result.changed_area_m2, result.changed_pixels) in caption
    assert re.search(rf"\b{result.region_count} regions?\b", caption)
    stated = re.findall(r"in the ([a-z-]+) part", caption)
    assert stated[0] == regions[0]["position"]
    assert all(p in [r["position"] for r in regions[:2]] for p in stated)
    top = regions[0]
    if top["class_before"] != top["class_after"]:
        assert f"{top['class_after'].capitalize()} appeared" in caption and f"replacing {top['class_before']}" in caption
    else:
        assert f"({top['class_after']} on both dates)" in caption
    for number in re.findall(r"\d[\d,.]*", caption):  # every number is one of the result's
        assert number.rstrip(".") in {percent(result.changed_fraction), str(result.region_count),
                                      area_text(result.changed_area_m2, result.changed_pixels).split()[0]}


@pytest.mark.parametrize("question, expect", [
    ("How many new regions are there?", lambda r: f"{r.region_count} changed region"),
    ("how much area changed?", lambda r: f"About {percent(r.changed_fraction)} % of the scene changed"),
    ("Where did it change?", lambda r: f"In the {r.regions['features'][0]['properties']['position']}"),
    ("What was there before?", lambda r: f"was {r.regions['features'][0]['properties']['class_before']}"),
    ("What has changed?", lambda r: r.caption),
    ("Has anything changed?", lambda r: "Yes. "),
])
def test_questions_about_the_change_are_answered_from_the_result(question, expect):
    result = _fake_result(3, seed=5)
    result = result.model_copy(update={"caption": compose_caption(result)})
    answer = answer_change_question(question, result)
    assert answer is not None and expect(result) in answer


@pytest.mark.parametrize("question", ["Were any new roads built?", "Was the bridge demolished?",
                                      "Is there a new swimming pool?", "Did the lake disappear?"])
def test_questions_about_a_particular_object_are_not_answered_from_the_mask(question):
    """The mask says where pixels changed, not whether a bridge was demolished: such questions go to VQA."""
    result = _fake_result(3, seed=2)
    assert answer_change_question(question, result) is None


def test_what_was_there_before_without_classes_does_not_deny_the_regions():
    result = _fake_result(3, seed=4)
    unnamed = {**result.regions, "features": [{**f, "properties": {**f["properties"], "class_before": None,
                                                                     "class_after": None}}
                                              for f in result.regions["features"]]}
    answer = answer_change_question("What was there before?", result.model_copy(update={"regions": unnamed}))
    assert "3 changed regions found" in answer and "No changed region" not in answer
    assert answer_change_question("Has anything changed since before?", result).startswith("Yes. ")


def test_regions_of_a_large_scene_keep_thin_changes_and_exact_sizes(tmp_path, monkeypatch):
    """Above REGION_SIDE regions are traced on cells of several pixels: a 1-px-wide line of change is kept (a
    nearest-neighbour subsample would miss it) and its size is its exact pixel count."""
    import importlib

    change_module = importlib.import_module("terravl.tasks.change")
    before = _texture(256, 256, 7)
    after = before.copy()
    after[101, 30:230] = (255, 255, 255)  # a 200 × 1 px line
    a, b = _write(tmp_path / "a.tif", before), _write(tmp_path / "b.tif", after)
    monkeypatch.setattr(change_module, "REGION_SIDE", 64)  # cells of 4 × 4 pixels
    result = change_module.change(a, b, tmp_path / "o", method="cva", describe=False, min_region_pixels=50)
    assert result.region_count == 1
    top = result.regions["features"][0]["properties"]
    with rasterio.open(tmp_path / "o" / "mask.tif") as m:
        assert top["pixels"] == int((m.read(1) == 1).sum()) == result.changed_pixels


def test_a_new_run_removes_the_previous_runs_outputs(square_pair, tmp_path):
    out = tmp_path / "o"
    change(*square_pair, out, method="cva", describe=False)
    (out / "preview.png").write_bytes(b"old")
    with pytest.raises(Exception):
        change(square_pair[0], tmp_path / "missing.tif", out, method="cva", describe=False)
    assert (out / "preview.png").read_bytes() == b"old"  # refused before anything was touched
    change(square_pair[0], square_pair[0], out, method="cva", describe=False)
    assert (out / "preview.png").read_bytes() != b"old"


def test_an_overlap_too_narrow_to_compare_names_both(tmp_path, capsys):
    a = _write(tmp_path / "a.tif", _texture(256, 256, 1))
    b = _write(tmp_path / "b.tif", _texture(256, 256, 2), transform=Affine(2.0, 0, 500000 + 2 * 246, 0, -2.0, 4000000))
    assert main(["change", str(a), str(b), "--method", "cva", "--no-describe", "--min-overlap", "0"]) == 2
    assert "before and after: their overlap is only 10 × 256 pixels" in capsys.readouterr().err


def test_a_question_beyond_the_change_goes_to_the_vqa_model(square_pair):
    answer = ask_change(*square_pair, "what kind of area is this?", method="cva", describe=False)
    assert answer.based_on == "VQA model on each date"
    assert answer.answer.startswith("before: ") and "; after: " in answer.answer
    measured = ask_change(*square_pair, "has anything changed?", method="cva", describe=False)
    assert measured.based_on == "measured change" and measured.answer.startswith("Yes.")


def test_ask_before_after_cli(square_pair, capsys):
    args = ["ask", "--before", str(square_pair[0]), "--after", str(square_pair[1]), "where is the change?",
            "--method", "cva", "--format", "json"]
    assert main(args) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["answer"] == "In the bottom-left part." or answer["answer"].startswith("In the bottom-left")
    assert main(["ask", "--before", str(square_pair[0]), "how much?"]) == 2  # --after missing


# --- time series ---------------------------------------------------------------------------------------------------

def test_series_orders_by_year_and_writes_a_timeline(shared_data, tmp_path):
    folder = shared_data / "opengeos_timeseries_geotiff" / "landsat_pucallpa"
    rasters = [str(folder / f"{year}.tif") for year in (2010, 1990, 2000)]  # given out of order
    out = tmp_path / "series"
    result = change_series(rasters, out, method="cva", describe=False)
    assert [r["date"] for r in result.rasters] == ["1990", "2000", "2010"]
    assert [(e["before_date"], e["after_date"]) for e in result.timeline] == [("1990", "2000"), ("2000", "2010")]
    assert all(0 < e["changed_fraction"] < 1 and e["changed_area_m2"] > 0 for e in result.timeline)
    assert json.loads((out / "timeline.json").read_text())["timeline"] == result.timeline
    assert Image.open(out / "timeline.png").format == "PNG"
    assert len(list(out.glob("0*_*__*/regions.geojson"))) == 2


def test_series_cli_orders_by_the_dates_in_names(square_pair, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["change", "--series", str(square_pair[1]), str(square_pair[0]), "--method", "cva", "--no-describe",
            "--out", str(out), "--format", "json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["date"] for r in result["rasters"]] == ["2020-01-01", "2021-01-01"]
    assert result["timeline"][0]["region_count"] >= 1 and (out / "timeline.png").is_file()


def test_series_goes_on_past_an_unreadable_raster(square_pair, tmp_path):
    bad = tmp_path / "broken.tif"  # no date: the series keeps the order given
    bad.write_bytes(b"II*\x00 not a tiff")
    result = change_series([str(square_pair[0]), str(bad), str(square_pair[1])], method="cva", describe=False)
    errors = [e for e in result.timeline if "error" in e]
    assert len(result.timeline) == 2 and len(errors) == 2 and all("broken" in e["before"] + e["after"] for e in errors)
    assert any("no acquisition date" in w for w in result.warnings)


def test_series_cli_needs_two_rasters(square_pair):
    assert main(["change", "--series", str(square_pair[0])]) == 2
    assert main(["change", str(square_pair[0])]) == 2  # a pair needs two


# --- bad input -----------------------------------------------------------------------------------------------------

def test_pairs_that_do_not_overlap_are_refused(tmp_path, capsys):
    a = _write(tmp_path / "a.tif", _texture(64, 64, 1))
    b = _write(tmp_path / "b.tif", _texture(64, 64, 2), transform=Affine(2.0, 0, 600000, 0, -2.0, 4000000))
    assert main(["change", str(a), str(b), "--method", "cva", "--no-describe"]) == 2
    assert "overlap" in capsys.readouterr().err


def test_tiny_overlap_is_refused(tmp_path, capsys):
    a = _write(tmp_path / "a.tif", _texture(64, 64, 1))
    b = _write(tmp_path / "b.tif", _texture(64, 64, 2), transform=Affine(2.0, 0, 500000 + 2 * 62, 0, -2.0, 4000000))
    assert main(["change", str(a), str(b), "--method", "cva", "--no-describe"]) == 2
    assert "overlap" in capsys.readouterr().err


def test_different_band_counts_compare_as_rgb_with_a_warning(tmp_path, capsys):
    rgb = _texture(64, 64, 3)
    a = _write(tmp_path / "a.tif", np.dstack([rgb, rgb[..., :1]]))  # 4 bands
    b = _write(tmp_path / "b.tif", rgb)
    assert main(["change", str(a), str(b), "--method", "cva", "--no-describe", "--format", "json"]) == 0
    assert "band" in capsys.readouterr().err


def test_without_georeference_equal_sizes_are_treated_as_aligned(tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(_texture(64, 64, 4)).save(a)
    Image.fromarray(_texture(64, 64, 4)).save(b)
    assert main(["change", str(a), str(b), "--method", "cva", "--no-describe", "--format", "json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["changed_area_m2"] is None and result["grid"]["crs"] is None and "warning" in captured.err
    Image.fromarray(_texture(32, 64, 4)).save(b)
    assert main(["change", str(a), str(b), "--method", "cva", "--no-describe"]) == 2


def test_all_nodata_overlap_is_a_clear_error(tmp_path, capsys):
    a = _write(tmp_path / "a.tif", np.zeros((64, 64, 3), np.uint8), nodata=0)
    b = _write(tmp_path / "b.tif", _texture(64, 64, 5))
    assert main(["change", str(a), str(b), "--method", "cva", "--no-describe"]) == 2
    err = capsys.readouterr().err
    assert "valid" in err and "Traceback" not in err


def test_a_huge_sparse_raster_is_refused_before_reading(tmp_path, capsys):
    big = tmp_path / "big.tif"
    with rasterio.open(big, "w", driver="GTiff", width=100_000, height=100_000, count=3, dtype="uint8", crs=UTM,
                       transform=Affine(1.0, 0, 500000, 0, -1.0, 4000000), tiled=True, compress="deflate",
                       sparse_ok=True, nodata=0):
        pass
    assert main(["change", str(big), str(big), "--method", "cva", "--no-describe"]) == 2
    err = capsys.readouterr().err
    assert "10,000,000,000 pixels" in err and "--max-pixels" in err


def test_missing_and_corrupt_files_name_the_file(tmp_path, square_pair, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    assert main(["change", str(bad), str(square_pair[1]), "--method", "cva", "--no-describe"]) == 2
    assert "bad.tif" in capsys.readouterr().err
    assert main(["change", str(tmp_path / "nope.tif"), str(square_pair[1]), "--method", "cva"]) == 2
    assert "nope.tif" in capsys.readouterr().err
