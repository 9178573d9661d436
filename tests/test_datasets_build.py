"""Issue 21: caption sets from rasters + OpenStreetMap/vector files, and instruction data from caption sets.

The vector files are written here, drawn over the shipped NAIP sample's footprint (EPSG:26914, lon −99.185…−99.124,
lat 47.004…47.037): a lake, a road and fields in OSM XML (also converted to PBF), a golf course, a parking lot and
a self-intersecting meadow in GeoJSON, a pond in GeoJSON with a legacy EPSG:3857 ``crs`` member, a Shapefile with no
.prj. The one real OSM PBF used is the sample that pyogrio ships as test data (ODbL, near Welwyn Garden City, UK).
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import shapely

from terravl.datasets import open_dataset
from terravl.datasets.builder import build_captions, build_instructions
from terravl.datasets.builder.instructions import caption_counts, consensus_caption
from terravl.datasets.builder.tags import load_whitelist
from terravl.datasets.builder.text import TileObject, compose
from terravl.datasets.builder.vectors import VectorSource
from terravl.errors import InputError

NAIP = Path(__file__).resolve().parents[1] / "src" / "terravl" / "samples" / "naip_20200831.tif"
W, E, S, N = -99.1855, -99.1241, 47.0041, 47.0366
LAKE = (-99.178, 47.012, -99.160, 47.026)


def _run(capsys, *args):
    from terravl.cli.main import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class _Osm:
    """A tiny OSM XML writer."""

    def __init__(self):
        self.nodes, self.ways, self.next = [], [], 0

    def node(self, lon, lat, tags=None) -> int:
        self.next += 1
        self.nodes.append(f'<node id="{self.next}" version="1" lat="{lat}" lon="{lon}">{_tags(tags)}</node>')
        return self.next

    def way(self, wid, coords, tags, closed=False) -> None:
        ids = [self.node(lo, la) for lo, la in coords]
        refs = "".join(f'<nd ref="{i}"/>' for i in ids + ids[:1] * closed)
        self.ways.append(f'<way id="{wid}" version="1">{refs}{_tags(tags)}</way>')

    def write(self, path: Path) -> Path:
        path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6" generator="terravl-test">\n'
                        + "\n".join(self.nodes + self.ways) + "\n</osm>\n")
        return path


def _tags(tags) -> str:
    return "".join(f'<tag k="{k}" v="{v}"/>' for k, v in (tags or {}).items())


def _box(w, s, e, n):
    return [(w, s), (e, s), (e, n), (w, n)]


def write_osm(path: Path) -> Path:
    osm = _Osm()
    osm.way(1, _box(*LAKE), {"natural": "water", "water": "lake", "name": "Test Lake"}, closed=True)
    osm.way(2, [(W - 0.01, 47.030), (-99.15, 47.031), (E + 0.01, 47.030)], {"highway": "primary", "name": "Main"})
    osm.way(3, _box(-99.150, S - 0.01, E + 0.01, 47.028), {"landuse": "farmland"}, closed=True)
    osm.way(4, [(-99.183, 47.006), (-99.181, 47.006), (-99.181, 47.007)], {"amenity": "school", "name": "x"})
    osm.node(-99.17, 47.008, {"building": "yes"})          # a building mapped as a point: not drawn
    return osm.write(path)


def _polygon(w, s, e, n):
    return {"type": "Polygon", "coordinates": [[list(p) for p in _box(w, s, e, n) + [(w, s)]]]}


def write_geojson(path: Path) -> Path:
    bowtie = [[-99.140, 47.005], [-99.128, 47.015], [-99.140, 47.015], [-99.128, 47.005], [-99.140, 47.005]]
    features = [
        {"type": "Feature", "properties": {"leisure": "golf_course"}, "geometry": _polygon(-99.185, 47.027, -99.165,
                                                                                          47.036)},
        {"type": "Feature", "properties": {"amenity": "parking"}, "geometry": _polygon(-99.168, 47.028, -99.162,
                                                                                      47.032)},
        {"type": "Feature", "properties": {"landuse": "meadow"}, "geometry": {"type": "Polygon",
                                                                             "coordinates": [bowtie]}},
        {"type": "Feature", "properties": {"name": "nothing visible"}, "geometry": _polygon(-99.15, 47.01, -99.14,
                                                                                           47.02)},
        {"type": "Feature", "properties": {"landuse": "forest"}, "geometry": {"type": "Polygon", "coordinates": [
            [[-99.14, 47.02], [-99.13, 47.02], [-99.12, 47.02], [-99.14, 47.02]]]}},   # collapsed to a line
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def write_geojson_3857(path: Path) -> Path:
    from pyproj import Transformer

    t = Transformer.from_crs(4326, 3857, always_xy=True)
    ring = [list(t.transform(lo, la)) for lo, la in _box(-99.158, 47.006, -99.152, 47.010)]
    doc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
           "features": [{"type": "Feature", "properties": {"natural": "water", "water": "pond"},
                         "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]}}]}
    path.write_text(json.dumps(doc))
    return path


def write_shapefile_without_crs(path: Path) -> Path:
    """Farmland in the raster's own CRS (EPSG:26914 metres), written with no .prj."""
    import pyogrio.raw

    geom = shapely.box(486000, 5205700, 487000, 5206500)
    pyogrio.raw.write(path, np.array([shapely.to_wkb(geom)], dtype=object), [np.array(["farmland"], dtype=object)],
                      fields=["landuse"], geometry_type="Polygon", crs=None, driver="ESRI Shapefile")
    path.with_suffix(".prj").unlink(missing_ok=True)
    return path


def _tile_of(lon: float, lat: float, size: int) -> tuple[int, int]:
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, 26914, always_xy=True).transform(lon, lat)
    return int((5209246.0 - y) / 5 // size), int((x - 485899.0) / 5 // size)


@pytest.fixture()
def vectors(tmp_path):
    folder = tmp_path / "vectors"
    folder.mkdir()
    return {"osm": write_osm(folder / "region.osm"), "geojson": write_geojson(folder / "parks.geojson"),
            "merc": write_geojson_3857(folder / "pond_3857.geojson")}


@pytest.fixture()
def built(tmp_path, vectors):
    out = tmp_path / "caps"
    result = build_captions([NAIP], list(vectors.values()), out, tile_size=128)
    return out, result


def test_captions_come_from_the_features_each_tile_shows(built, vectors):
    out, result = built
    doc = json.loads((out / "captions.json").read_text())
    by_name = {i["filename"]: i for i in doc["images"]}
    by_cell = {(r, c): by_name.get(f"naip_20200831_r{r:04d}_c{c:04d}.png") for r in range(6) for c in range(8)}
    lake = by_cell[_tile_of((LAKE[0] + LAKE[2]) / 2, (LAKE[1] + LAKE[3]) / 2, 128)]
    assert lake["class"] == "lake" and lake["coverage"]["lake"] > 0.9
    assert any("lake" in s["raw"] for s in lake["sentences"]) and 1 <= len(lake["sentences"]) <= 3
    fields = by_cell[_tile_of(-99.13, 47.015, 128)]
    assert "farmland" in fields["objects"] and fields["sentences"][0]["raw"].startswith("an aerial image of")
    pond = by_cell[_tile_of(-99.155, 47.008, 128)]
    assert "pond" in pond["objects"]                          # from the EPSG:3857 file, reprojected
    road = [i for i in doc["images"] if "road" in i["objects"]]
    assert max(i["coverage"]["road"] for i in road) > 0.9      # a line weighs its length over the tile's side
    assert {int(i["filename"][-8:-4]) for i in road} == set(range(8))  # the road crosses the whole raster
    assert all(i["class"] == i["objects"][0] for i in doc["images"])
    assert {i["split"] for i in doc["images"]} == {"train", "val", "test"}
    assert all((out / "images" / i["filename"]).is_file() for i in doc["images"])
    # the card counts what was skipped and why
    card = json.loads((out / "card.json").read_text())
    stats = {Path(v["path"]).name: v for v in card["vectors"]}
    assert stats["region.osm"]["skipped"] == {"no whitelisted tag": 1,
                                              "whitelisted tag on a geometry it is not drawn as": 1}
    assert stats["parks.geojson"]["repaired"] == 1
    assert stats["parks.geojson"]["skipped"] == {"no whitelisted tag": 1,
                                                 "invalid geometry that could not be repaired": 1}
    assert stats["pond_3857.geojson"]["crs"] == "EPSG:3857"
    assert stats["pond_3857.geojson"]["reprojected_to"] == ["EPSG:26914"]
    assert card["skipped_tiles"]["no vector feature in the tile"] >= 1
    assert card["tiles_seen"] == 48 == card["images"] + sum(card["skipped_tiles"].values())
    assert card["tags"]["lake"]["tiles"] >= 4 and card["tags"]["lake"]["features"] == card["tags"]["lake"]["tiles"]
    assert len(card["rasters"][0]["sha256"]) == 64 and all(len(v["sha256"]) == 64 for v in card["vectors"])
    assert any("ODbL" in text for text in card["licence"])
    assert "Self-intersection" in " ".join(p["error"] for p in card["problems"])
    assert "could not be repaired" in " ".join(p["error"] for p in card["problems"])
    readme = (out / "README.md").read_text()
    assert "ODbL" in readme and "no whitelisted tag" in readme
    tiles = json.loads((out / "tiles.geojson").read_text())
    assert len(tiles["features"]) == result.images and tiles["features"][0]["geometry"]["type"] == "Polygon"


def test_a_pbf_extract_reads_like_its_xml(tmp_path, vectors):
    import osmium

    pbf = tmp_path / "region.osm.pbf"
    with osmium.SimpleWriter(str(pbf)) as writer:
        for obj in osmium.FileProcessor(str(vectors["osm"])):
            writer.add(obj)
    a = build_captions([NAIP], [vectors["osm"]], tmp_path / "xml", tile_size=128)
    b = build_captions([NAIP], [pbf], tmp_path / "pbf", tile_size=128)
    assert a.tags == b.tags and a.images == b.images and a.tags["lake"]["tiles"] >= 4


def test_a_real_pbf_extract_that_pyogrio_ships(tmp_path):
    """The only real OSM extract installed (pyogrio's test data, 290 nodes near Welwyn Garden City): on a raster
    laid over it, its roads and residential areas become captions; it does not overlap NAIP (reported, the build
    goes on with the other file)."""
    import pyogrio
    import rasterio
    from rasterio.transform import from_bounds

    pbf = Path(pyogrio.__file__).parent / "tests" / "fixtures" / "sample.osm.pbf"
    assert pbf.is_file()
    raster = tmp_path / "welwyn.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8", crs="EPSG:4326",
                       transform=from_bounds(-0.2416, 51.7600, -0.2163, 51.7743, 256, 256)) as dst:
        dst.write(np.random.default_rng(0).integers(1, 255, (3, 256, 256), dtype=np.uint8))
    result = build_captions([raster], [pbf], tmp_path / "real", tile_size=64, min_coverage=0.02)
    assert result.images >= 8 and {"road", "residential area"} <= set(result.tags)
    assert result.vectors[0]["format"].startswith("OpenStreetMap") and result.vectors[0]["whitelisted"] > 20
    # its ways are not sorted by id, so multipolygons cannot be assembled: said, and read again without them
    assert any("not sorted by type and id" in p.error for p in result.problems)
    mixed = build_captions([NAIP], [pbf, write_osm(tmp_path / "r.osm")], tmp_path / "mixed", tile_size=256)
    assert mixed.images > 0
    assert any(p.path == str(pbf) and "do not overlap" in p.error for p in mixed.problems)
    with pytest.raises(InputError, match="no tile got a caption"):
        build_captions([NAIP], [pbf], tmp_path / "none", tile_size=256)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_bad_inputs_are_reported_and_the_build_goes_on(tmp_path, vectors, capsys):
    shp = write_shapefile_without_crs(tmp_path / "nocrs.shp")
    plain = tmp_path / "plain.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(plain)
    broken = tmp_path / "broken.geojson"
    broken.write_text("{not json")
    garbage = tmp_path / "garbage.osm.pbf"
    garbage.write_bytes(bytes(range(256)) * 4)
    code, out, err = _run(capsys, "datasets", "build", "captions", "--rasters", NAIP, "--rasters", plain,
                          "--vectors", vectors["osm"], "--vectors", shp, "--vectors", broken,
                          "--vectors", tmp_path / "missing.osm", "--vectors", garbage, "--tile-size", 128, "--out", tmp_path / "o",
                          "--format", "json")
    assert code == 0, err
    summary = json.loads(out)
    errors = {Path(p["path"]).name: p["error"] for p in summary["problems"]}
    assert "has no CRS" in errors["nocrs.shp"] and "--vector-crs" in errors["nocrs.shp"]
    assert "no CRS or georeference" in errors["plain.png"]
    assert "GDAL" in errors["broken.geojson"] and "no such vector file" in errors["missing.osm"]
    assert "cannot read as OpenStreetMap data (PBF error" in errors["garbage.osm.pbf"]
    assert summary["images"] > 0 and "farmland" in summary["tags"]
    assert all(line.startswith(("problem:", "reading", "writing")) for line in err.splitlines())
    # told the CRS, the Shapefile is read (and its farmland, in the raster's own CRS, needs no reprojection)
    told = build_captions([NAIP], [shp], tmp_path / "told", tile_size=128, vector_crs="EPSG:26914")
    assert told.tags["farmland"]["tiles"] >= 2 and told.vectors[0]["reprojected_to"] == []
    assert any("read as EPSG:26914" in p.error for p in told.problems)
    # nothing usable at all: exit 2 with the reasons, no traceback
    code, out, err = _run(capsys, "datasets", "build", "captions", "--rasters", plain, "--vectors", vectors["osm"],
                          "--out", tmp_path / "x")
    assert code == 2 and "no usable raster" in err and "Traceback" not in err
    with pytest.raises(InputError, match="together"):
        build_captions([NAIP], [vectors["osm"]], tmp_path / "y", min_score=0.2)
    with pytest.raises(InputError, match="not a CRS"):
        build_captions([NAIP], [vectors["osm"]], tmp_path / "y", vector_crs="EPSG:nope")


def test_huge_extracts_stream_without_holding_features(tmp_path):
    """8,000 ways (1.5 MB of XML) stream through at a Python-side peak far below what holding them would cost."""
    osm = _Osm()
    for i in range(8_000):
        lon, lat = -99.0 + (i % 200) * 0.001, 46.0 + (i // 200) * 0.001
        osm.way(10 + i, [(lon, lat), (lon + 0.0005, lat)], {"highway": "residential", "name": f"street {i}"})
    path = osm.write(tmp_path / "big.osm")
    source = VectorSource(path, load_whitelist())
    tracemalloc.start()
    n = sum(1 for _ in source.features())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 8_000 == source.stats.whitelisted
    assert peak < 1_000_000, peak


def test_a_custom_whitelist(tmp_path, vectors):
    rules = tmp_path / "tags.yaml"
    rules.write_text("rules:\n  - {match: 'landuse=farmland', noun: cropland, mass: true}\n")
    result = build_captions([NAIP], [vectors["osm"]], tmp_path / "c", tile_size=128, whitelist=rules)
    assert set(result.tags) == {"cropland"}
    assert result.vectors[0]["whitelisted"] == 1 and "unread" in result.vectors[0]["note"]
    rules.write_text("rules:\n  - {match: 'landuse', noun: x}\n")
    with pytest.raises(InputError, match="not key=value"):
        build_captions([NAIP], [vectors["osm"]], tmp_path / "d", whitelist=rules)


def test_caption_wording():
    lake = TileObject("lake", "lakes", False, "area", 0.7, 1)
    road = TileObject("road", "roads", False, "line", 1.0, 1)
    farm = TileObject("farmland", "farmlands", True, "area", 0.2, 1)
    houses = TileObject("building", "buildings", False, "area", 0.1, 3)
    caps = compose([lake, road, farm], seed=1)
    assert caps[0] == "an aerial image of a lake with a road and farmland"
    assert caps[1].startswith("a lake covering most of the image") and caps[2] == "a road runs through a lake"
    assert compose([houses], 0)[0] == "an aerial image of three buildings"
    assert compose([], 0) == []


def test_a_built_set_trains_clip_end_to_end_and_the_filter_drops_pairs(tmp_path, built, capsys):
    out, _ = built
    tiny = ["--set", "widths=[8, 16]", "--set", "depths=[1, 1]", "--set", "embed_dim=32", "--set",
            "cache_resolution=40", "--set", "warmup_epochs=0", "--set", "progress=false", "--set", "memory=false"]
    code, _, err = _run(capsys, "train", "clip", "--data", out / "captions.json", "--out", tmp_path / "run",
                        "--device", "cpu", "--epochs", 2, "--batch-size", 8, "--resolution", 32, "--threads", 1,
                        *tiny, "--format", "json")
    assert code == 0, err
    training = json.loads((tmp_path / "run" / "model" / "training.json").read_text())
    assert training["data"]["train_images"] > 0
    from terravl.train.caption import load_samples

    assert load_samples(out, "train", vqa=False)                 # the caption trainer reads it too
    model = str(tmp_path / "run" / "model")
    everything = build_captions([NAIP], [out.parent / "vectors" / "region.osm"], tmp_path / "all", tile_size=128,
                                filter_model=model, min_score=-2.0)
    f = everything.filter
    assert f["captions_dropped"] == 0 and f["captions_scored"] == everything.captions
    middle = f["score_quantiles"]["0.5"]
    half = build_captions([NAIP], [out.parent / "vectors" / "region.osm"], tmp_path / "half", tile_size=128,
                          filter_model=model, min_score=middle)
    assert 0 < half.filter["captions_dropped"] < f["captions_scored"]
    assert half.captions == f["captions_scored"] - half.filter["captions_dropped"]
    kept = json.loads((tmp_path / "half" / "captions.json").read_text())["images"]
    assert all(min(i["scores"]) >= middle for i in kept)
    assert len(list((tmp_path / "half" / "images").iterdir())) == len(kept)
    assert "Image–text filter" in (tmp_path / "half" / "README.md").read_text()


def test_inspect_understands_both_outputs(tmp_path, built, capsys):
    out, result = built
    code, stdout, err = _run(capsys, "datasets", "inspect", out, "--format", "json")
    assert code in (0, None), err
    summary = json.loads(stdout)
    assert summary["format"] == "terravl-captions" and summary["images"] == result.images
    assert summary["objects (tiles)"]["lake"] == result.tags["lake"]["tiles"] and summary["problems"] == []
    instr = build_instructions(out, tmp_path / "llava")
    code, stdout, err = _run(capsys, "datasets", "inspect", tmp_path / "llava", "--format", "json")
    summary = json.loads(stdout)
    assert summary["format"] == "llava-instructions" and summary["conversations"] == instr.conversations
    assert summary["images_found"] == instr.images and summary["problems"] == []
    # a built set's counts give counting turns; its labels are not exhaustive, so no "no" answers come from them
    convs = json.loads((tmp_path / "llava" / "llava_train.json").read_text())
    lake = next(c for c in convs if c["class"] == "lake")
    answers = dict(zip(lake["turn_types"], [t["value"] for t in lake["conversations"][1::2]]))
    assert answers["count"] == "1" and "lake" in answers["objects"].lower()
    assert "There is no" not in answers["detail"]
    turns = zip(lake["turn_types"], lake["conversations"][0::2], lake["conversations"][1::2])
    presence = [(q["value"], a["value"]) for t, q, a in turns if t == "presence"]
    assert presence and not any(a == "No" and "lake" in q for q, a in presence)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "a", "image": "x.png", "conversations": [{"from": "human", "value": "hi"}]},
                               {"id": "b", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                            {"from": "gpt", "value": "a"}]}]))
    reader = open_dataset(bad)
    assert reader.format == "llava-instructions" and len(reader) == 1 and "conversations" in reader.problems[0].error


def _ucm_slice(shared_data: Path, tmp_path: Path) -> Path:
    doc = json.loads((shared_data / "ucm_captions" / "dataset_ucm_captions.json").read_text())
    picked = [i for i in doc["images"] if i["filename"] in ("airplane04.jpg", "tenniscourt05.jpg")]
    picked += [i for k, i in enumerate(doc["images"]) if k % 45 == 0]
    for item in picked:
        item["filepath"] = str(shared_data / item["filepath"])
    path = tmp_path / "ucm_slice.json"
    path.write_text(json.dumps({"dataset": "ucm_slice", "images": picked}))
    return path


def test_instructions_from_a_slice_of_ucm_captions(tmp_path, shared_data, capsys):
    data = _ucm_slice(shared_data, tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("IMAGE\\LABEL,tanks,cars\ntenniscourt05,0,7\n")
    code, out, err = _run(capsys, "datasets", "build", "instructions", "--dataset", data, "--labels", labels,
                          "--grounding", 3, "--out", tmp_path / "ins", "--format", "json")
    assert code == 0, err
    summary = json.loads(out)
    n_images = len(json.loads(data.read_text())["images"])
    assert summary["images"] == n_images and summary["conversations"] == n_images + 3 * len(summary["splits"])
    assert {"caption", "detail", "scene", "presence", "class", "objects", "count", "grounding"} <= \
        set(summary["turn_types"])
    convs = [c for split in summary["splits"] for c in json.loads((tmp_path / "ins" / f"llava_{split}.json")
                                                                    .read_text())]
    for conv in convs:
        turns = conv["conversations"]
        assert turns[0]["value"].startswith("<image>\n") and len(turns) == 2 * len(conv["turn_types"])
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert (tmp_path / "ins" / conv["image"]).is_file()
    by_id = {c["id"].split("-")[0]: c for c in convs}
    plane = dict(zip(by_id["airplane04"]["turn_types"], [t["value"] for t in by_id["airplane04"]["conversations"][1::2]]))
    assert plane["count"] == "2" and plane["scene"] == "Airplane"      # "two airplanes are stopped at the airport"
    tennis = by_id["tenniscourt05"]
    counted = [tennis["conversations"][2 * i:2 * i + 2] for i, t in enumerate(tennis["turn_types"]) if t == "count"]
    assert ["How many cars are there in this image?", "7"] in [[q["value"], a["value"]] for q, a in counted]
    grounding = [c for c in convs if "grounding" in c["turn_types"]]
    for conv in grounding:
        answer = conv["conversations"][1]["value"]
        if answer.startswith("["):
            box = json.loads(answer)
            assert len(box) == 4 and 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
    card = json.loads((tmp_path / "ins" / "card.json").read_text())
    assert card["card"] == "terravl-instructions" and card["grounding"]["status"].startswith("from terravl")


def test_labels_files(tmp_path):
    from terravl.datasets.builder.instructions import read_labels

    good = tmp_path / "l.json"
    good.write_text(json.dumps({"a.jpg": ["cars", "trees"], "b": {"ship": 3, "sea": 0}}))
    assert read_labels(good) == {"a.jpg": {"cars": 1, "trees": 1}, "b": {"ship": 3}}
    bad = tmp_path / "bad.csv"
    bad.write_text("IMAGE,cars\nx,many\n")
    with pytest.raises(InputError, match="bad.csv:2"):
        read_labels(bad)


def test_caption_helpers():
    assert consensus_caption(("a b c", "a b c d", "x y z")) == "a b c"
    assert caption_counts(("Two tennis courts are here .", "there are 2 tennis courts")) == {"tennis court": 2}
    assert caption_counts(("two planes", "three planes")) == {}
