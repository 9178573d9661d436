"""Issue 22's "a few cheap requests block the service", in process (so the test can spy and fill pools): labels are
bounded, label embeddings are cached, search keeps answering while the model pool is saturated, /readyz reports
saturation, and queued work whose client has gone is dropped unrun."""

import asyncio
import threading
import time

import pytest
from fastapi.testclient import TestClient

from terravl.server import create_app
from terravl.server.app import service_of
from terravl.server.guards import allowed_hosts
from terravl.server.work import ClientGone, WorkPool


@pytest.fixture(scope="module")
def index(shared_data, tmp_path_factory):
    import terravl.models as m
    from terravl.index import build_index

    out = tmp_path_factory.mktemp("load") / "small.idx"
    build_index(sorted((shared_data / "aid_150px" / "images" / "Port").glob("*.jpg"))[:3], m.load("terravl-default"),
                out, 256, 0)
    return out


@pytest.fixture(scope="module")
def client(index):
    app = create_app([index], preload=False, workers=1, queue=2,
                     allowed_hosts=allowed_hosts("127.0.0.1", ["testserver"]))  # as `--allowed-host testserver`
    with TestClient(app) as client:
        client.service = service_of(app)
        yield client


def test_too_many_or_too_long_labels_are_refused_naming_labels(client):
    many = ",".join(f"l{i}" for i in range(800))  # 4,000 characters of short labels: refused, not 30 s of work
    long = "a forest," + "x" * 150
    huge = ",".join(["y" * 99] * 250)  # over the form field's own bound
    for labels in (many, long, huge):
        response = client.post("/api/v1/classify", data={"id": "1", "labels": labels})
        assert response.status_code in (400, 422), response.text
        assert response.json()["error"]["field"] == "labels"


def test_a_repeated_classify_reuses_the_cached_label_embeddings(client, monkeypatch):
    service = client.service
    encoder = service.encoder(service.store(None).model)
    calls = []
    real = encoder.encode_texts

    def spy(texts, *args, **kwargs):
        calls.append(len(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(encoder, "encode_texts", spy)
    labels = "a harbor with boats,a dense forest,a sandy desert"
    first = client.post("/api/v1/classify", data={"id": "1", "labels": labels})
    assert first.status_code == 200, first.text
    assert calls and sum(calls) >= 3  # three labels × the prompt templates
    encoded = list(calls)
    second = client.post("/api/v1/classify", data={"id": "1", "labels": labels})
    assert second.status_code == 200 and second.json() == first.json()
    assert calls == encoded  # nothing encoded again


def test_search_is_answered_while_the_model_pool_is_saturated(client):
    service = client.service
    gate = threading.Event()
    jobs = [service.heavy.submit(gate.wait) for _ in range(service.heavy.capacity)]  # every worker and queue slot
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 200  # saturation is information, not unreadiness
        pools = ready.json()["pools"]
        assert pools["heavy"] == {"busy": 1, "queued": 2, "capacity": 3, "saturated": True}
        assert pools["light"]["saturated"] is False
        start = time.perf_counter()
        hits = client.get("/api/v1/search", params={"q": "a harbor", "k": 2})
        assert hits.status_code == 200 and len(hits.json()) == 2
        assert time.perf_counter() - start < 5
        refused = client.post("/api/v1/classify", data={"id": "1", "classes": "aid"})
        assert refused.status_code == 503 and refused.headers["retry-after"]
    finally:
        gate.set()
        for job in jobs:
            job.result(10)
    assert client.get("/readyz").json()["pools"]["heavy"]["busy"] == 0


class _Gone:
    async def is_disconnected(self) -> bool:
        return True


def test_queued_work_whose_client_has_gone_is_dropped_unrun():
    pool = WorkPool(1, 4)
    gate, ran = threading.Event(), []
    blocker = pool.submit(gate.wait)

    async def request():
        with pytest.raises(ClientGone):
            await pool.run(ran.append, 1, request=_Gone())

    asyncio.run(request())
    gate.set()
    blocker.result(10)
    pool.shutdown()
    assert ran == [] and pool.pending == 0


def test_unknown_host_is_refused_in_process_too(client):
    assert client.get("/api/v1/indexes", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/api/v1/indexes").status_code == 200


def test_uploads_take_a_band_choice_like_the_cli(client, tmp_path):
    from fakedata import write_geotiff

    s2 = write_geotiff(tmp_path / "s2.tif", 64, 64, count=13, dtype="uint16").read_bytes()
    refused = client.post("/api/v1/classify", files={"image": ("s2.tif", s2)}, data={"labels": "water,forest"})
    assert refused.status_code == 400 and "band profile" in refused.json()["error"]["message"]
    answered = client.post("/api/v1/classify", files={"image": ("s2.tif", s2)},
                           data={"labels": "water,forest", "bands": "sentinel2"})
    assert answered.status_code == 200 and answered.json()["label"] in {"water", "forest"}
    bad = client.post("/api/v1/classify", files={"image": ("s2.tif", s2)}, data={"labels": "a,b", "bands": "9,x"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "bands"
