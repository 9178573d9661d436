"""Text searches through the service reuse query embeddings: a repeated query skips the text tower and gives the
same hits."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serverfixture import build_index
from terravl.server import create_app
from terravl.server.app import service_of
from terravl.server.guards import allowed_hosts


@pytest.fixture()
def served(shared_data, tmp_path):
    """(client, service, index path) of a server over the samples index, models loaded on first use."""
    index = build_index(shared_data, tmp_path / "samples.idx")
    app = create_app([index], preload=False, workers=1, allowed_hosts=allowed_hosts("127.0.0.1", ["testserver"]))
    with TestClient(app) as client:
        yield client, service_of(app), index


def test_repeated_text_searches_hit_the_query_cache(served):
    client, service, _ = served
    first = client.get("/api/v1/search", params={"q": "a harbor with boats", "k": 3})
    assert first.status_code == 200, first.text
    misses, hits = service.texts.misses, service.texts.hits
    again = client.get("/api/v1/search", params={"q": "a harbor with boats", "k": 3})
    assert again.json() == first.json() and len(first.json()) == 3
    assert (service.texts.misses, service.texts.hits) == (misses, hits + 1)
    other = client.get("/api/v1/search", params={"q": "green farmland", "k": 3})
    assert other.status_code == 200 and service.texts.misses == misses + 1
    assert [h["id"] for h in other.json()] != [h["id"] for h in first.json()]


def test_text_searches_use_the_light_text_side_with_one_thread_per_worker_and_the_full_models_hits(served):
    """The server's searches run side by side in the light pool: the PyTorch-free text side answers them with an
    ONNX session of one core's share of threads, its embeddings cached apart from the full model's, and FAISS
    keeps one thread per search; the hits are the full model's."""
    import terravl.models as m
    from terravl.index.vectors import probe_threads
    from terravl.models.light_text import LightTextEncoder
    from terravl.models.text_onnx import cpu_threads
    from terravl.tasks import search

    client, service, index = served
    got = client.get("/api/v1/search", params={"q": "a river between fields", "k": 4})
    assert got.status_code == 200, got.text
    store = service.store(None)
    used = service.query_encoder(store.model)
    assert isinstance(used.wrapped, LightTextEncoder) and used is service.query_encoder(store.model)
    assert used._model != store.model  # not the full model's cache entries
    threads = used.wrapped.tower.session.get_session_options().intra_op_num_threads
    assert threads == max(1, cpu_threads() // service.light.workers)
    assert service.light.submit(probe_threads).result() is False  # the pools' threads: one FAISS thread
    assert service.heavy.submit(probe_threads).result() is False
    assert probe_threads() is True  # everyone else's threads are left alone
    full = m.load(store.model)
    want = search(index, text="a river between fields", k=4, encoder=full)
    assert [h["id"] for h in got.json()] == [h.id for h in want]
