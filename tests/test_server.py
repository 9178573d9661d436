"""The HTTP service against a real ``terravl serve`` process on loopback: the API, then hostile input."""

import asyncio
import json
import signal
import threading

import httpx
import pytest

from fakedata import truncate, write_image, write_png_bomb
from serverfixture import API_KEY, Server, build_index


@pytest.fixture(scope="module")
def index(shared_data, tmp_path_factory):
    return build_index(shared_data, tmp_path_factory.mktemp("served") / "archive.idx")


@pytest.fixture(scope="module")
def server(index):
    srv = Server(index, "--max-upload-mb", "2", "--queue", "16")
    yield srv
    srv.stop()


def _error(response) -> dict:
    body = response.json()
    assert set(body["error"]) >= {"field", "message"}, body
    return body["error"]


def test_health_and_readiness_probes(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}  # open without the key
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["indexes"] == ["archive.idx"]


def test_text_search_returns_hits_with_footprints_and_thumbnails(server):
    hits = server.client.get("/api/v1/search", params={"q": "green farmland with fields", "k": 5}).json()
    assert len(hits) == 5 and hits == sorted(hits, key=lambda h: -h["score"])
    assert {"id", "path", "score", "footprint", "thumbnail"} <= set(hits[0])
    geo = [h for h in hits if h["footprint"]]
    assert geo and geo[0]["footprint"]["type"] == "Polygon"
    png = server.client.get(hits[0]["thumbnail"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"


def test_text_search_can_be_reranked_by_the_captioner(server, index):
    """rerank=true gives the re-ranker's order of the plain search's 20 best tiles (scores stay cosines); a
    non-boolean is refused."""
    from terravl.tasks import Reranker, search

    query = "many buildings and roads"
    plain = server.client.get("/api/v1/search", params={"q": query, "k": 20}).json()
    hits = server.client.get("/api/v1/search", params={"q": query, "k": 5, "rerank": "true"}).json()
    cosine = {h["id"]: h["score"] for h in plain}
    assert len(hits) == 5 and all(h["id"] in cosine and h["score"] == pytest.approx(cosine[h["id"]]) for h in hits)
    expected = Reranker.load().rank_hits(query, search(index, text=query, k=20))[:5]
    assert [h["id"] for h in hits] == [h.id for h in expected]
    assert [h["id"] for h in hits] != [h["id"] for h in plain[:5]]  # measured: this query's order changes
    bad = server.client.get("/api/v1/search", params={"q": "farmland", "rerank": "maybe"})
    assert bad.status_code in (400, 422) and _error(bad)["field"] == "rerank"


def test_bbox_and_date_filters(server):
    everything = server.client.get("/api/v1/search", params={"q": "a river", "k": 200}).json()
    naip = [h for h in everything if "naip" in h["path"]]
    lon = [p[0] for h in naip for p in h["footprint"]["coordinates"][0]]
    lat = [p[1] for h in naip for p in h["footprint"]["coordinates"][0]]
    box = f"{min(lon)},{min(lat)},{max(lon)},{max(lat)}"
    inside = server.client.get("/api/v1/search", params={"q": "a river", "k": 200, "bbox": box}).json()
    assert inside and {h["id"] for h in inside} <= {h["id"] for h in everything}
    assert all("naip" in h["path"] for h in inside)
    dated = server.client.get("/api/v1/search", params={"q": "a river", "k": 200, "date_from": "2015-01-01"}).json()
    assert dated and all(h["acquired"] >= "2015-01-01" for h in dated)


def test_search_by_example_image_classify_caption_ask_localize(server, shared_data):
    port = sorted((shared_data / "aid_150px" / "images" / "Port").glob("*.jpg"))[1]  # one of the indexed scenes
    with open(port, "rb") as fh:
        hits = server.client.post("/api/v1/search", files={"image": ("port.jpg", fh, "image/jpeg")},
                                  data={"k": "3"}).json()
    assert len(hits) == 3 and hits[0]["path"].endswith(port.name) and hits[0]["score"] > 0.99  # finds itself
    with open(port, "rb") as fh:
        result = server.client.post("/api/v1/classify", files={"image": ("p.jpg", fh, "image/jpeg")},
                                    data={"classes": "aid"}).json()
    assert result["label"] == "Port" and len(result["top"]) == 5
    tile = hits[0]["id"]
    caption = server.client.post("/api/v1/caption", data={"id": str(tile)}).json()
    assert len(caption["caption"].split()) >= 3 and caption["path"] == hits[0]["path"]
    answer = server.client.post("/api/v1/ask", data={"id": str(tile), "question": "what kind of area is this?"}).json()
    assert answer["question"] == "what kind of area is this?" and answer["answer"]
    naip = server.client.get("/api/v1/search", params={"q": "farmland", "k": 50}).json()
    naip = next(h for h in naip if "naip" in h["path"])
    located = server.client.post("/api/v1/localize", data={"id": str(naip["id"]), "query": "a road",
                                                           "scales": "256", "top": "3"}).json()
    assert located["regions"]["type"] == "FeatureCollection" and len(located["regions"]["features"]) == 3
    heat = server.client.get(located["heatmap"])
    assert heat.status_code == 200 and heat.content[:4] in (b"II*\x00", b"MM\x00*")


def test_ids_only_never_paths(server):
    for path in ["/api/v1/tiles/..%2F..%2Fetc%2Fpasswd", "/api/v1/tiles/%2Fetc%2Fpasswd", "/api/v1/tiles/-1",
                 "/api/v1/tiles/999999", "/api/v1/heatmaps/..%2F..%2Fetc%2Fpasswd", "/api/v1/heatmaps/abc",
                 "/static/..%2F..%2F..%2Fetc%2Fpasswd", "/api/v1/tiles/1?index=..%2F..%2Fetc"]:
        response = server.client.get(path)
        assert response.status_code in (404, 422), path
        assert b"root:" not in response.content
    assert _error(server.client.get("/api/v1/tiles/999999"))["message"].startswith("no tile")


def test_invalid_requests_get_clear_4xx(server):
    assert _error(server.client.get("/api/v1/search", params={"q": "x", "k": 0}))["field"] == "k"
    assert _error(server.client.get("/api/v1/search"))["field"] == "q"
    response = server.client.get("/api/v1/search", params={"q": "x", "bbox": "1,2,three,4"})
    assert response.status_code == 400 and _error(response)["field"] == "bbox"
    response = server.client.post("/api/v1/classify", content=b'{"labels": [', headers={
        "content-type": "application/json"})
    assert response.status_code in (400, 422)
    response = server.client.post("/api/v1/ask", data={"id": "1", "question": "   "})
    assert response.status_code == 400 and _error(response)["field"] == "question"
    response = server.client.post("/api/v1/caption", data={})
    assert response.status_code == 400 and "exactly one" in _error(response)["message"]
    response = server.client.post("/api/v1/classify", data={"id": "1", "labels": "forest"})
    assert response.status_code == 400 and "labels" in _error(response)["field"]


def test_hostile_uploads(server, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (3 << 20))
    with open(big, "rb") as fh:
        response = server.client.post("/api/v1/search", files={"image": ("big.png", fh, "image/png")})
    assert response.status_code == 413 and "limit" in _error(response)["message"]
    bomb = write_png_bomb(tmp_path / "bomb.png")
    with open(bomb, "rb") as fh:
        response = server.client.post("/api/v1/caption", files={"image": ("bomb.png", fh, "image/png")})
    assert response.status_code == 413 and "pixels" in _error(response)["message"]
    broken = truncate(write_image(tmp_path / "broken.jpg", 200, 200), 0.3)
    with open(broken, "rb") as fh:
        response = server.client.post("/api/v1/search", files={"image": ("broken.jpg", fh, "image/jpeg")})
    assert response.status_code == 400 and _error(response)["field"] == "image"
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with open(text, "rb") as fh:
        response = server.client.post("/api/v1/classify", files={"image": ("notes.txt", fh, "text/plain")},
                                      data={"classes": "aid"})
    assert response.status_code == 415 and _error(response)["field"] == "image"  # refused by content (issue 22)
    assert server.client.get("/readyz").status_code == 200  # still serving


def test_api_key_is_required_everywhere_but_the_probes(server):
    for path in ["/", "/docs", "/openapi.json", "/api/v1/indexes", "/api/v1/tiles/1", "/static/app.js"]:
        assert httpx.get(server.url + path).status_code == 401, path
        assert httpx.get(server.url + path, headers={"X-API-Key": "wrong"}).status_code == 401, path
    assert httpx.get(server.url + "/api/v1/indexes", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    page = httpx.get(server.url + f"/?api_key={API_KEY}")
    assert page.status_code == 200 and "terravl_key" in page.headers["set-cookie"]
    assert "HttpOnly" in page.headers["set-cookie"]
    assert httpx.get(server.url + "/static/app.js", cookies={"terravl_key": API_KEY}).status_code == 200


def test_page_docs_and_assets_are_served_locally(server):
    page = server.client.get("/").text
    assert "/vendor/leaflet/leaflet.js" in page and "http" not in page.replace("http-equiv", "")
    assert server.client.get("/vendor/leaflet/leaflet.js").status_code == 200
    docs = server.client.get("/docs").text
    assert "/vendor/swagger/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    spec = server.client.get("/openapi.json").json()
    assert {"/api/v1/search", "/api/v1/caption", "/api/v1/ask", "/api/v1/localize", "/api/v1/classify",
            "/api/v1/tiles/{tile_id}"} <= set(spec["paths"])
    response = server.client.get("/api/v1/indexes", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers  # CORS is off unless configured


def test_a_thousand_concurrent_requests_are_served_or_shed_with_503(server):
    async def storm():
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, headers={"X-API-Key": API_KEY}, limits=limits,
                                     timeout=120) as client:
            async def one(i):
                return await client.get("/api/v1/search", params={"q": f"a harbor {i % 7}", "k": 5})
            return await asyncio.gather(*(one(i) for i in range(1000)), return_exceptions=True)

    responses = asyncio.run(storm())
    errors = [r for r in responses if isinstance(r, Exception)]
    assert not errors, errors[:3]
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and codes.count(200) >= 18
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 503)
    assert server.client.get("/readyz").status_code == 200


def test_structured_logs_and_graceful_shutdown_finishes_requests_in_flight(index):
    srv = Server(index, api_key=None)
    result = {}

    def slow():
        result["response"] = httpx.post(srv.url + "/api/v1/localize", data={"id": "1", "query": "a road",
                                                                            "scales": "64"}, timeout=120)

    thread = threading.Thread(target=slow)
    thread.start()
    import time

    time.sleep(0.5)
    code = srv.stop(signal.SIGTERM)
    thread.join(120)
    assert result["response"].status_code == 200  # the request in flight finished before the process ended
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once its graceful shutdown is done
    lines = [json.loads(line) for line in srv.logs().splitlines() if line.startswith('{"request_id"')]
    assert any(entry["path"] == "/api/v1/localize" and entry["status"] == 200 and entry["ms"] > 0 for entry in lines)


def test_cors_when_configured_answers_preflights_before_the_key_check(index):
    srv = Server(index, "--cors-origin", "http://app.example")
    try:
        preflight = httpx.options(srv.url + "/api/v1/search", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-api-key"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        ok = srv.client.get("/api/v1/indexes", headers={"Origin": "http://app.example"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://app.example"
        assert httpx.get(srv.url + "/api/v1/indexes", headers={"Origin": "http://app.example"}).status_code == 401
        other = srv.client.get("/api/v1/indexes", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        srv.stop()
