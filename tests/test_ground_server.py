"""Issue 16 through the HTTP service, in process: POST /api/v1/ground on an upload and on an indexed tile, its files
by id, the empty answer, and every refusal naming its field (empty or over-long expression, no image, a corrupt or
oversized upload, too small an image) without the server's temporary paths."""

import json

import pytest
from fastapi.testclient import TestClient

from fakedata import truncate, write_image, write_png_bomb
from test_ground import ColourMethod, _scene
from terravl.server import create_app
from terravl.server.app import service_of
from terravl.server.guards import allowed_hosts


class NothingMethod(ColourMethod):
    name = "nothing"

    def score(self, rgb, valid, state):
        return super().score(rgb, valid, state) * 0.2


@pytest.fixture(scope="module")
def client(samples, tiny_model, tmp_path_factory):
    """The application over an index of a NAIP scene (256 px tiles, a tiny random encoder); grounding methods that
    a test can predict (red pixels) in place of the models."""
    import terravl.models as m
    from terravl.index import build_index

    index = tmp_path_factory.mktemp("ground") / "naip.idx"
    build_index([samples / "naip_20200831.tif"], m.load(tiny_model), index, 256, 0)
    app = create_app([index], preload=False, workers=1, allowed_hosts=allowed_hosts("127.0.0.1", ["testserver"]))
    with TestClient(app) as client:
        client.service = service_of(app)
        client.service.ground_methods = {"auto": ColourMethod(), "trained": NothingMethod()}
        yield client


def _clean(client, response) -> None:
    assert str(client.service.tmp) not in response.text and "upload-" not in response.text
    assert not [p for p in client.service.tmp.iterdir() if p.name.startswith(("upload-", "tile-"))]


def test_an_upload_gives_boxes_regions_and_files_by_id(client, tmp_path):
    image = _scene(tmp_path / "scene.tif")
    response = client.post("/api/v1/ground", files={"image": ("scene.tif", image.read_bytes())},
                           data={"expression": "the red roofs", "all": "true"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["found"] and result["path"] == "upload" and result["outputs"] is None
    assert [i["pixels"] for i in result["instances"]] == [3000, 1200] and result["coordinates"] == "wgs84"
    assert result["instances"][0]["box"]["type"] == "Polygon"
    for name in ("mask", "score", "regions", "preview"):
        file = client.get(result["links"][name])
        assert file.status_code == 200 and len(file.content) > 100
    assert json.loads(client.get(result["links"]["regions"]).content)["features"]
    _clean(client, response)


def test_an_indexed_tile_is_grounded_with_its_georeference(client):
    response = client.post("/api/v1/ground", data={"expression": "anything", "id": "1"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["path"].startswith("tile 1 of ") and result["coordinates"] == "wgs84"
    assert result["width"] == 256 and result["crs"]
    _clean(client, response)


def test_nothing_found_is_an_empty_answer_with_the_best_score(client, tmp_path):
    image = _scene(tmp_path / "scene.tif")
    response = client.post("/api/v1/ground", files={"image": ("s.tif", image.read_bytes())},
                           data={"expression": "an airport", "method": "trained"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert not result["found"] and result["instances"] == [] and 0 < result["best_score"] < 0.5


@pytest.mark.parametrize("data, field", [({"expression": ""}, "expression"), ({"expression": "x" * 501}, "expression"),
                                         ({"expression": "a\x01b"}, "expression")])
def test_bad_expressions_are_400_naming_the_field(client, tmp_path, data, field):
    image = write_image(tmp_path / "a.png", 64, 64)
    response = client.post("/api/v1/ground", files={"image": ("a.png", image.read_bytes())}, data=data)
    assert response.status_code in (400, 422), response.text
    if response.status_code == 400:
        assert response.json()["error"]["field"] == field


def test_refusals_name_their_field_without_server_paths(client, tmp_path):
    no_image = client.post("/api/v1/ground", data={"expression": "a roof"})
    assert no_image.status_code == 400 and no_image.json()["error"]["field"] == "image/id"
    tiny = write_image(tmp_path / "tiny.png", 20, 20)
    small = client.post("/api/v1/ground", files={"image": ("t.png", tiny.read_bytes())}, data={"expression": "x"})
    assert small.status_code == 400 and "at least 32" in small.json()["error"]["message"]
    _clean(client, small)
    broken = truncate(_scene(tmp_path / "b.tif"), 0.3)
    bad = client.post("/api/v1/ground", files={"image": ("b.tif", broken.read_bytes())}, data={"expression": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "image"
    _clean(client, bad)
    bomb = write_png_bomb(tmp_path / "bomb.png")
    big = client.post("/api/v1/ground", files={"image": ("bomb.png", bomb.read_bytes())}, data={"expression": "x"})
    assert big.status_code == 413
    _clean(client, big)
    missing = client.post("/api/v1/ground", data={"expression": "x", "id": "999999"})
    assert missing.status_code == 404


def test_files_by_id_are_the_only_files_served(client):
    assert client.get("/api/v1/groundings/../../etc/passwd").status_code == 404
    assert client.get("/api/v1/groundings/" + "a" * 32 + "/mask.tif").status_code == 404
    assert client.get("/api/v1/groundings/" + "a" * 32 + "/ground.json").status_code == 404


def test_the_real_baseline_through_the_service(client, samples):
    """The default encoder's training-free baseline (no stand-in) answers an indexed tile."""
    client.service.ground_methods.pop("baseline", None)
    response = client.post("/api/v1/ground", data={"expression": "a lake", "id": "2", "method": "baseline"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["method"] == "baseline" and result["found"] and any("cannot tell" in w for w in result["warnings"])
