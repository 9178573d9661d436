"""``terravl index build CATALOG.json``: STAC catalogs, collections, item collections and items as index sources,
over a local static catalog of the sample GeoTIFFs that the tests write with pystac."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio

pystac = pytest.importorskip("pystac")

from fakedata import write_image  # noqa: E402

LANDSAT_DAY = datetime(2001, 5, 6, 15, 30, tzinfo=timezone.utc)
NAIP_START, NAIP_END = datetime(2009, 8, 18, tzinfo=timezone.utc), datetime(2009, 8, 19, tzinfo=timezone.utc)
PHOTO_GEOMETRY = {"type": "Polygon", "coordinates": [[[10.0, 50.0], [10.2, 50.0], [10.2, 50.1], [10.0, 50.1],
                                                      [10.0, 50.0]]]}


def _split_bands(src: Path, folder: Path) -> dict[str, Path]:
    """The first three bands of ``src`` (NAIP: red, green, blue) as three single-band GeoTIFFs on its grid."""
    out = {}
    with rasterio.open(src) as ds:
        profile = {**ds.profile, "count": 1}
        for band, colour in enumerate(("red", "green", "blue"), start=1):
            out[colour] = folder / f"naip_{colour}.tif"
            with rasterio.open(out[colour], "w", **profile) as dst:
                dst.write(ds.read(band), 1)
    return out


def _item(item_id: str, geometry: dict | None, when: datetime | None, **props) -> "pystac.Item":
    bbox = None
    if geometry:
        xs, ys = zip(*geometry["coordinates"][0])
        bbox = [min(xs), min(ys), max(xs), max(ys)]
    return pystac.Item(item_id, geometry, bbox, when, props)


def _footprint(path: Path) -> dict:
    from terravl.io import raster_info

    return raster_info(path).footprint()


@pytest.fixture()
def catalog(tmp_path, samples) -> dict:
    """A self-contained static catalog: ``landsat`` (a ``visual`` asset), ``naip`` (red/green/blue band assets, a
    start/end date range) and ``photo`` (a PNG with no georeference, placed by the item's geometry); asset hrefs
    are relative to the items."""
    root = tmp_path / "catalog"
    data = root / "data"
    data.mkdir(parents=True)
    landsat = Path(shutil.copy(samples / "landsat7_rgb.tif", data / "landsat7_rgb.tif"))
    bands = _split_bands(samples / "naip_20090818.tif", data)
    photo = write_image(data / "photo.png", 120, 90, seed=5)

    cat = pystac.Catalog("samples", "sample GeoTIFFs")
    item = _item("landsat", _footprint(landsat), LANDSAT_DAY)
    item.add_asset("visual", pystac.Asset(str(landsat), media_type=pystac.MediaType.GEOTIFF, roles=["visual"]))
    item.add_asset("thumbnail", pystac.Asset(str(photo), roles=["thumbnail"]))  # never indexed
    cat.add_item(item)
    item = _item("naip", _footprint(samples / "naip_20090818.tif"), None, start_datetime=NAIP_START.isoformat(),
                 end_datetime=NAIP_END.isoformat())
    for colour, path in bands.items():
        item.add_asset(f"B_{colour}", pystac.Asset(str(path), media_type=pystac.MediaType.GEOTIFF, roles=["data"],
                                                   extra_fields={"eo:bands": [{"name": colour,
                                                                               "common_name": colour}]}))
    cat.add_item(item)
    item = _item("photo", PHOTO_GEOMETRY, datetime(2020, 1, 2, tzinfo=timezone.utc))
    item.add_asset("rgb", pystac.Asset(str(photo), media_type=pystac.MediaType.PNG))
    cat.add_item(item)
    cat.normalize_hrefs(str(root))
    cat.make_all_asset_hrefs_relative()
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    assert json.loads((root / "naip" / "naip.json").read_text())["assets"]["B_red"]["href"].startswith("../")
    return {"root": root, "json": root / "catalog.json", "landsat": landsat, "bands": bands, "photo": photo}


def _rows(index: Path) -> dict[str, tuple]:
    with sqlite3.connect(index / "index.sqlite") as db:
        rows = db.execute("SELECT source, window, footprint, acquired, content_hash FROM tiles").fetchall()
    return {Path(r[0]).name: (r[0], r[1], json.loads(r[2]) if r[2] else None, r[3], r[4]) for r in rows}


def test_a_catalog_is_indexed_with_item_dates_and_footprints(catalog, samples, tiny_model, tmp_path, capsys):
    from terravl.cli.main import main
    from terravl.index.build import content_hash
    from terravl.io import read_image

    out = tmp_path / "idx"
    assert main(["index", "build", str(catalog["json"]), "--out", str(out), "--model", str(tiny_model),
                 "--tile-size", "512", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == 3 and report["added"] == 3 and report["problems"] == []
    rows = _rows(out)
    vrts = [name for name in rows if name.endswith(".vrt")]
    assert set(rows) == {"landsat7_rgb.tif", "photo.png", *vrts} and len(vrts) == 1

    source, window, footprint, acquired, _ = rows["landsat7_rgb.tif"]
    assert source == str(catalog["landsat"].resolve()) and window is None
    assert acquired == "2001-05-06" and footprint == _footprint(catalog["landsat"])  # from the raster

    source, _, footprint, acquired, digest = rows[vrts[0]]
    assert Path(source).parent == (out / "stac").resolve()  # the stacking VRT lives with the index
    assert acquired == "2009-08-18" and footprint == _footprint(samples / "naip_20090818.tif")
    stacked = read_image(source).array  # the three band files, red, green, blue, as one raster
    assert np.array_equal(stacked, read_image(samples / "naip_20090818.tif", bands=(1, 2, 3)).array)
    assert digest == content_hash(np.ascontiguousarray(stacked))

    _, _, footprint, acquired, _ = rows["photo.png"]
    assert acquired == "2020-01-02" and footprint == PHOTO_GEOMETRY  # no georeference: the item's geometry

    again = tmp_path / "again.idx"  # the VRT is reopened by name: a search hit's path is readable later
    assert main(["index", "build", source, "--out", str(again), "--model", str(tiny_model), "--tile-size", "512",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 1 and _rows(again)[vrts[0]][4] == digest


def test_tiles_of_an_ungeoreferenced_asset_are_placed_within_the_item_bbox(catalog, tiny_model, tmp_path):
    import terravl.models as m
    from terravl.index import build_index

    item = pystac.Item.from_file(str(catalog["root"] / "photo" / "photo.json"))
    report = build_index([catalog["root"] / "photo" / "photo.json"], m.load(tiny_model), tmp_path / "idx",
                         tile_size=32)
    assert report.problems == [] and report.added == 12  # 120 × 90 in 32-pixel tiles: 4 × 3
    with sqlite3.connect(tmp_path / "idx" / "index.sqlite") as db:
        placed = [json.loads(r[0]) for r in db.execute("SELECT footprint FROM tiles")]
    west, south, east, north = item.bbox
    corners = [c for f in placed for c in f["coordinates"][0]]
    assert min(c[0] for c in corners) == pytest.approx(west) and max(c[0] for c in corners) == pytest.approx(east)
    assert min(c[1] for c in corners) == pytest.approx(south) and max(c[1] for c in corners) == pytest.approx(north)
    assert len({json.dumps(f) for f in placed}) == 12  # each tile its own part of the bbox


def test_item_collections_single_items_and_eo_band_positions(catalog, samples, tiny_model, tmp_path):
    import terravl.models as m
    from terravl.index import build_index
    from terravl.index.build import content_hash
    from terravl.io import read_image

    naip = Path(shutil.copy(samples / "naip_20090818.tif", tmp_path / "naip.tif"))  # R, G, B, NIR; says none
    item = _item("naip4", _footprint(naip), NAIP_START)
    item.add_asset("image", pystac.Asset("naip.tif", extra_fields={"eo:bands": [
        {"common_name": c} for c in ("red", "green", "blue", "nir")]}))
    collection = pystac.ItemCollection([item])
    (tmp_path / "items.json").write_text(json.dumps(collection.to_dict()))
    single = pystac.Item.from_file(str(catalog["root"] / "landsat" / "landsat.json"))
    assert single.assets["visual"].href.startswith("../")

    report = build_index([tmp_path / "items.json", catalog["root"] / "landsat" / "landsat.json"],
                         m.load(tiny_model), tmp_path / "idx", tile_size=512)
    assert report.problems == [] and report.files == 2 and report.added == 2
    rows = _rows(tmp_path / "idx")
    assert rows["naip.tif"][3] == "2009-08-18" and rows["naip.tif"][2] == _footprint(naip)
    want = read_image(naip, bands=(1, 2, 3)).array  # the bands eo:bands names red, green, blue
    assert rows["naip.tif"][4] == content_hash(np.ascontiguousarray(want))
    assert rows["landsat7_rgb.tif"][0] == str(catalog["landsat"].resolve())


def test_bad_catalogs_and_items_are_reported_and_the_rest_goes_on(catalog, tiny_model, tmp_path, capsys):
    from terravl.cli.main import main

    root = catalog["root"]
    bad = tmp_path / "broken.json"
    bad.write_text('{"type": "Catalog", "id": ')  # malformed JSON
    ghost = _item("ghost", PHOTO_GEOMETRY, LANDSAT_DAY)
    ghost.add_asset("visual", pystac.Asset("../data/ghost.tif"))
    bare = _item("bare", PHOTO_GEOMETRY, LANDSAT_DAY)
    bare.add_asset("thumbnail", pystac.Asset("../data/photo.png", roles=["thumbnail"]))
    cat = pystac.Catalog.from_file(str(catalog["json"]))
    cat.add_items([ghost, bare])
    cat.normalize_hrefs(str(root))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    (root / "photo" / "photo.json").unlink()  # a link to an item file that is gone
    catalog["bands"]["green"].unlink()  # one band of the naip item is gone

    out = tmp_path / "idx"
    assert main(["index", "build", str(bad), str(catalog["json"]), "--out", str(out), "--model", str(tiny_model),
                 "--tile-size", "512", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["added"] == 1 and set(_rows(out)) == {"landsat7_rgb.tif"}  # the one good item
    problems = {Path(p["path"]).name: p["error"] for p in report["problems"]}
    assert set(problems) == {"broken.json", "ghost.json#ghost", "bare.json#bare", "photo.json", "naip.json#naip"}
    assert problems["broken.json"].startswith("not a valid STAC JSON file")
    assert problems["ghost.json#ghost"] == f"{root / 'data' / 'ghost.tif'}: no such file"
    assert problems["bare.json#bare"].startswith("no visual/RGB asset and no red, green and blue band assets")
    assert "cannot be read (no such file)" in problems["photo.json"]
    assert problems["naip.json#naip"] == f"{catalog['bands']['green']}: no such file"
    assert report["files"] == 6  # five problems and one indexed item: everything found is accounted for
