"""Text searches through the service reuse query embeddings: a repeated query skips the text tower and gives the
same hits."""

from __future__ import annotations

from fastapi.testclient import TestClient

from serverfixture import build_index
from terravl.server import create_app
from terravl.server.app import service_of
from terravl.server.guards import allowed_hosts


def test_repeated_text_searches_hit_the_query_cache(shared_data, tmp_path):
    index = build_index(shared_data, tmp_path / "samples.idx")
    app = create_app([index], preload=False, workers=1, allowed_hosts=allowed_hosts("127.0.0.1", ["testserver"]))
    with TestClient(app) as client:
        service = service_of(app)
        first = client.get("/api/v1/search", params={"q": "a harbor with boats", "k": 3})
        assert first.status_code == 200, first.text
        misses, hits = service.texts.misses, service.texts.hits
        again = client.get("/api/v1/search", params={"q": "a harbor with boats", "k": 3})
        assert again.json() == first.json() and len(first.json()) == 3
        assert (service.texts.misses, service.texts.hits) == (misses, hits + 1)
        other = client.get("/api/v1/search", params={"q": "green farmland", "k": 3})
        assert other.status_code == 200 and service.texts.misses == misses + 1
        assert [h["id"] for h in other.json()] != [h["id"] for h in first.json()]
