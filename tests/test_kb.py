"""Knowledge bases (RS-RAG): building from every kind of source with bad items reported while the build goes on,
crash safety and resumption, hybrid retrieval with filters, grounded answers with citations, the not-found
answer, a local causal LM answering, the CLI and the HTTP routes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fakedata import write_geotiff, write_image, write_karpathy
from terravl.cli.main import main
from terravl.errors import InputError
from terravl.kb import SCENE_CLASSES, KBStore, build_kb, retrieve
from terravl.models.encoder import EncodedImages
from terravl.tasks.rag import ask_kb, question_type


class WordEncoder:
    """A deterministic stand-in for a dual encoder: texts are hashed bags of words, images their mean colour in
    the first three dimensions. Unrelated texts are orthogonal, so relevance is exactly predictable."""

    name = source = "word-encoder"
    embed_dim = 64

    def encode_texts(self, texts, batch_size: int = 256) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                if len(word) > 3:
                    out[row, 3 + int(hashlib.md5(word.encode()).hexdigest(), 16) % (self.embed_dim - 3)] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    def _image(self, image) -> np.ndarray:
        from terravl.models.images import to_pil

        arr = np.asarray(to_pil(image), np.float32).reshape(-1, 3).mean(0) / 255 + 0.05
        vec = np.zeros(self.embed_dim, np.float32)
        vec[:3] = arr
        return vec / np.linalg.norm(vec)

    def encode_images(self, images, batch_size: int = 32, progress=None, **_) -> np.ndarray:
        return np.stack([self._image(i) for i in images])

    def encode_batch(self, images, batch_size: int = 32, progress=None, **_) -> EncodedImages:
        return EncodedImages(self.encode_images(images), list(range(len(images))), [])


def _solid(path, colour, size=48):
    from PIL import Image

    Image.new("RGB", (size, size), colour).save(path)
    return path


def _sources(root):
    """A small archive of mixed sources, with bad items planted."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.md").write_text("# Harbour survey\n\nThe harbour of Porto Alegre has twelve piers and a "
                                    "container terminal built in 1998.\n\n## Forest\n\nThe pine forest north of the "
                                    "town burned in the summer of 2019.\n", encoding="utf-8")
    (root / "notes.txt").write_text("Flooding along the river damaged the old mill.\n\nThe mill was rebuilt "
                                    "with stone walls.\n", encoding="utf-8")
    (root / "sites.csv").write_text(
        "text,lon,lat,date,url\n"
        "A new bridge crosses the river at the ferry landing,10.5,45.2,2020-05-01,http://example.org/b\n"
        "Solar panels cover the roof of the depot,200,45,2020-01-01,\n"
        "Vineyards on the southern slope,10.7,45.3,2020-13-01,\n"
        "Orchards planted east of the quarry,11.5,46.1,2018-03-09,\n", encoding="utf-8")
    (root / "records.jsonl").write_text(
        json.dumps({"text": "Wetland restoration started near the estuary", "bbox": [12, 44, 12.5, 44.5],
                    "date": "2021-06-30"}) + "\n{not json\n" + json.dumps({"description": ""}) + "\n",
        encoding="utf-8")
    (root / "nocol.csv").write_text("name,lon,lat\nfoo,1,2\n", encoding="utf-8")
    (root / "empty.txt").write_text("   \n", encoding="utf-8")
    (root / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    (root / "latin1.txt").write_bytes("Caf\xe9 au bord du fleuve".encode("latin-1"))
    (root / "copy_of_notes.txt").write_text((root / "notes.txt").read_text(encoding="utf-8"), encoding="utf-8")
    images = root / "images"
    images.mkdir(exist_ok=True)
    _solid(images / "green.png", (20, 160, 30))
    (images / "green.json").write_text(json.dumps({"text": "Dense forest canopy seen from above", "lon": 10.6,
                                                   "lat": 45.25, "date": "2019-08-01", "label": "forest"}))
    _solid(images / "blue.png", (20, 40, 200))
    (images / "blue.md").write_text("Open water of the harbour basin with moored boats.", encoding="utf-8")
    _solid(images / "red.png", (200, 30, 30))
    (images / "red.json").write_text(json.dumps({"text": "Red roofs", "lat": 95, "lon": 10}))
    return root


def _problems(report) -> dict[str, str]:
    return {p.path.split("/")[-1]: p.error for p in report.problems}


def test_build_reports_bad_items_while_it_goes_on_and_reruns_skip_what_is_there(tmp_path, monkeypatch):
    import terravl.kb.text

    root = _sources(tmp_path / "src")
    (root / "huge.txt").write_text("word " * 400, encoding="utf-8")
    (root / "utf16.txt").write_bytes("Rivière en crue près du moulin".encode("utf-16"))
    monkeypatch.setattr(terravl.kb.text, "MAX_TEXT_BYTES", 1000)
    out = tmp_path / "site.kb"
    report = build_kb([root], WordEncoder(), out, batch_size=3)
    problems = _problems(report)
    assert "too large" in problems["huge.txt"] and "utf16.txt" not in problems
    assert "empty text file" in problems["empty.txt"]
    assert "binary" in problems["binary.txt"]
    assert "not UTF-8" in problems["latin1.txt"] and "0xe9" in problems["latin1.txt"]
    assert "no text column" in problems["nocol.csv"]
    assert "invalid coordinates" in problems["sites.csv#row 3"] and "skipped" in problems["sites.csv#row 3"]
    assert "invalid date" in problems["sites.csv#row 4"]
    assert "invalid JSON" in problems["records.jsonl#line 2"] and "no text" in problems["records.jsonl#line 3"]
    assert "invalid coordinates" in problems["red.json"] and "without its sidecar" in problems["red.json"]
    dup = [p for p in report.problems if "duplicate source" in p.error]
    assert len(dup) == 1 and "notes.txt" in dup[0].error  # the copy is refused, naming the original
    with KBStore(out) as store:
        info = store.info()
        assert info["images"] == 3 and info["items"] == report.added == report.items_seen
        assert store.db.execute("SELECT COUNT(*) FROM items WHERE text LIKE 'Rivière en crue%'").fetchone()[0] == 1
        assert info["problems"] == len(report.problems)  # the problems are kept in the file too
        assert info["dates"] == ["2018-03-09", "2021-06-30"]
        rows = store.items(range(1, info["items"] + 1))
        green = next(r for r in rows.values() if r.source.endswith("green.png"))
        assert green.text == "Dense forest canopy seen from above" and green.label == "forest"
        assert (green.lon, green.lat, green.date) == (10.6, 45.25, "2019-08-01")
        assert any(r.ref == "§ Harbour survey" and "twelve piers" in r.text for r in rows.values())
        assert any(r.url == "http://example.org/b" for r in rows.values())

    again = build_kb([root], WordEncoder(), out)
    assert again.added == 0 and again.sources_skipped == again.sources - len(
        [p for p in again.problems if "duplicate" in p.error]) - 5  # the 5 unreadable files are read again
    (root / "more.md").write_text("A ferry links the two banks of the river.", encoding="utf-8")
    third = build_kb([root / "more.md", root / "more.md"], WordEncoder(), out)
    assert third.added == 1 and any("given twice" in p.error for p in third.problems)


def test_a_failing_build_keeps_committed_batches_and_a_rerun_completes_it(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        _solid(folder / f"s{i:02d}.png", (10 * i, 200 - 10 * i, 90))

    class Crashing(WordEncoder):
        calls = 0

        def encode_batch(self, images, **kw):
            Crashing.calls += 1
            if Crashing.calls == 3:
                raise KeyboardInterrupt  # as a Ctrl-C or a kill would stop it mid-build
            return super().encode_batch(images, **kw)

    out = tmp_path / "a.kb"
    with pytest.raises(KeyboardInterrupt):
        build_kb([folder], Crashing(), out, batch_size=4)
    with KBStore(out) as store:
        assert store.count() == 8  # the two committed batches
    report = build_kb([folder], WordEncoder(), out, batch_size=4)
    assert report.added == 4
    with KBStore(out) as store:
        assert store.count() == 12
        assert len({r[0] for r in store.db.execute("SELECT key FROM items")}) == 12


def test_kill_9_during_kb_build_loses_nothing_and_rerun_completes(tmp_path, tiny_model):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(80):
        write_image(folder / f"s{i:03d}.png", 32, 32, seed=2000 + i)
    out = tmp_path / "k.kb"
    cmd = [sys.executable, "-m", "terravl.cli.main", "kb", "build", str(folder), "--out", str(out), "--model",
           str(tiny_model), "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(3)
    previous, interrupted = 0, 0
    for _ in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline, target = time.time() + 60, min(previous + rng.randint(6, 20), 60)
        while time.time() < deadline and proc.poll() is None:
            try:
                if out.exists() and KBStore(out, readonly=True).count() >= target:
                    break
            except Exception:  # noqa: BLE001 - the file may be mid-creation
                pass
            time.sleep(rng.uniform(0.005, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with KBStore(out, readonly=True) as store:
            count = store.count()
        assert count >= previous
        interrupted += 0 < count < 80
        previous = count
    assert interrupted, "every build finished before its kill; the test did not exercise a crash"
    done = subprocess.run(cmd + ["--format", "json"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == 80 - previous
    with KBStore(out, readonly=True) as store:
        assert store.count() == 80


@pytest.fixture()
def site_kb(tmp_path):
    out = tmp_path / "site.kb"
    build_kb([_sources(tmp_path / "src"), SCENE_CLASSES], WordEncoder(), out)
    return out


def test_hybrid_retrieval_fuses_the_retrievers_and_filters(site_kb):
    enc = WordEncoder()
    with KBStore(site_kb, readonly=True) as store:
        result = retrieve(store, enc, "how many piers has the harbour of Porto Alegre?", k=5)
        top = result.evidence[0]
        assert "twelve piers" in top.text and {"bm25", "dense"} <= set(top.retrievers)
        assert result.found and [e.rank for e in result.evidence] == [1, 2, 3, 4, 5]
        assert all(a.score >= b.score for a, b in zip(result.evidence, result.evidence[1:]))
        only_bm25 = retrieve(store, enc, "piers Porto Alegre", retrievers="bm25", rerank=False)
        assert set().union(*(e.retrievers for e in only_bm25.evidence)) == {"bm25"}
        # a filter keeps only items located in the box, or dated in the range
        boxed = retrieve(store, enc, "river bridge ferry orchards wetland", bbox="10,45,11,46", k=20)
        assert boxed.evidence and all(10 <= e.lon <= 11 and 45 <= e.lat <= 46 for e in boxed.evidence)
        dated = retrieve(store, enc, "river bridge ferry orchards wetland forest", date_from="2019-01-01",
                         date_to="2020-12-31", k=20)
        assert dated.evidence and all("2019-01-01" <= e.date <= "2020-12-31" for e in dated.evidence)
        # a query image finds the image of its colour first (image → image)
        by_image = retrieve(store, enc, None, np.full((32, 32, 3), (20, 150, 35), np.uint8), k=3,
                            retrievers="image")
        assert by_image.evidence[0].source.endswith("green.png")
        with pytest.raises(InputError, match="retrievers"):
            retrieve(store, enc, "x", retrievers="magic")
        with pytest.raises(InputError, match="bbox"):
            retrieve(store, enc, "x", bbox="1,2,3")


def test_answers_cite_their_evidence_and_nothing_relevant_is_not_found(site_kb):
    enc = WordEncoder()
    answer = ask_kb(site_kb, "when did the pine forest north of the town burn?", encoder=enc)
    assert answer.found and answer.answered_by.startswith("TerraVL's answerer")
    assert "2019" in answer.answer and answer.citations
    for n in answer.citations:  # every citation is in the answer and points into the evidence list
        assert f"[{n}]" in answer.answer and answer.evidence[n - 1].rank == n
    assert "pine forest" in answer.evidence[answer.citations[0] - 1].text

    nothing = ask_kb(site_kb, "what was the population of Lisbon in 1755?", encoder=enc)
    assert not nothing.found and nothing.citations == [] and nothing.short is None
    assert nothing.answer.startswith("Not found in the knowledge base")
    assert f"{nothing.best_relevance:.2f}" in nothing.answer and nothing.answered_by.startswith("nobody")
    assert "1755" not in nothing.answer and "Lisbon" not in nothing.answer  # nothing invented

    strict = ask_kb(site_kb, "when did the pine forest north of the town burn?", encoder=enc, min_relevance=0.99)
    assert not strict.found and "below 0.99" in strict.answer  # the threshold is the caller's to set

    scene = ask_kb(site_kb, "what kind of area has moored boats and yachts along floating docks?", encoder=enc)
    assert scene.question_type == "scene" and scene.short == "harbor" and scene.citations


def test_question_types():
    assert question_type("What kind of area is this?") == "scene"
    assert question_type("what type of scene is shown?") == "scene"
    assert question_type("is there a car in this image?") == "presence"
    assert question_type("are there any storage tanks?") == "presence"
    assert question_type("when did the forest burn?") == "open"


class FakeCaptioner:
    """The VQA bridge's interface: answers 'yes' to presence questions, 'harbor' otherwise."""

    name = "fake-captioner"

    def __init__(self, encoder):
        self.encoder = encoder

    def generate(self, features, prompts, **_):
        prompts = [prompts] * len(features) if isinstance(prompts, str) else prompts
        return ["yes" if "is there" in p else "a harbour basin with boats" if p == "caption:" else "harbor"
                for p in prompts]


def test_image_questions_use_the_vqa_bridge_and_the_evidence(site_kb):
    enc = WordEncoder()
    image = np.full((32, 32, 3), (20, 40, 200), np.uint8)
    answer = ask_kb(site_kb, "what kind of area is this?", image, enc, FakeCaptioner(enc), path="q.png")
    assert answer.image_answer == "harbor" and answer.image_description == "a harbour basin with boats"
    assert answer.short == "harbor" and "VQA bridge" in answer.answered_by and answer.path == "q.png"
    presence = ask_kb(site_kb, "is there a boat in this image?", image, enc, FakeCaptioner(enc))
    assert presence.question_type == "presence" and presence.short in ("yes", "no")
    assert "most similar images" in presence.answer


def _save_tiny_gpt2(folder):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from terravl.models.word_tokenizer import train_word_tokenizer

    torch.manual_seed(0)
    tok = train_word_tokenizer(["the harbour has twelve piers", "answer the question using the context",
                                "question answer context forest burned"] * 2, 1)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id))
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_local_causal_lm_writes_the_answer_from_the_evidence(site_kb, tmp_path):
    lm = _save_tiny_gpt2(tmp_path / "tiny-gpt2")
    enc = WordEncoder()
    answer = ask_kb(site_kb, "how many piers has the harbour of Porto Alegre?", encoder=enc, lm=lm)
    assert answer.found and answer.answered_by.startswith("language model tiny-gpt2")
    assert answer.citations and all(1 <= n <= len(answer.evidence) for n in answer.citations)
    nothing = ask_kb(site_kb, "what was the population of Lisbon in 1755?", encoder=enc, lm=lm)
    assert not nothing.found and nothing.answer.startswith("Not found")  # the LM is not asked to invent one
    with pytest.raises(InputError, match="config.json"):
        ask_kb(site_kb, "anything?", encoder=enc, lm=tmp_path)


def _run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_build_add_info_query_and_ask(tmp_path, tiny_model, capsys):
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.md").write_text("# Depot\n\nSolar panels cover the depot roof since 2020.\n", encoding="utf-8")
    (root / "bad.csv").write_text("name\nx\n", encoding="utf-8")
    write_image(root / "scene.png", 40, 40, seed=4)
    write_geotiff(tmp_path / "big.tif", width=520, height=300)
    data = write_karpathy(tmp_path / "k" / "d.json", n_train=4, n_test=2)
    kb = tmp_path / "cli.kb"
    code, out, err = _run(capsys, "kb", "build", root, data, "--split", "train", "--out", kb, "--model", tiny_model,
                          "--format", "json")
    assert code == 0, err
    built = json.loads(out)
    assert built["added"] == 1 + 1 + 4 and "no text column" in err and "bad.csv" in err
    code, out, err = _run(capsys, "kb", "add", kb, tmp_path / "big.tif", "--scene-classes", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["added"] == 3 * 2 + 52  # the raster's tiles and the scene-class sections
    code, out, err = _run(capsys, "kb", "info", kb, "--format", "json")
    info = json.loads(out)
    assert info["images"] == 1 + 4 + 6 and info["model"] == str(tiny_model) and info["located"] == 6
    code, out, err = _run(capsys, "kb", "info", kb)
    assert code == 0 and "passages" in out
    code, out, err = _run(capsys, "kb", "query", kb, "solar panels depot", "--k", "3", "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["evidence"]) == 3 and "timings_ms" in result
    assert "bm25" in result["evidence"][0]["retrievers"] and "Solar" in result["evidence"][0]["text"]
    code, out, err = _run(capsys, "kb", "query", kb, "--image", root / "scene.png", "--no-describe", "--format",
                          "json")
    assert code == 0, err
    assert json.loads(out)["evidence"][0]["source"].endswith("scene.png")  # the same pixels come first
    code, out, err = _run(capsys, "kb", "query", kb, "solar", "--bbox", "nonsense")
    assert code == 2 and "bbox" in err
    code, out, err = _run(capsys, "kb", "query", tmp_path / "missing.kb", "x")
    assert code == 2 and "no knowledge base" in err
    code, out, err = _run(capsys, "ask", "--kb", kb, "what covers the depot roof?", "--format", "json")
    assert code == 0, err
    answer = json.loads(out)
    assert {"answer", "answered_by", "citations", "evidence", "found", "best_relevance"} <= set(answer)
    code, out, err = _run(capsys, "ask", "--kb", kb, "what covers the depot roof?")
    assert code == 0 and "answered by" in out and "evidence" in out
    code, out, err = _run(capsys, "ask", "--kb", kb, "--before", root / "scene.png", "--after", root / "scene.png",
                          "what changed?")
    assert code == 2 and "--kb" in err
    code, out, err = _run(capsys, "ask", "--lm", tmp_path, "what?", root / "scene.png")
    assert code == 2 and "need --kb" in err
    code, out, err = _run(capsys, "ask", "--kb", kb, "what?", "--min-relevance", "5")
    assert code == 2 and "min_relevance" in err
    code, out, err = _run(capsys, "kb", "build", tmp_path / "nothing-here", "--out", tmp_path / "n.kb",
                          "--model", tiny_model)
    assert code == 2 and "no such file" in err


def test_not_found_with_the_shipped_model(tmp_path):
    """The real default encoder and the shipped scene-class descriptions: an unrelated question is not found,
    a question about a described class is, with citations."""
    import terravl.models as m

    out = tmp_path / "scenes.kb"
    encoder = m.load("terravl-default")
    build_kb([SCENE_CLASSES], encoder, out)
    nothing = ask_kb(out, "what was the GDP of France in 1850?", encoder=encoder)
    assert not nothing.found and nothing.answer.startswith("Not found in the knowledge base")
    golf = ask_kb(out, "what does a golf course look like from above?", encoder=encoder)
    assert golf.found and "golf" in golf.answer.lower() and golf.citations


def test_http_kb_query_and_ask_with_a_served_kb(tmp_path, tiny_model):
    from fastapi.testclient import TestClient

    import terravl.models as m
    from terravl.index import build_index
    from terravl.server import create_app

    enc = m.load(str(tiny_model))
    index = tmp_path / "a.idx"
    write_image(tmp_path / "t.png", 32, 32, seed=9)
    build_index([tmp_path / "t.png"], enc, index)
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.md").write_text("# Depot\n\nSolar panels cover the depot roof since 2020.\n", encoding="utf-8")
    kb = tmp_path / "site.kb"
    build_kb([root], enc, kb)
    report = build_kb([index], enc, kb)  # an index's tiles join with the vectors it already has
    assert report.added == 1
    with KBStore(kb) as store:
        vectors = store.vectors("image")
        assert np.allclose(vectors.matrix[0], enc.encode_images([tmp_path / "t.png"])[0], atol=1e-5)
    app = create_app([index], preload=False, workers=1, kbs=[kb])
    with TestClient(app) as client:
        assert client.get("/api/v1/kbs").json()[0]["name"] == "site"
        r = client.get("/api/v1/kb/query", params={"q": "solar panels", "kb": "site", "k": 2})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["kb"] == "site" and body["evidence"][0]["source"] == "a.md"  # a file name, never a path
        r = client.post("/api/v1/ask", data={"question": "what covers the depot roof?", "kb": "site"})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["kb"] == "site" and "answered_by" in answer and answer["evidence"]
        assert str(tmp_path) not in r.text
        with open(tmp_path / "t.png", "rb") as fh:  # about an uploaded image: the VQA bridge and the evidence
            r = client.post("/api/v1/ask", data={"question": "what kind of area is this?", "kb": "site"},
                            files={"image": ("t.png", fh, "image/png")})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["path"] == "upload" and answer["image_answer"] and answer["question_type"] == "scene"
        assert str(tmp_path) not in r.text
        # a citation of an image item can be shown: its picture by the evidence id, never by path
        items = client.get("/api/v1/kb/query", params={"q": "solar panels", "kb": "site", "k": 5}).json()["evidence"]
        image = next(e for e in items if e["kind"] == "image")
        passage = next(e for e in items if e["kind"] == "text")
        png = client.get(f"/api/v1/kb/items/{image['id']}/image", params={"kb": "site", "size": 64})
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG" and png.headers["content-type"] == "image/png"
        from PIL import Image as PILImage
        import io as _io

        assert PILImage.open(_io.BytesIO(png.content)).size == (32, 32)  # smaller than size: never enlarged
        text_item = client.get(f"/api/v1/kb/items/{passage['id']}/image", params={"kb": "site"})
        assert text_item.status_code == 404 and "passage" in text_item.json()["error"]["message"]
        assert client.get("/api/v1/kb/items/9999/image", params={"kb": "site"}).status_code == 404
        assert client.get(f"/api/v1/kb/items/{image['id']}/image", params={"kb": "../site"}).status_code == 404
        assert client.get("/api/v1/kb/items/0/image").status_code == 422
        page, script = client.get("/").text, client.get("/static/app.js").text
        assert 'id="kb-panel"' in page and "/api/v1/kb/items/" in script and "/api/v1/kbs" in script
        assert client.post("/api/v1/ask", data={"question": "x?", "kb": "/etc/passwd"}).status_code == 404
        assert client.get("/api/v1/kb/query", params={"q": "x", "kb": str(kb)}).status_code == 404
        assert client.get("/api/v1/kb/query", params={"q": "x", "date_from": "2020-99-01"}).status_code in (400, 422)


def test_eval_kb_measures_evidence_answers_and_captions(tmp_path):
    from terravl.eval.kb import CONFIGS, evaluate_kb

    data = write_karpathy(tmp_path / "d" / "d.json", n_train=8, n_test=4)
    kb = tmp_path / "train.kb"
    enc = WordEncoder()
    report = build_kb([data, SCENE_CLASSES], enc, kb, split="train")
    assert report.added == 8 + 52 and not report.problems
    result = evaluate_kb(kb, [(data, "test")], FakeCaptioner(enc), enc)
    one = result["datasets"]["d:test"]
    assert one["images"] == 4 and set(one["precision_at_5"]) == set(CONFIGS)
    assert all(0 <= v <= 100 for v in one["precision_at_5"].values())
    assert one["answers"]["questions"] == 8  # a scene and a presence ("no": never named in the class) question each
    assert set(one["answers"]["with kb"]["per_type"]) == {"scene", "presence"}
    assert {"plain captioner", "retrieval-augmented"} == set(one["captions"])
    assert "CIDEr" in one["captions"]["retrieval-augmented"]


def test_a_kb_refuses_an_encoder_with_other_weights_under_the_same_name(tmp_path, tiny_model):
    """A model retrained and reinstalled under its old name (terravl-default v1 → v2) makes old vectors
    incomparable: querying or extending the knowledge base says so instead of answering from them."""
    import torch

    import terravl.models as m
    from terravl.kb import KBOpenError

    (tmp_path / "a.md").write_text("Solar panels cover the depot roof.", encoding="utf-8")
    kb = tmp_path / "w.kb"
    build_kb([tmp_path / "a.md"], m.load(str(tiny_model)), kb)
    with KBStore(kb, readonly=True) as store:
        assert store.info()["weights"]
        assert retrieve(store, m.load(str(tiny_model)), "solar panels").evidence
        retrained = m.load(str(tiny_model))
        with torch.no_grad():
            next(retrained.model.parameters()).add_(0.01)
        with pytest.raises(KBOpenError, match="other weights"):
            retrieve(store, retrained, "solar panels")
    with pytest.raises(KBOpenError, match="other weights"):
        build_kb([tmp_path / "a.md"], retrained, kb)


def test_a_kb_records_how_texts_read_the_caption_memory_and_refuses_vectors_made_otherwise(tmp_path):
    """terravl-default's texts read its caption memory (settings in its config, not its weights): a knowledge base
    records that with its passages' vectors, and one whose passages were embedded otherwise (built before the
    setting existed) is refused by name instead of comparing mismatched vectors."""
    import sqlite3

    import terravl.models as m
    from terravl.kb import KBOpenError
    from terravl.models.light_text import query_encoder

    (tmp_path / "a.md").write_text("Solar panels cover the depot roof.", encoding="utf-8")
    kb = tmp_path / "t.kb"
    encoder = m.load("terravl-default")
    settings = encoder.model.config["memory"]["text"]
    build_kb([tmp_path / "a.md"], encoder, kb)
    with KBStore(kb, readonly=True) as store:
        assert store.meta()["text_side"] == settings
        assert retrieve(store, query_encoder("terravl-default"), "solar panels").evidence  # the light side agrees
        with pytest.raises(ValueError, match="store's own"):
            KBStore(kb).set_meta("text_side", None)
    with sqlite3.connect(kb) as db:  # as a knowledge base built before texts read the memory
        db.execute("UPDATE meta SET value = 'null' WHERE key = 'text_side'")
    with KBStore(kb, readonly=True) as store:
        with pytest.raises(KBOpenError, match="text vectors were made without the caption memory"):
            retrieve(store, encoder, "solar panels")
    with pytest.raises(KBOpenError, match="delete the file"):
        build_kb([tmp_path / "a.md"], encoder, kb)
    by_name = tmp_path / "by-name.kb"  # created by name alone (API users, benchmarks): not checked, as for weights
    KBStore(by_name, create=True, model="terravl-default", dim=encoder.embed_dim).close()
    with KBStore(by_name, readonly=True) as store:
        assert retrieve(store, encoder, "solar panels").evidence == []


# -- the bridge weighed against the evidence, calibrated per collection -------------------------------------------
def test_fusion_follows_an_unsure_bridge_to_the_evidence_and_keeps_a_confident_one():
    from terravl.tasks.rag import fuse_presence, fuse_scene

    # presence: evidence says no (0 of 3 images name it); a confident "yes" survives weight 1, not weight 3
    assert fuse_presence(0.0, 2.7, -0.01, -5.0, 1.0) == "yes"
    assert fuse_presence(0.0, 2.7, -0.01, -5.0, 3.0) == "no"
    assert fuse_presence(0.0, 2.7, -0.6, -0.8, 1.0) == "no"  # an unsure bridge follows the evidence
    assert fuse_presence(0.0, 2.7, -0.01, -5.0, 0.0) == "yes"  # weight 0: the bridge alone
    # scene: the bridge's favourite against evidence that is all "forest"
    logp = {"beach": -0.2, "forest": -1.8}
    assert fuse_scene({"forest": 2.4}, logp, 0.0) == "beach"
    assert fuse_scene({"forest": 2.4}, logp, 1.0) == "forest"
    assert fuse_scene({"forest": 0.3, "beach": 0.3}, {"beach": -0.2, "forest": -1.8}, 5.0) == "beach"  # a tie


def test_fusion_weights_come_from_the_collection_of_the_most_relevant_image():
    from terravl.kb.results import Evidence
    from terravl.tasks.rag import FUSION_DEFAULT, fusion_weights

    def ev(rank, relevance, ref, kind="image"):
        return Evidence(rank=rank, id=rank, kind=kind, score=1.0, relevance=relevance, retrievers={}, source="s",
                        ref=ref)

    calibration = {"captioner": "c", "collections": {"A": {"scene": 0.3, "presence": 0.5},
                                                     "B": {"scene": 5.0, "presence": 3.0}},
                   "pooled": {"scene": 2.0, "presence": 1.5}}
    evidence = [ev(1, 0.99, "T", "text"), ev(2, 0.7, "A"), ev(3, 0.9, "B")]
    assert fusion_weights(calibration, evidence, "c") == {"scene": 5.0, "presence": 3.0, "collection": "B"}
    assert fusion_weights(calibration, [ev(1, 0.8, "Z")], "c")["collection"] == "pooled"
    assert fusion_weights(calibration, evidence, "another captioner") == {**FUSION_DEFAULT, "collection": None}
    assert fusion_weights(None, evidence, "c") == {**FUSION_DEFAULT, "collection": None}


class LabelEncoder:
    """The bridge's image encoder in these tests: a one-hot of the image's true class (so the fake bridge can be
    made right or wrong about every image on purpose)."""

    name = source = "label-encoder"

    def __init__(self, truth: dict[str, str]):
        self.truth, self.classes = truth, sorted(set(truth.values()))

    def encode_images(self, images, batch_size: int = 64, progress=None, **_) -> np.ndarray:
        out = np.zeros((len(images), len(self.classes)), np.float32)
        for row, image in enumerate(images):
            out[row, self.classes.index(self.truth[str(Path(image).resolve())])] = 1
        return out


class ScoringBridge:
    """A VQA bridge that scores answers: always right (``right``) or always naming the other class, confidently."""

    def __init__(self, truth: dict[str, str], right: bool):
        self.encoder, self.right, self.name = LabelEncoder(truth), right, f"bridge-{right}"

    def _scene(self, feature) -> str:
        classes = self.encoder.classes
        return classes[int(np.argmax(feature)) if self.right else 1 - int(np.argmax(feature))]

    def generate(self, features, prompts, **_):
        prompts = [prompts] * len(features) if isinstance(prompts, str) else prompts
        return ["no" if "is there" in p else "a scene" if p == "caption:" else self._scene(f)
                for f, p in zip(features, prompts)]

    def answer_logprobs(self, features, prompts, candidates):
        out = []
        for f, p, cands in zip(features, prompts, candidates):
            said = "no" if "is there" in p else self._scene(f)
            out.append(np.array([-0.05 if c == said else -3.0 for c in cands]))
        return out


def _two_colour_dataset(root):
    """Forest scenes are green, beach scenes sand-coloured: the nearest stored images always know the class."""
    (root / "imgs").mkdir(parents=True)
    images, truth = [], {}
    for i in range(16):
        label = "Beach" if i % 2 else "Forest"
        path = _solid(root / "imgs" / f"s{i}.png", (220, 200, 120 + i) if i % 2 else (20, 140 + i, 30))
        truth[str(path)] = "beach" if i % 2 else "forest"
        images.append({"filename": path.name, "filepath": "imgs", "imgid": i, "split": "train" if i < 12 else "test",
                       "class": label, "sentences": [{"raw": f"a {label.lower()} scene number {i} ."}]})
    path = root / "d.json"
    path.write_text(json.dumps({"dataset": "fake", "images": images}))
    return path, truth


def test_calibration_fits_the_evidence_weight_per_collection_and_ask_uses_it(tmp_path, capsys, monkeypatch):
    from terravl.train.kb_fusion import calibrate_kb

    data, truth = _two_colour_dataset(tmp_path / "d")
    kb, enc = tmp_path / "train.kb", WordEncoder()
    build_kb([data], enc, kb, split="train")
    wrong, right = ScoringBridge(truth, right=False), ScoringBridge(truth, right=True)

    monkeypatch.chdir(tmp_path)  # a relative dataset path, as a user types it: the KB holds resolved paths
    fitted = calibrate_kb(kb, [(data.relative_to(tmp_path), "train")], wrong, enc, save=False)
    mine = fitted["collections"]["captions: d.json"]
    assert mine["questions"]["scene"] == 12 and mine["bridge_alone"]["scene"] == 0.0
    assert mine["questions"]["presence"] >= 12  # presence rows are fitted too, never worse than the bridge alone
    assert mine["accuracy"]["presence"] >= mine["bridge_alone"]["presence"]
    assert mine["scene"] > 0 and mine["accuracy"]["scene"] == 100.0  # the evidence (own image left out) knows
    with KBStore(kb, readonly=True) as store:
        assert "fusion" not in store.meta()  # save=False wrote nothing

    kept = calibrate_kb(kb, [(data, "train")], right, enc)
    assert kept["collections"]["captions: d.json"]["scene"] == 0.0  # a bridge that is always right keeps its word
    calibrate_kb(kb, [(data, "train")], wrong, enc)  # saved for the wrong bridge, replacing the other
    image = tmp_path / "d" / "imgs" / "s13.png"  # a test image (beach), not in the knowledge base
    answer = ask_kb(kb, "what kind of area is this?", image, enc, wrong)
    assert answer.image_answer == "forest" and answer.short == "beach"
    assert "calibrated on 'captions: d.json'" in answer.answered_by
    other = ask_kb(kb, "what kind of area is this?", image, enc, right)  # not the captioner it was fitted for
    assert other.short == "beach" and "uncalibrated" in other.answered_by

    code, out, err = _run(capsys, "kb", "info", str(kb), "--format", "json")
    assert code == 0 and json.loads(out)["calibration"]["weights"]["captions: d.json"]["scene"] == mine["scene"]
    with pytest.raises(InputError, match="none of the images"):
        calibrate_kb(kb, [(data, "test")], wrong, enc)


def test_cli_calibrate_refuses_bad_usage_clearly(tmp_path, capsys):
    data, _ = _two_colour_dataset(tmp_path / "d")
    kb = tmp_path / "train.kb"
    build_kb([data], WordEncoder(), kb, split="train")
    code, _, err = _run(capsys, "kb", "calibrate", str(kb), "--dataset", str(data))
    assert code == 2 and "--split" in err
    code, _, err = _run(capsys, "kb", "calibrate", str(kb), "--dataset", str(data), "--split", "train", "--split",
                        "test")
    assert code == 2 and "one --split for each --dataset" in err
    code, _, err = _run(capsys, "kb", "calibrate", str(tmp_path / "none.kb"), "--dataset", str(data), "--split",
                        "train")
    assert code == 2 and "none.kb" in err


def test_captioner_features_stand_for_kb_vectors_only_with_the_memory_used_alike():
    from types import SimpleNamespace

    from terravl.tasks.rag import shares_vectors

    kb_side = SimpleNamespace(source="terravl-default", name="terravl-default", use_memory=True)
    captioner_side = SimpleNamespace(source="terravl-default", name="terravl-default", use_memory=False)
    assert not shares_vectors(captioner_side, kb_side, "terravl-default")  # the captioner turns the memory off
    captioner_side.use_memory = True
    assert shares_vectors(captioner_side, kb_side, "terravl-default")
    assert not shares_vectors(captioner_side, kb_side, "terravl-default-v2")  # another model's vectors


def test_an_excluded_item_shapes_nothing(site_kb):
    """Leave-one-out: the excluded item is never evidence, and the rest rank as if it were not stored."""
    enc = WordEncoder()
    image = np.full((32, 32, 3), (20, 150, 35), np.uint8)
    with KBStore(site_kb, readonly=True) as store:
        full = retrieve(store, enc, "forest canopy", image, k=5)
        first = full.evidence[0]
        assert first.source.endswith("green.png")
        without = retrieve(store, enc, "forest canopy", image, k=5, exclude={first.id})
        assert first.id not in [e.id for e in without.evidence]
        # left out before fusion: the rest are scored without it (their fused ranks and the re-ranking's feedback
        # change), not merely filtered from the full run's list
        kept = {e.id: e.score for e in full.evidence}
        assert any(abs(kept[e.id] - e.score) > 1e-6 for e in without.evidence if e.id in kept)


def test_a_calibration_names_the_bridge_by_its_weights_too():
    import torch

    from terravl.tasks.rag import captioner_identity

    class Bridge(torch.nn.Module):
        name = "terravl-captioner"

        def __init__(self):
            super().__init__()
            self.mapper = torch.nn.Linear(3, 2)

    torch.manual_seed(0)
    first, retrained = Bridge(), Bridge()  # the same name, other weights
    assert captioner_identity(first).startswith("terravl-captioner@")
    assert captioner_identity(first) != captioner_identity(retrained)
    assert captioner_identity(first) == captioner_identity(first)
    assert captioner_identity(FakeCaptioner(WordEncoder())) == "fake-captioner"  # no weights: its name
