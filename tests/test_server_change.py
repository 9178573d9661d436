"""Issue 15's change over time through the HTTP service, in process: /api/v1/change on two uploads and on two
indexed tiles, its files by id, /api/v1/ask-change, and every refusal naming its field (no overlap, a corrupt or
oversized upload, an overlap over the work budget, a missing detector) without the server's temporary paths."""

import json

import pytest
from fastapi.testclient import TestClient

from fakedata import truncate, write_geotiff, write_image, write_png_bomb
from terravl.server import create_app
from terravl.server.app import service_of
from terravl.server.guards import allowed_hosts

CVA = {"method": "cva", "describe": "false"}


@pytest.fixture(scope="module")
def naip(samples):
    return samples / "naip_20090818.tif", samples / "naip_20200831.tif"


@pytest.fixture(scope="module")
def client(naip, tiny_model, tmp_path_factory):
    """The application over an index of the two NAIP dates (256 px tiles, a tiny random encoder)."""
    import terravl.models as m
    from terravl.index import build_index

    index = tmp_path_factory.mktemp("change") / "naip.idx"
    build_index(list(naip), m.load(tiny_model), index, 256, 0)
    app = create_app([index], preload=False, workers=1, allowed_hosts=allowed_hosts("127.0.0.1", ["testserver"]))
    with TestClient(app) as client:
        client.service = service_of(app)
        yield client


def _files(before, after) -> dict:
    return {"before": (before.name, before.read_bytes()), "after": (after.name, after.read_bytes())}


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _clean(client, response) -> None:
    """Nothing of the server's temporary folder shows, and no upload or tile copy is left in it."""
    assert str(client.service.tmp) not in response.text and "upload-" not in response.text
    assert not [p for p in client.service.tmp.iterdir() if p.name.startswith(("upload-", "tile-"))]


@pytest.fixture(scope="module")
def naip_change(client, naip):
    response = client.post("/api/v1/change", files=_files(*naip), data=CVA)
    assert response.status_code == 200, response.text
    return response


def test_an_uploaded_pair_gives_regions_caption_and_files_by_id(client, naip_change):
    result = naip_change.json()
    _clean(client, naip_change)
    assert result["before"] == "before upload" and result["after"] == "after upload" and result["method"] == "cva"
    assert result["changed"] and result["region_count"] >= 1 and result["outputs"] is None
    assert 0.01 < result["changed_fraction"] < 0.9
    assert result["changed_area_m2"] == pytest.approx(result["changed_pixels"] * 25.0)  # 5 m NAIP pixels
    regions = result["regions"]
    assert regions["type"] == "FeatureCollection" and regions["features"][0]["geometry"]["type"] == "Polygon"
    lon, lat = regions["features"][0]["geometry"]["coordinates"][0][0]
    assert -100 < lon < -98 and 46 < lat < 48  # WGS84, central North Dakota
    assert "scene changed" in result["caption"] and result["before_caption"] is None  # describe=false
    links = result["links"]
    assert set(links) == {"preview", "mask", "change", "regions"}
    assert all(url.startswith(f"/api/v1/changes/{result['change_id']}/") for url in links.values())
    preview = client.get(links["preview"])
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert preview.content[:8] == b"\x89PNG\r\n\x1a\n"
    mask = client.get(links["mask"])
    assert mask.status_code == 200 and mask.content[:4] in (b"II*\x00", b"MM\x00*")
    assert str(client.service.tmp).encode() not in mask.content  # its tags name the inputs by label
    assert client.get(links["regions"]).json() == regions
    assert client.get(f"/api/v1/changes/{result['change_id']}/change.json").status_code == 404  # never served


def test_the_mask_is_georeferenced_and_counts_the_changed_pixels(client, naip_change, tmp_path):
    import rasterio

    result = naip_change.json()
    path = tmp_path / "mask.tif"
    path.write_bytes(client.get(result["links"]["mask"]).content)
    with rasterio.open(path) as src:
        mask = src.read(1)
        assert src.crs.to_epsg() == 26914 and (src.width, src.height) == (934, 724)
    assert int((mask == 1).sum()) == result["changed_pixels"] and int((mask != 255).sum()) == result["valid_pixels"]


def test_two_indexed_tiles_of_one_place_are_compared_with_dates_and_captions(client):
    hits = client.get("/api/v1/search", params={"q": "farmland", "k": 100}).json()
    at = {(h["path"].rsplit("_", 1)[-1][:4], h["window"]["col_off"], h["window"]["row_off"]): h["id"] for h in hits}
    response = client.post("/api/v1/change", data={"before_id": at["2009", 256, 256], "after_id": at["2020", 256, 256],
                                                   "method": "cva"})
    assert response.status_code == 200, response.text
    _clean(client, response)
    result = response.json()
    assert (result["before_date"], result["after_date"]) == ("2009-08-18", "2020-08-31")  # the tiles' own dates
    assert result["before"].startswith(f"tile {at['2009', 256, 256]} of ") and result["before"].endswith("0818.tif")
    assert (result["grid"]["width"], result["grid"]["height"]) == (256, 256) and result["grid"]["crs"] == "EPSG:26914"
    assert result["before_caption"] and result["after_caption"]  # describe (the default): each date's caption
    assert result["region_count"] >= 1 and result["regions"]["features"][0]["properties"]["class_after"]
    # tiles of the same raster side by side do not overlap: refused naming both ids
    apart = client.post("/api/v1/change", data={"before_id": at["2009", 0, 0], "after_id": at["2020", 512, 512],
                                                **CVA})
    error = _error(apart, 400)
    assert error["field"] == "before_id and after_id" and "do not overlap" in error["message"]
    _clean(client, apart)
    missing = client.post("/api/v1/change", data={"before_id": at["2009", 0, 0], "after_id": "99999", **CVA})
    assert _error(missing, 404)["field"] == "after_id"


def test_a_pair_that_does_not_overlap_is_refused_naming_both_fields(client, tmp_path):
    from affine import Affine

    here = write_geotiff(tmp_path / "here.tif", 64, 64, seed=1)
    there = write_geotiff(tmp_path / "there.tif", 64, 64, seed=2, transform=Affine(30.0, 0, 400000.0, 0, -30.0,
                                                                                    4000000.0))
    response = client.post("/api/v1/change", files=_files(here, there), data=CVA)
    error = _error(response, 400)
    assert error["field"] == "before and after" and "do not overlap" in error["message"]
    assert "before upload" in error["message"] and "after upload" in error["message"]
    _clean(client, response)


def test_corrupt_and_non_image_uploads_are_refused_naming_the_field(client, tmp_path):
    good = write_image(tmp_path / "good.jpg", 300, 300, seed=1)
    broken = truncate(write_image(tmp_path / "broken.jpg", 300, 300, seed=2), 0.3)
    response = client.post("/api/v1/change", files=_files(good, broken), data=CVA)
    assert 400 <= response.status_code < 500 and response.json()["error"]["field"] == "after", response.text
    _clean(client, response)
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    response = client.post("/api/v1/change", files=_files(text, good), data=CVA)
    assert _error(response, 415)["field"] == "before"
    _clean(client, response)


def test_too_large_uploads_and_overlaps_over_the_budget_are_413(client, naip, tmp_path):
    bomb = write_png_bomb(tmp_path / "bomb.png")
    good = write_image(tmp_path / "good.png", 64, 64)
    response = client.post("/api/v1/change", files=_files(good, bomb), data=CVA)
    error = _error(response, 413)
    assert error["field"] == "after" and "pixels" in error["message"]
    budget = client.service.max_change_pixels
    client.service.max_change_pixels = 500_000  # the NAIP overlap is 934 × 724 = 676,216 pixels
    try:
        response = client.post("/api/v1/change", files=_files(*naip), data=CVA)
    finally:
        client.service.max_change_pixels = budget
    error = _error(response, 413)
    assert error["field"] == "before and after" and "500,000" in error["message"] and "--max" not in error["message"]
    _clean(client, response)


def test_requests_missing_mixing_or_misspelling_inputs_name_the_field(client, naip):
    assert _error(client.post("/api/v1/change", data=CVA), 400)["field"] == "before/before_id"
    mixed = client.post("/api/v1/change", files={"before": ("a.tif", naip[0].read_bytes())},
                        data={"after_id": "1", **CVA})
    error = _error(mixed, 400)
    assert error["field"] == "after_id" and "not one of each" in error["message"]
    both = client.post("/api/v1/change", files=_files(*naip), data={"before_id": "1", **CVA})
    assert _error(both, 400)["field"] == "before/before_id"
    assert _error(client.post("/api/v1/change", data={"before_id": "1", "after_id": "2", "method": "magic"}),
                  422)["field"] == "method"
    assert _error(client.post("/api/v1/change", data={"before_id": "1", "after_id": "2", "min_region_pixels": "0"}),
                  400)["field"] == "min_region_pixels"
    assert _error(client.post("/api/v1/change", data={"before_id": "0", "after_id": "2"}), 422)["field"] == "before_id"
    assert _error(client.post("/api/v1/change", data={"before_id": "1", "after_id": "2", "bands": "rgbx"}),
                  400)["field"] == "bands"
    assert _error(client.post("/api/v1/change", data={"before_id": "1", "after_id": "2", "index": "nope"}),
                  404)["field"] == "index"


def test_a_missing_change_detector_is_503_not_a_server_path(client, naip, monkeypatch):
    import terravl.models.change_detector as cd
    from terravl.models.registry import WeightsNotFoundError

    def absent(*args, **kwargs):
        raise WeightsNotFoundError("terravl-change", f"missing in {client.service.tmp}")

    monkeypatch.setattr(cd, "load_change_detector", absent)
    monkeypatch.setattr(client.service, "_detector", None)
    response = client.post("/api/v1/change", files=_files(*naip), data={"method": "trained", "describe": "false"})
    assert response.status_code == 503 and "cva" in response.json()["error"]["message"]
    _clean(client, response)


def test_ask_change_answers_how_much_from_the_measured_change(client, naip, naip_change):
    from terravl.tasks.change_text import area_text, percent

    measured = naip_change.json()
    response = client.post("/api/v1/ask-change", files=_files(*naip),
                           data={**CVA, "question": "How much area changed?"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["based_on"] == "measured change" and answer["question"] == "How much area changed?"
    area = area_text(measured["changed_area_m2"], measured["changed_pixels"])
    assert area.endswith(" km²")  # the NAIP tile is 4.7 × 3.6 km at 5 m: its change is in km²
    assert answer["answer"] == f"About {percent(measured['changed_fraction'])} % of the scene changed ({area})."
    assert (answer["before"], answer["after"]) == ("before upload", "after upload")
    _clean(client, response)
    blank = client.post("/api/v1/ask-change", files=_files(*naip), data={**CVA, "question": "   "})
    assert _error(blank, 400)["field"] == "question"


def test_change_files_are_found_by_id_only_and_the_oldest_are_deleted(client):
    for url in ("/api/v1/changes/" + "0" * 32 + "/preview.png", "/api/v1/changes/" + "A" * 32 + "/preview.png",
                "/api/v1/changes/..%2F..%2F/passwd", "/api/v1/changes/..%2F..%2Fetc/passwd"):
        response = client.get(url)
        assert response.status_code == 404 and b"root:" not in response.content, url
    service = client.service
    folders = [service.change_folder() for _ in range(55)]
    running = folders[0].name  # the oldest run is still writing: it must not be deleted under it
    service._changes_running.intersection_update({running})  # the others have finished
    newest = service.change_folder()
    kept = sorted(p.name for p in (service.tmp / "changes").iterdir())
    assert len(kept) == 51 and running in kept and newest.name in kept and folders[1].name not in kept
    service._changes_running.clear()
    name = folders[-1].name
    assert _error(client.get(f"/api/v1/changes/{name}/secret.txt"), 404)["field"] == "name"


def test_the_openapi_page_documents_the_change_routes(client):
    schema = client.get("/openapi.json").json()
    change = schema["paths"]["/api/v1/change"]["post"]
    assert "two dates" in change["description"] and "413" in change["responses"]
    assert "question" in json.dumps(schema["paths"]["/api/v1/ask-change"]["post"])
    assert "preview.png" in schema["paths"]["/api/v1/changes/{change_id}/{name}"]["get"]["description"]
    props = schema["components"]["schemas"]["ChangeResponse"]["properties"]
    assert {"regions", "caption", "changed_area_m2", "links", "change_id"} <= set(props)
