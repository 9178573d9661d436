"""``terravl mcp`` driven by the MCP SDK's own client, as an assistant drives it: over stdio (the client starts the
server as a subprocess) on an index of real scenes from ../shared/data, then over streamable HTTP."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal

from fakedata import write_png_bomb
from serverfixture import free_port

TOOLS = {"search", "classify", "caption", "describe", "ask", "localize", "ground", "change", "ask_change"}
KB_TOOLS = {"kb_query", "ask_kb"}
KB_SCENES = ("harbor00.jpg", "harbor01.jpg", "golfcourse00.jpg", "storagetanks00.jpg")
API_KEY = "mcp-test-key-0123456789"


def _scenes(shared_data: Path) -> dict[str, list[Path]]:
    aid = shared_data / "aid_150px" / "images"
    return {c: sorted((aid / c).glob("*.jpg"))[:2] for c in ("Port", "Forest")}


@pytest.fixture(scope="module")
def index(shared_data, tmp_path_factory) -> Path:
    """Four AID scenes and a georeferenced Landsat 7 scene (cut into tiles with footprints), with the shipped
    default model."""
    import terravl.models as m
    from terravl.index import build_index

    scenes = _scenes(shared_data)
    sources = [*scenes["Port"], *scenes["Forest"], shared_data / "landsat7_rgb_byte_geotiff" / "RGB.byte.tif"]
    out = tmp_path_factory.mktemp("mcp") / "scenes.idx"
    build_index(sources, m.load("terravl-default"), out, 256, 0)
    return out


@pytest.fixture(scope="module")
def kb(shared_data, tmp_path_factory) -> Path:
    """A knowledge base of four real UCM scenes with their captions (a Karpathy JSON of those records), built
    with the shipped default model."""
    import terravl.models as m
    from terravl.kb import build_kb

    ucm = json.loads((shared_data / "ucm_captions" / "dataset_ucm_captions.json").read_text())
    records = [{**r, "filepath": str(shared_data / r["filepath"])} for r in ucm["images"] if r["filename"] in KB_SCENES]
    assert len(records) == len(KB_SCENES)
    folder = tmp_path_factory.mktemp("mcp-kb")
    (folder / "ucm.json").write_text(json.dumps({"dataset": "ucm", "images": records}))
    report = build_kb([folder / "ucm.json"], m.load("terravl-default"), folder / "site.kb")
    assert report.added >= len(KB_SCENES) and not report.problems
    return folder / "site.kb"


@asynccontextmanager
async def _stdio_session(index: Path, kb: Path, log: Path):
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, env=dict(os.environ),
                                   args=["-m", "terravl.cli.main", "mcp", "--index", str(index), "--kb", str(kb),
                                         "--max-upload-mb", "1"])
    with open(log, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


class Client:
    """A live MCP session over stdio, called from synchronous tests through an anyio portal."""

    def __init__(self, portal, session, log: Path):
        self.portal, self.session, self.log = portal, session, log

    def call(self, tool: str, arguments: dict):
        return self.portal.call(self.session.call_tool, tool, arguments)

    def __getattr__(self, name):
        method = getattr(self.session, name)
        return lambda *args: self.portal.call(method, *args)


@pytest.fixture(scope="module")
def mcp(index, kb, tmp_path_factory):
    log = tmp_path_factory.mktemp("mcp-log") / "server.log"
    with start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(_stdio_session(index, kb, log)) as session:
            yield Client(portal, session, log)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _refused(result) -> dict:
    """The error of a refused call: an isError result naming the field, in text and structured content."""
    assert result.is_error, result
    error = result.structured_content["error"]
    assert result.content[0].text == (f"{error['field']}: {error['message']}" if error["field"] else error["message"])
    return error


def test_every_capability_is_a_tool_with_the_apis_limits_in_its_schema(mcp, index):
    tools = {t.name: t for t in mcp.list_tools().tools}
    assert set(tools) == TOOLS | KB_TOOLS  # served with --kb: the knowledge-base tools too
    assert all(t.output_schema and t.description for t in tools.values())
    search = tools["search"].input_schema["properties"]
    assert search["k"]["maximum"] == 200 and search["k"]["minimum"] == 1  # the HTTP API's MAX_HITS
    choices = next(a for a in search["index"]["anyOf"] if a.get("type") == "string")
    assert choices.get("enum", [choices.get("const")]) == [index.name]  # one served index: a JSON Schema const
    image = next(a for a in search["image"]["anyOf"] if a.get("type") == "string")
    assert 1 << 20 < image["maxLength"] < 1.5 * (1 << 20)  # --max-upload-mb 1, as base64
    assert not [n for t in tools.values() for n in t.input_schema["properties"] if "path" in n or "file" in n]
    query = tools["kb_query"].input_schema["properties"]
    assert query["k"]["maximum"] == 100 and query["k"]["minimum"] == 1  # the HTTP route's MAX_EVIDENCE
    kbs = next(a for a in query["kb"]["anyOf"] if a.get("type") == "string")
    assert kbs.get("enum", [kbs.get("const")]) == ["site"]  # served knowledge bases by name, never a path
    assert tools["kb_query"].input_schema["required"] == ["question"]
    assert {"image", "id", "kb"} <= set(tools["ask_kb"].input_schema["properties"])


def test_search_by_text_gives_hits_with_geojson_footprints_and_thumbnails(mcp, index):
    from terravl.index import IndexStore

    result = mcp.call("search", {"text": "a river through green fields", "k": 5, "thumbnails": 2})
    assert not result.is_error, result.content[0].text
    found = result.structured_content
    hits = found["hits"]
    assert len(hits) == 5 and [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert json.loads(result.content[0].text) == found
    geo = [h for h in hits if h["footprint"]]
    assert geo and geo[0]["footprint"]["type"] == "Polygon" and "RGB.byte.tif" in geo[0]["path"]
    assert found["geojson"]["type"] == "FeatureCollection" and len(found["geojson"]["features"]) == 5
    images = [c for c in result.content if c.type == "image"]
    assert len(images) == 2 and all(base64.b64decode(c.data)[:4] == b"\x89PNG" for c in images)
    tile = mcp.read_resource(hits[0]["tile"]).contents[0]
    assert tile.mime_type == "image/png" and base64.b64decode(tile.blob)[:4] == b"\x89PNG"
    listing = json.loads(mcp.read_resource("terravl://indexes").contents[0].text)
    with IndexStore(index, readonly=True) as store:
        assert listing == [{"name": index.name, "tiles": store.count(), "sources": 5, "model": store.model,
                            "extent": store.info()["bbox"], "acquired": None,
                            "tile_uri": f"terravl://indexes/{index.name}/tiles/{{id}}"}]


def test_search_by_text_can_be_reranked_and_an_image_query_cannot(mcp, shared_data):
    plain = mcp.call("search", {"text": "many buildings and roads", "k": 20, "thumbnails": 0})
    result = mcp.call("search", {"text": "many buildings and roads", "k": 5, "thumbnails": 0, "rerank": True})
    assert not result.is_error, result.content[0].text
    before = plain.structured_content["hits"]
    cosine = {h["id"]: h["score"] for h in before}
    hits = result.structured_content["hits"]
    assert len(hits) == 5 and all(abs(h["score"] - cosine[h["id"]]) < 1e-6 for h in hits)
    assert [h["id"] for h in hits] != [h["id"] for h in before[:5]]  # measured: this query's order changes
    port = _scenes(shared_data)["Port"][1]
    assert _refused(mcp.call("search", {"image": _b64(port), "rerank": True}))["field"] == "rerank"
    assert mcp.call("search", {"text": "roads", "rerank": "if you like"}).is_error  # not a boolean: the schema


def test_search_by_example_image_finds_the_scene_itself(mcp, shared_data):
    port = _scenes(shared_data)["Port"][1]
    result = mcp.call("search", {"image": _b64(port), "k": 3, "thumbnails": 0})
    assert not result.is_error, result.content[0].text
    best = result.structured_content["hits"][0]
    assert best["path"].endswith(port.name) and best["score"] > 0.99
    assert [c.type for c in result.content] == ["text"]


def test_classify_and_caption_an_image_sent_as_data(mcp, shared_data):
    port = _b64(_scenes(shared_data)["Port"][0])
    classified = mcp.call("classify", {"image": port, "classes": "aid", "k": 3})
    assert not classified.is_error, classified.content[0].text
    assert classified.structured_content["label"] == "Port" and len(classified.structured_content["top"]) == 3
    assert classified.structured_content["path"] == "upload"  # never a server file name
    labelled = mcp.call("classify", {"image": f"data:image/jpeg;base64,{port}", "labels": ["a harbor", "a forest"]})
    assert labelled.structured_content["label"] == "a harbor"
    captioned = mcp.call("caption", {"image": port})
    assert not captioned.is_error and len(captioned.structured_content["caption"].split()) >= 3
    described = mcp.call("describe", {"image": port, "max_objects": 2})
    assert not described.is_error, described.content[0].text
    found = described.structured_content
    assert found["path"] == "upload" and found["caption"] and found["description"].lower().startswith(found["caption"][:10].lower())
    assert found["scene"]["label"] and len(found["description"]) > len(found["caption"])


def test_ground_an_indexed_tile_gives_a_georeferenced_answer_files_and_a_preview(mcp, index):
    from terravl.index import IndexStore

    with IndexStore(index, readonly=True) as store:
        rows = store.rows(range(1, store.count() + 1))
    tile = next(i for i, r in sorted(rows.items()) if r.source.endswith("RGB.byte.tif"))
    result = mcp.call("ground", {"expression": "the river", "id": tile, "all": True, "method": "baseline"})
    assert not result.is_error, result.content[0].text
    found = result.structured_content
    assert found["method"] == "baseline" and found["coordinates"] == "wgs84" and found["outputs"] is None
    assert found["path"].startswith(f"tile {tile} of ") and found["found"] == bool(found["instances"])
    assert all(i["box"]["type"] == "Polygon" for i in found["instances"])
    assert set(found["files"]) == {"mask", "score", "regions", "preview"}
    mask = mcp.read_resource(found["files"]["mask"]).contents[0]
    assert mask.mime_type == "image/tiff" and base64.b64decode(mask.blob)[:2] in (b"II", b"MM")
    regions = json.loads(mcp.read_resource(found["files"]["regions"]).contents[0].text)
    assert regions["type"] == "FeatureCollection" and len(regions["features"]) == len(found["instances"])
    previews = [c for c in result.content if c.type == "image"]
    assert len(previews) == 1 and base64.b64decode(previews[0].data)[:4] == b"\x89PNG"
    empty = _refused(mcp.call("ground", {"expression": "a\x01b", "id": tile}))
    assert empty["field"] == "expression"


def test_kb_query_ranks_evidence_from_the_served_knowledge_base(mcp, kb):
    result = mcp.call("kb_query", {"question": "boats docked at a harbor", "k": 3})
    assert not result.is_error, result.content[0].text
    found = result.structured_content
    assert found["kb"] == "site" and found["found"] and json.loads(result.content[0].text) == found
    evidence = found["evidence"]
    assert 1 <= len(evidence) <= 3 and [e["rank"] for e in evidence] == list(range(1, len(evidence) + 1))
    assert evidence[0]["source"] in KB_SCENES and evidence[0]["source"].startswith("harbor"), evidence[0]
    assert all("/" not in e["source"] for e in evidence)  # a file name, never a server path
    assert [e["score"] for e in evidence] == sorted((e["score"] for e in evidence), reverse=True)
    assert found["geojson"] == {"type": "FeatureCollection", "features": []}  # UCM scenes have no georeference
    assert str(kb.parent) not in result.content[0].text
    listing = json.loads(mcp.read_resource("terravl://kbs").contents[0].text)
    assert [(k["name"], k["images"], k["model"]) for k in listing] == [("site", len(KB_SCENES), "terravl-default")]


def test_ask_kb_answers_with_citations_about_the_kb_and_about_an_image(mcp, shared_data, kb):
    result = mcp.call("ask_kb", {"question": "where are lots of boats docked?"})
    assert not result.is_error, result.content[0].text
    answer = result.structured_content
    assert answer["kb"] == "site" and answer["path"] is None and answer["answer"]
    ranks = {e["rank"] for e in answer["evidence"]}
    assert answer["found"] and answer["citations"] and set(answer["citations"]) <= ranks
    assert any(f"[{c}]" in answer["answer"] for c in answer["citations"])
    port = _b64(_scenes(shared_data)["Port"][0])
    about = mcp.call("ask_kb", {"question": "what kind of area is this?", "image": port, "kb": "site"})
    assert not about.is_error, about.content[0].text
    assert about.structured_content["path"] == "upload" and about.structured_content["image_answer"]
    assert str(kb.parent) not in about.content[0].text and str(shared_data) not in about.content[0].text


def test_bad_arguments_unknown_index_and_oversized_images_are_clear_tool_errors(mcp, shared_data, tmp_path):
    port = _b64(_scenes(shared_data)["Port"][0])
    bomb = _b64(write_png_bomb(tmp_path / "bomb.png"))
    gif = base64.b64encode(b"GIF89a" + bytes(64)).decode()
    big = base64.b64encode(os.urandom((1 << 20) + 1000)).decode()
    cases = [
        ("search", {"text": "a harbor", "k": 5000}, "k", "less than or equal to 200"),
        ("search", {"text": "a harbor", "bbox": "1,2,3"}, "bbox", "four"),
        ("search", {"text": "a harbor", "index": "elsewhere.idx"}, "index", "no index named 'elsewhere.idx'"),
        ("search", {"text": "a harbor", "path": "/etc/passwd"}, "path", "never as a path"),
        ("search", {}, "text/image", "exactly one of a text query"),
        ("classify", {"image": port, "labels": ["only one"]}, "labels", "at least two"),
        ("classify", {"image": "/etc/hosts", "classes": "aid"}, "image", "not valid base64"),
        ("classify", {"image": gif, "classes": "aid"}, "image", "not a JPEG, PNG"),
        ("caption", {"image": bomb}, "image", "exceeds the upload limit"),
        ("caption", {"image": big}, "image", "over the upload limit of 1,048,576 bytes"),
        ("ask", {"image": port}, "question", "is required"),
        ("caption", {"id": 10**9}, "id", "no tile"),
        ("kb_query", {"question": "boats", "kb": "notes"}, "kb", "no knowledge base named 'notes'; served: site"),
        ("ask_kb", {"question": "boats?", "kb": str(tmp_path / "site.kb")}, "kb", "no knowledge base named"),
        ("kb_query", {"question": "boats", "k": 101}, "k", "less than or equal to 100"),
        ("kb_query", {"question": "boats", "date_from": "2020-99-01"}, "date_from", ""),
        ("kb_query", {"question": "boats", "kb_path": "/etc/passwd"}, "kb_path", "never as a path"),
    ]
    for tool, arguments, field, words in cases:
        error = _refused(mcp.call(tool, arguments))
        assert error["field"] == field and words in error["message"], (tool, arguments, error)
    assert "Unknown tool" in _refused(mcp.call("rm", {}))["message"]
    assert not mcp.call("search", {"text": "a harbor", "k": 1}).is_error  # still serving: nothing crashed
    assert "Traceback" not in mcp.log.read_text()


def test_http_transport_lists_and_calls_tools_behind_the_api_key(index, tmp_path):
    import anyio
    import httpx
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    log = open(tmp_path / "http.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "terravl.cli.main", "mcp", "--index", str(index), "--transport",
                             "http", "--port", str(port), "--api-key", API_KEY], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "http.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "the MCP HTTP server did not start in 90 s"
                time.sleep(0.3)
        assert httpx.post(url, json={}).status_code == 401  # the HTTP API's own guard: no key, no entry

        async def session():
            async with httpx2.AsyncClient(headers={"X-API-Key": API_KEY}, timeout=httpx2.Timeout(30, read=120)) as http:
                async with streamable_http_client(url, http_client=http) as (read, write):
                    async with ClientSession(read, write) as client:
                        await client.initialize()
                        names = {t.name for t in (await client.list_tools()).tools}
                        return names, await client.call_tool("search", {"text": "a forest", "k": 2, "thumbnails": 1})

        names, result = anyio.run(session)
        assert names == TOOLS  # no --kb: no knowledge-base tools offered that could only fail
        assert not result.is_error and len(result.structured_content["hits"]) == 2
        assert [c.type for c in result.content if c.type == "image"] == ["image"]
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_help_teaches_and_a_knowledge_base_must_be_one(index, capsys, tmp_path):
    from terravl.cli.main import main

    assert main(["mcp", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Model Context Protocol" in text and '"mcpServers"' in text and '"args": ["mcp", "--index"' in text
    assert "--kb KB" in text and "kb_query" in text and "ask_kb" in text
    assert main(["mcp", "--index", str(index), "--kb", str(tmp_path / "notes.kb")]) == 2
    assert "notes.kb" in capsys.readouterr().err
    (tmp_path / "notes.kb").write_text("not a knowledge base")
    assert main(["mcp", "--index", str(index), "--kb", str(tmp_path / "notes.kb")]) == 2  # as `terravl serve --kb`
    err = capsys.readouterr().err
    assert "notes.kb" in err and "knowledge base" in err and "Traceback" not in err
