"""s3:// rasters (and /vsis3/ paths) wherever a raster path is accepted, against a local S3 server (moto) that the
tests start: nothing here touches the internet.

The server holds a sample GeoTIFF and a PNG in bucket ``open`` and a copy in bucket ``secret``. Objects are
uploaded first; then moto's IAM checks are switched on and the tests run as a user who may read ``open`` only,
so reading ``secret`` gets a genuine 403 Access Denied.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import urllib.request
from datetime import datetime, timezone

import numpy as np
import pytest

pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (pip install -e '.[test]')")

from fakedata import write_image  # noqa: E402
from terravl.errors import InputError, RasterReadError  # noqa: E402

SCENE = "s3://open/scenes/landsat7_rgb.tif"
PHOTO = "s3://open/scenes/photo.png"
DENIED = "s3://secret/landsat7_rgb.tif"
MISSING = "s3://open/scenes/nowhere.tif"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(samples, tmp_path_factory):
    """A moto S3 server on a free local port, the AWS environment pointing at it, objects uploaded, and IAM on
    with the environment's keys those of a user allowed to read bucket ``open`` only."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    photo = write_image(tmp_path_factory.mktemp("s3") / "photo.png", 96, 80, seed=3)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "AWS_ENDPOINT_URL_S3",
                     "AWS_SESSION_TOKEN", "AWS_NO_SIGN_REQUEST", "AWS_REGION"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "admin")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "admin")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)  # the standard variable; terravl maps it for GDAL
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe the network for credentials
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("CPL_AWS_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("GDAL_HTTP_MAX_RETRY", "0")
        mp.setenv("CPL_VSIL_CURL_NON_CACHED", "/vsis3/open/:/vsis3/secret/")  # no stale answers between tests
        admin = boto3.session.Session().client("s3", endpoint_url=endpoint)
        for bucket in ("open", "secret"):
            admin.create_bucket(Bucket=bucket)
        admin.upload_file(str(samples / "landsat7_rgb.tif"), "open", "scenes/landsat7_rgb.tif")
        admin.upload_file(str(photo), "open", "scenes/photo.png")
        admin.put_object(Bucket="open", Key="scenes/readme.txt", Body=b"not a raster")
        admin.upload_file(str(samples / "landsat7_rgb.tif"), "secret", "landsat7_rgb.tif")
        from test_stac import _split_bands

        for colour, path in _split_bands(samples / "naip_20090818.tif", tmp_path_factory.mktemp("bands")).items():
            admin.upload_file(str(path), "open", f"bands/naip_{colour}.tif")  # a STAC item's band assets
        iam = boto3.session.Session().client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="read-open", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                                                    "Resource": ["arn:aws:s3:::open", "arn:aws:s3:::open/*"]}]}))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        mp.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        mp.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        _set_auth(endpoint, "0")  # from now on every request is checked against IAM
        try:
            yield {"endpoint": endpoint, "photo": photo}
        finally:
            _set_auth(endpoint, "inf")
            server.stop()


def _set_auth(endpoint: str, count: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})  # moto reads the raw body
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


def _rows(index) -> list[tuple]:
    with sqlite3.connect(index / "index.sqlite") as db:
        return db.execute("SELECT source, window, footprint, acquired FROM tiles ORDER BY id").fetchall()


def test_endpoint_variables_map_to_gdal_options(monkeypatch):
    from terravl.io.remote import gdal_s3_options, gdal_path, is_remote, to_url

    for name in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio.local:9000/")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert gdal_s3_options() == {"AWS_S3_ENDPOINT": "minio.local:9000", "AWS_HTTPS": "NO",
                                 "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_REGION": "eu-west-1"}
    monkeypatch.setenv("AWS_S3_ENDPOINT", "other:1234")  # GDAL's own variable, set by the user, wins
    assert "AWS_S3_ENDPOINT" not in gdal_s3_options()
    monkeypatch.delenv("AWS_S3_ENDPOINT")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.org")
    assert gdal_s3_options()["AWS_HTTPS"] == "YES"
    assert to_url("/vsis3/b/k/x.tif") == "s3://b/k/x.tif" and gdal_path("s3://b/k/x.tif") == "/vsis3/b/k/x.tif"
    assert is_remote("s3:/b/x.tif")  # what pathlib.Path makes of s3://b/x.tif
    assert not is_remote("scenes/s3.tif") and not is_remote("/data/vsis3/x.tif")


def test_open_raster_and_raster_info_over_s3(s3, samples):
    from terravl.io import open_raster, raster_info, read_image

    local = raster_info(samples / "landsat7_rgb.tif")
    for name in (SCENE, "/vsis3/open/scenes/landsat7_rgb.tif"):
        info = raster_info(name)
        assert info.path == SCENE  # the canonical s3:// name, whichever spelling was given
        assert (info.width, info.height, info.count, info.driver) == (791, 718, 3, "GTiff")
        assert info.georef.crs_name == "EPSG:32618" and info.footprint() == local.footprint()
    with open_raster(SCENE) as remote, open_raster(samples / "landsat7_rgb.tif") as here:
        from terravl.io import PixelWindow

        window = PixelWindow(300, 200, 128, 96)
        got, valid = remote.read_rgb(window)
        want, want_valid = here.read_rgb(window)
        assert np.array_equal(got, want) and np.array_equal(valid, want_valid) and got.any()
    png = raster_info(PHOTO)  # a PNG over S3 is read by GDAL, not by Pillow from a local file
    assert (png.width, png.height, png.georef) == (96, 80, None)
    assert np.array_equal(read_image(PHOTO).array, read_image(s3["photo"]).array)


def test_missing_and_denied_objects_are_clear_input_errors(s3):
    from terravl.io import raster_info

    with pytest.raises(RasterReadError) as missing:
        raster_info(MISSING)
    assert missing.value.source == MISSING and missing.value.message == "no such object"
    with pytest.raises(InputError) as denied:
        raster_info(DENIED)
    assert denied.value.source == DENIED and denied.value.message.startswith("access denied")
    with pytest.raises(InputError) as not_raster:
        raster_info("s3://open/scenes/readme.txt")
    assert not_raster.value.message.startswith("not a readable raster")


def test_index_build_of_an_object_and_a_prefix(s3, samples, tiny_model, tmp_path, capsys):
    from terravl.cli.main import main
    from terravl.io import raster_info

    one = tmp_path / "one.idx"
    assert main(["index", "build", SCENE, "--out", str(one), "--model", str(tiny_model), "--tile-size", "512",
                 "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == 1 and report["added"] == 1 and report["problems"] == []
    (source, window, footprint, _), = _rows(one)
    assert source == SCENE and window is None
    # the scene's place, from the remote raster's georeference: the same as the local file's
    assert json.loads(footprint) == raster_info(samples / "landsat7_rgb.tif").footprint()

    prefix = tmp_path / "prefix.idx"
    assert main(["index", "build", "s3://open/scenes/", "--out", str(prefix), "--model", str(tiny_model),
                 "--tile-size", "512", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == 2 and report["added"] == 2 and report["problems"] == []  # readme.txt is no raster
    assert sorted(r[0] for r in _rows(prefix)) == [SCENE, PHOTO]
    assert main(["index", "remove", str(prefix), PHOTO, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 1 and [r[0] for r in _rows(prefix)] == [SCENE]


def test_a_batch_goes_on_past_missing_and_denied_objects(s3, tiny_model, tmp_path, capsys):
    import terravl.models as m
    from terravl.cli.main import main
    from terravl.index import build_index

    report = build_index([MISSING, SCENE, DENIED, "s3://open/nothing-here/", "s3://secret/"], m.load(tiny_model),
                         tmp_path / "idx", tile_size=512)
    assert report.files == 5 and report.added == 1
    problems = {p.path: p.error for p in report.problems}
    assert problems[MISSING] == "no such object" and problems[DENIED].startswith("access denied")
    assert problems["s3://open/nothing-here/"].startswith("no such object")  # an empty prefix
    assert problems["s3://secret/"].startswith("access denied")  # a prefix this user may not list
    assert [r[0] for r in _rows(tmp_path / "idx")] == [SCENE]

    assert main(["classify", PHOTO, MISSING, DENIED, "--labels", "farmland,harbor,forest", "--model",
                 str(tiny_model), "--format", "json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert answers[0]["path"] == PHOTO and answers[0]["label"] in {"farmland", "harbor", "forest"}
    assert answers[1] == {"path": MISSING, "error": "no such object"}
    assert answers[2]["path"] == DENIED and "access denied" in answers[2]["error"]


def test_classify_tiles_and_localize_over_s3(s3, samples, tiny_model, tmp_path, capsys):
    from terravl.cli.main import main
    from terravl.io import raster_info

    answers = {}
    for name in (SCENE, str(samples / "landsat7_rgb.tif")):
        assert main(["classify", name, "--labels", "farmland,harbor,forest", "--model", str(tiny_model),
                     "--format", "json"]) == 0
        answers[name] = json.loads(capsys.readouterr().out)  # 791 × 718 > 2 × 256: one answer per tile
    tiles = answers[SCENE]
    assert len(tiles) == 9 and all(t["path"] == SCENE and t["footprint"] for t in tiles)  # 3 tiles are nodata
    local = answers[str(samples / "landsat7_rgb.tif")]
    assert [(t["window"], t["footprint"], t["label"]) for t in tiles] == \
        [(t["window"], t["footprint"], t["label"]) for t in local]
    assert [t["score"] for t in tiles] == pytest.approx([t["score"] for t in local], abs=1e-5)

    assert main(["tiles", SCENE, "--size", "400", "--out", str(tmp_path / "chips"), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tiles"] == 4 and result["sources"] == [{"path": SCENE, "stem": "landsat7_rgb", "tiles": 4}]
    geojson = json.loads((tmp_path / "chips" / "tiles.geojson").read_text())
    assert {f["properties"]["source"] for f in geojson["features"]} == {SCENE}
    assert raster_info(tmp_path / "chips" / "landsat7_rgb_r0000_c0000.png").width == 400

    assert main(["localize", SCENE, "a harbor", "--scales", "384", "--stride", "1", "--model", str(tiny_model),
                 "--out", str(tmp_path / "heat.tif"), "--format", "json"]) == 0
    located = json.loads(capsys.readouterr().out)
    assert located["path"] == SCENE and located["windows"] == 4 and (tmp_path / "heat.tif").is_file()


def test_caption_over_s3(s3, tiny_model, tmp_path):
    import terravl.models as m
    from terravl.models.retrieval_captioner import RetrievalCaptioner
    from terravl.tasks import caption

    encoder = m.load(tiny_model)
    remote, local = encoder.encode_images([PHOTO, s3["photo"]], progress=False)  # an encoder takes URLs too
    assert np.allclose(remote, local, atol=1e-6)
    bank = encoder.encode_images([write_image(tmp_path / "a.png", 32, 32, seed=1)])
    method = RetrievalCaptioner(encoder, bank, [["green trees around a pond ."]])
    rows = caption([PHOTO, SCENE, MISSING], method, tile_size=256)
    assert [r.path for r in rows] == [PHOTO] + [SCENE] * 9 + [MISSING]  # the scene per tile (3 are nodata)
    assert {r.caption for r in rows.results} == {"green trees around a pond ."}
    assert all(r.footprint["type"] == "Polygon" for r in rows[1:10])  # placed by the remote georeference
    assert rows[-1] in rows.problems and rows[-1].error == "no such object"


def test_stac_assets_in_object_storage(s3, samples, tiny_model, tmp_path):
    import pystac

    import terravl.models as m
    from terravl.index import build_index
    from terravl.io import read_image

    visual = pystac.Item("scene", None, None, datetime(2001, 5, 6, tzinfo=timezone.utc), {})
    visual.add_asset("visual", pystac.Asset(SCENE))
    bands = pystac.Item("naip", None, None, datetime(2009, 8, 18, tzinfo=timezone.utc), {})
    for colour in ("red", "green", "blue"):
        bands.add_asset(colour, pystac.Asset(f"s3://open/bands/naip_{colour}.tif",
                                             extra_fields={"eo:bands": [{"common_name": colour}]}))
    denied = pystac.Item("denied", None, None, datetime(2001, 5, 6, tzinfo=timezone.utc), {})
    denied.add_asset("visual", pystac.Asset(DENIED))
    (tmp_path / "items.json").write_text(json.dumps(pystac.ItemCollection([visual, bands, denied]).to_dict()))

    report = build_index([tmp_path / "items.json"], m.load(tiny_model), tmp_path / "idx", tile_size=512)
    assert report.files == 3 and report.added == 2
    (problem,) = report.problems
    assert problem.path == f"{tmp_path / 'items.json'}#denied" and problem.error.startswith(f"{DENIED}: access denied")
    rows = {r[0]: r for r in _rows(tmp_path / "idx")}
    vrt = next(name for name in rows if name.endswith(".vrt"))
    assert set(rows) == {SCENE, vrt} and rows[SCENE][3] == "2001-05-06" and rows[vrt][3] == "2009-08-18"
    assert "/vsis3/open/bands/naip_red.tif" in open(vrt).read()  # the VRT reads the bands from the bucket
    assert np.array_equal(read_image(vrt).array, read_image(samples / "naip_20090818.tif", bands=(1, 2, 3)).array)
