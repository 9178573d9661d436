"""Issue 22 against a real ``terravl serve`` process: uploads are decoded only by self-contained formats (a GDAL
VRT that reads the server's files is 415, whatever it is called), ids beyond 64 bits, the Host header check, a
chunked body over the limit, and error messages that never show the server's paths."""

import shutil

import httpx
import pytest

from fakedata import truncate, write_image
from serverfixture import API_KEY, Server

IMAGE_ROUTES = {  # route → form fields besides the image
    "/api/v1/classify": {"classes": "aid"},
    "/api/v1/caption": {},
    "/api/v1/ask": {"question": "what is this?"},
    "/api/v1/search": {"k": "3"},
    "/api/v1/localize": {"query": "a road", "scales": "64"},
}


@pytest.fixture(scope="module")
def sources(shared_data, tmp_path_factory):
    """Copies of three indexed scenes, so a test may delete one under the running server."""
    folder = tmp_path_factory.mktemp("sources")
    for jpg in sorted((shared_data / "aid_150px" / "images" / "Port").glob("*.jpg"))[:3]:
        shutil.copy(jpg, folder / jpg.name)
    return folder


@pytest.fixture(scope="module")
def server(sources):
    import terravl.models as m
    from terravl.index import build_index

    index = sources.parent / "small.idx"
    build_index([sources], m.load("terravl-default"), index, 256, 0)
    srv = Server(index, "--max-upload-mb", "2", "--queue", "16", "--allowed-host", "terravl.example")
    yield srv
    srv.stop()


def _vrt(path, source) -> None:
    path.write_text(f"""<VRTDataset rasterXSize="150" rasterYSize="150">
  <VRTRasterBand dataType="Byte" band="1">
    <SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>1</SourceBand>
    <SrcRect xOff="0" yOff="0" xSize="150" ySize="150"/><DstRect xOff="0" yOff="0" xSize="150" ySize="150"/>
    </SimpleSource>
  </VRTRasterBand>
</VRTDataset>
""")


def _post(server, route, path, name):
    with open(path, "rb") as fh:
        return server.client.post(route, files={"image": (name, fh, "image/tiff")}, data=IMAGE_ROUTES[route])


@pytest.mark.parametrize("route", list(IMAGE_ROUTES))
def test_a_vrt_upload_reading_a_server_file_is_refused_whatever_its_name(server, sources, tmp_path, route):
    secret = next(sources.glob("*.jpg"))  # a JPEG on the server's disk, which GDAL would happily read
    vrt = tmp_path / "x.vrt"
    _vrt(vrt, secret)
    for name in ("x.tif", "x", "x.vrt"):
        response = _post(server, route, vrt, name)
        assert response.status_code == 415, (route, name, response.text)
        assert response.json()["error"]["field"] == "image"
        assert str(secret) not in response.text and "terravl-serve-" not in response.text


def test_a_vrt_over_etc_passwd_is_refused(server, tmp_path):
    vrt = tmp_path / "passwd.vrt"
    _vrt(vrt, "/etc/passwd")
    for route in ("/api/v1/classify", "/api/v1/caption"):
        response = _post(server, route, vrt, "x.tif")
        assert response.status_code == 415 and b"root:" not in response.content


def test_a_real_jpeg_named_tif_is_decoded_by_its_content(server, sources):
    response = _post(server, "/api/v1/classify", next(sources.glob("*.jpg")), "x.tif")
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "Port"


def test_ids_beyond_64_bits_are_refused_not_500(server):
    assert server.client.get("/api/v1/tiles/9223372036854775808").status_code in (404, 422)
    assert server.client.get("/api/v1/tiles/99999999999999999999").status_code in (404, 422)
    for route, extra in (("/api/v1/caption", {}), ("/api/v1/ask", {"question": "what is this?"}),
                         ("/api/v1/classify", {"classes": "aid"}), ("/api/v1/localize", {"query": "a road"})):
        response = server.client.post(route, data={"id": "99999999999999999999", **extra})
        assert response.status_code in (404, 422), (route, response.text)
        assert response.json()["error"]["field"] == "id"


def test_host_header_must_name_this_service(server):
    port = server.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.2"):
        response = server.client.get("/api/v1/indexes", headers={"Host": host})
        assert response.status_code == 400, host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "terravl.example", f"[::1]:{port}"):
        assert server.client.get("/api/v1/indexes", headers={"Host": host}).status_code == 200, host
    assert httpx.get(server.url + "/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200  # probes: by IP


def test_a_chunked_body_over_the_limit_is_413(server):
    boundary = "terravlboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()

    def body():  # no Content-Length: the size is only known as it streams in
        yield head + b"\x89PNG\r\n\x1a\n"
        for _ in range(48):
            yield b"\0" * (64 << 10)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(server.url + "/api/v1/search", content=body(), timeout=60, headers={
        "X-API-Key": API_KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413, response.text
    assert "limit" in response.json()["error"]["message"]
    assert server.client.get("/readyz").status_code == 200


def test_upload_errors_never_show_the_servers_temporary_path(server, tmp_path):
    broken = truncate(write_image(tmp_path / "broken.jpg", 300, 300), 0.3)
    for route in IMAGE_ROUTES:
        with open(broken, "rb") as fh:
            response = server.client.post(route, files={"image": ("broken.jpg", fh, "image/jpeg")},
                                          data=IMAGE_ROUTES[route])
        assert 400 <= response.status_code < 500, (route, response.text)
        assert response.json()["error"]["field"] == "image", (route, response.text)
        assert "terravl-serve-" not in response.text and "upload-" not in response.text, (route, response.text)


def test_a_missing_tile_source_is_unavailable_without_its_path(server, sources):
    hits = server.client.get("/api/v1/search", params={"q": "a harbor", "k": 10}).json()
    gone = hits[0]
    (sources / gone["path"].rsplit("/", 1)[-1]).unlink()
    thumbnail = server.client.get(f"/api/v1/tiles/{gone['id']}", params={"size": 33})  # a size not cached yet
    caption = server.client.post("/api/v1/caption", data={"id": str(gone["id"])})
    located = server.client.post("/api/v1/localize", data={"id": str(gone["id"]), "query": "a road"})
    for response in (thumbnail, caption, located):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["message"] == "tile source unavailable"
        assert str(sources) not in response.text
    assert str(sources) in server.logs()  # the path is in the server's log, for its operator
