import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import terravl.models as m
from fakedata import truncate, write_geotiff, write_image
from terravl.index import IndexOpenError, IndexStore, IVFIndex, build_index, exact_search, top_k
from terravl.tasks import BUILTIN_CLASSES, classify, localize, search, search_captions


@pytest.fixture()
def archive(tmp_path) -> Path:
    folder = tmp_path / "archive"
    folder.mkdir()
    for i in range(6):
        write_image(folder / f"scene_{i}.png", 48, 48, seed=i)
    write_geotiff(folder / "big_20200611.tif", 300, 200, count=3, seed=9)  # tiled: 300×200 > 2 × 128
    return folder


def test_build_search_filters_and_incremental(tmp_path, archive, tiny_model):
    encoder = m.load(tiny_model)
    out = tmp_path / "idx"
    report = build_index([archive], encoder, out, tile_size=128, batch_size=4)
    assert report.files == 7 and report.added == 6 + 6 and report.problems == []  # 6 images + 3×2 tiles
    again = build_index([archive], encoder, out, tile_size=128, batch_size=4)
    assert again.added == 0 and again.skipped_existing == 12
    store = IndexStore(out)
    info = store.info()
    assert info["count"] == 12 and info["model"] == str(tiny_model.resolve()) and info["dim"] == 32
    assert info["acquired"] == ["2020-06-11", "2020-06-11"]
    hits = search(out, text="a river", k=5, encoder=encoder)
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    # the example image itself is its own best match
    hits = search(out, image=archive / "scene_3.png", k=1, encoder=encoder)
    assert hits[0].path.endswith("scene_3.png") and hits[0].score == pytest.approx(1.0, abs=1e-5)
    tiles = [h for h in search(out, text="x", k=12, encoder=encoder) if h.footprint]
    assert len(tiles) == 6 and all(h.window for h in tiles)
    lon = tiles[0].footprint["coordinates"][0][0][0]
    bbox_hits = search(out, text="x", k=50, encoder=encoder, bbox=(lon - 1, -90, lon + 1, 90))
    assert {h.path for h in bbox_hits} == {str((archive / "big_20200611.tif").resolve())}
    assert search(out, text="x", k=50, encoder=encoder, bbox=(0, 0, 1, 1)) == []
    assert len(search(out, text="x", k=50, encoder=encoder, date_from="2020-06-01", date_to="2020-06-30")) == 6
    assert search(out, text="x", k=50, encoder=encoder, date_from="2021-01-01") == []
    assert store.remove_source(str((archive / "scene_0.png").resolve())) == 1 and store.count() == 11


def test_bad_files_are_reported_and_the_build_goes_on(tmp_path, archive, tiny_model):
    truncate(write_image(archive / "broken.png", 60, 60), 0.3)
    (archive / "notes.tif").write_bytes(b"not a tiff")
    report = build_index([archive], m.load(tiny_model), tmp_path / "idx", tile_size=128)
    assert report.added == 12
    assert {Path(p.path).name for p in report.problems} == {"broken.png", "notes.tif"}
    assert len(IndexStore(tmp_path / "idx").problems()) == 2


def test_missing_and_corrupt_index_give_clear_errors(tmp_path):
    with pytest.raises(IndexOpenError, match="no index here"):
        IndexStore(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(IndexOpenError, match="corrupt"):
        IndexStore(bad)


def test_exact_and_ivf_search_agree_on_clustered_vectors(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 64))
    vectors = centers[rng.integers(0, 50, 20_000)] + 0.3 * rng.normal(size=(20_000, 64))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(20_000) + 100
    ann = IVFIndex.build(vectors, ids, nlist=64, nprobe=16)
    ann.save(tmp_path, version=3)
    assert IVFIndex.load(tmp_path, version=4) is None  # a stale cache is never used
    ann = IVFIndex.load(tmp_path, version=3)
    recall = []
    for q in vectors[:50] + 0.05 * rng.normal(size=(50, 64)).astype(np.float32):
        exact = set(ids[exact_search(vectors, q, 10)[0]])
        approx = set(ann.ids[ann.search(q, 10)[0]])
        recall.append(len(exact & approx) / 10)
    assert np.mean(recall) >= 0.95
    assert list(top_k(np.array([0.1, 0.9, 0.5, 0.9]), 3)) == [1, 3, 2]


def test_ann_cache_is_built_once_and_written_whole_under_concurrent_searches(tmp_path, monkeypatch):
    import threading

    from terravl.index.vectors import CACHE_FILE

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(3000) + 7
    builds = []
    real_build = IVFIndex.build.__func__
    monkeypatch.setattr(IVFIndex, "build", classmethod(lambda cls, *a, **k: builds.append(1) or real_build(cls, *a, **k)))
    found: list[IVFIndex] = []
    threads = [threading.Thread(target=lambda: found.append(IVFIndex.cached(tmp_path, 5, vectors, ids)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(found) == 6
    names = sorted(p.name for p in tmp_path.iterdir())  # one cache (settings + FAISS file), no temporary left
    assert len(names) == 2 and names[0].startswith("ann-5-") and names[0].endswith(".faiss") and names[1] == CACHE_FILE
    assert np.array_equal(IVFIndex.load(tmp_path, 5).ids, ids)
    memory_only = tmp_path / "ro"
    memory_only.mkdir()
    IVFIndex.cached(memory_only, 1, vectors, ids, persist=False)  # a read-only index is never written to
    assert list(memory_only.iterdir()) == [] and IVFIndex.load(memory_only, 1) is not None


def test_classify_and_caption_search(tmp_path, archive, tiny_model):
    encoder = m.load(tiny_model)
    results = classify([archive], encoder, labels="forest,river,harbor", k=2, tile_size=128)
    assert len(results) == 6 + 6 and all(r.label in {"forest", "river", "harbor"} for r in results)
    assert all(0 < sum(t.probability for t in r.top) <= 1 + 1e-6 for r in results)
    tiles = [r for r in results if r.footprint]
    assert len(tiles) == 6
    with pytest.raises(Exception, match="at least two labels"):
        classify([archive], encoder, labels="forest")
    truncate(write_image(tmp_path / "bad.png", 60, 60), 0.3)
    out = classify([tmp_path / "bad.png", archive / "scene_1.png"], encoder, classes="aid")
    assert out.problems == [out[0]] and out[1].label in BUILTIN_CLASSES["aid"]
    hits = search_captions(archive / "scene_1.png", ["a forest", "a harbor", "a road"], encoder, k=2)
    assert [h.rank for h in hits] == [1, 2]


def test_localize_writes_a_georeferenced_heat_map(tmp_path, tiny_model):
    import rasterio

    raster = write_geotiff(tmp_path / "scene.tif", 400, 300, count=3, seed=4)
    result = localize(raster, "a bridge", m.load(tiny_model), tmp_path / "heat.tif", scales=(128,), top=3)
    assert result["windows"] == len(range(0, 400 - 128 + 64, 64)) * len(range(0, 300 - 128 + 64, 64))
    assert len(result["regions"]["features"]) == 3
    scores = [f["properties"]["score"] for f in result["regions"]["features"]]
    assert scores == sorted(scores, reverse=True)
    with rasterio.open(tmp_path / "heat.tif") as heat, rasterio.open(raster) as src:
        assert heat.crs == src.crs and heat.bounds == src.bounds
        values = heat.read(1)
        assert np.isfinite(values).all() and values.max() <= max(scores) + 1e-6


def test_cli_search_classify_json(tmp_path, archive, tiny_model, capsys):
    from terravl.cli.main import main

    out = tmp_path / "idx"
    assert main(["index", "build", str(archive), "--out", str(out), "--model", str(tiny_model), "--tile-size", "128",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 12
    assert main(["index", "info", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 12
    assert main(["search", str(out), "a river", "--k", "3", "--format", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and {"path", "score"} <= set(hits[0])
    assert main(["search", str(out), "x", "--k", "20", "--format", "geojson"]) == 0
    collection = json.loads(capsys.readouterr().out)
    assert collection["type"] == "FeatureCollection" and sum(f["geometry"] is not None for f in collection["features"]) == 6
    assert main(["classify", str(archive / "scene_2.png"), "--labels", "a,b,c", "--model", str(tiny_model),
                 "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["label"] in {"a", "b", "c"} and len(result[0]["top"]) == 3
    assert main(["classify", str(archive / "scene_2.png"), "--labels", "a,b,c", "--model", str(tiny_model),
                 "--views", "8", "--format", "json"]) == 0
    averaged = json.loads(capsys.readouterr().out)
    assert averaged[0]["label"] in {"a", "b", "c"} and averaged[0]["top"] != result[0]["top"]
    assert main(["classify", str(archive / "scene_2.png"), "--labels", "a,b", "--views", "3"]) == 2
    assert main(["search", str(tmp_path / "none"), "x"]) == 2
    assert "no index here" in capsys.readouterr().err
    assert main(["search", str(out), "x", "--bbox", "1,2,3"]) == 2


def test_kill_9_during_build_loses_nothing_and_rerun_completes(tmp_path, tiny_model):
    """A real `terravl index build` subprocess is killed with SIGKILL at random moments; the index must always
    open and answer, keep what was committed, and a final re-run must complete it without duplicates."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(120):
        write_image(folder / f"s{i:03d}.png", 40, 40, seed=1000 + i)
    out = tmp_path / "idx"
    cmd = [sys.executable, "-m", "terravl.cli.main", "index", "build", str(folder), "--out", str(out), "--model",
           str(tiny_model), "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(7)
    previous, interrupted = 0, 0
    for attempt in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 180  # generous: a loaded machine imports slowly
        target = min(previous + rng.randint(5, 25), 90)
        while time.time() < deadline and proc.poll() is None:  # kill once some new batches are in
            if (out / "index.sqlite").exists():
                try:
                    if IndexStore(out).count() >= target:
                        break
                except Exception:  # noqa: BLE001 - the database may be mid-creation
                    pass
            time.sleep(rng.uniform(0.005, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = IndexStore(out)
        count = store.count()
        assert count >= previous
        if count:
            assert search(store, text="anything", k=1, encoder=m.load(tiny_model))
        interrupted += 0 < count < 120
        previous = count
        store.close()
    assert interrupted, "every build finished before its kill; the test did not exercise a crash"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    store = IndexStore(out)
    assert store.count() == 120
    sources = [r[0] for r in store.db.execute("SELECT source FROM tiles")]
    assert len(sources) == len(set(sources)) == 120


def test_count_is_remembered_until_this_or_another_handle_changes_the_index(tmp_path):
    from terravl.index.store import IndexStore, TileRow

    def row(n: int, source: str) -> TileRow:
        vector = np.zeros(4, dtype=np.float32)
        vector[n % 4] = 1
        return TileRow(f"hash{n}", source, None, None, None, None, None, vector)

    reader = IndexStore(tmp_path / "idx", create=True, model="m", dim=4)
    reader.add([row(0, "a.tif"), row(1, "a.tif")])
    assert reader.count() == 2
    writer = IndexStore(tmp_path / "idx")  # a second handle, as a build beside a running server
    writer.add([row(2, "b.tif")])
    assert reader.count() == 3
    writer.remove_source("a.tif")
    assert reader.count() == 1 and writer.count() == 1
    writer.close()
    reader.close()


def test_a_read_only_store_sees_what_another_connection_commits(tmp_path):
    """A read-only store keeps its metadata between reads (every search asks for it several times) and reads it
    again once another connection has committed."""
    from terravl.index.store import TileRow

    vectors = np.eye(4, dtype=np.float32)
    with IndexStore(tmp_path / "idx", create=True, model="m", dim=4) as writer:
        writer.add([TileRow(f"h{i}", f"s{i}.tif", None, None, None, None, None, v) for i, v in enumerate(vectors[:2])])
        reader = IndexStore(tmp_path / "idx", readonly=True)
        before = reader.version
        assert reader.meta() == reader.meta() and reader.meta() is not reader.meta()
        writer.add([TileRow("h9", "s9.tif", None, None, None, None, None, vectors[3])])
        assert reader.version != before and reader.version == writer.version and reader.count() == 3
        reader.close()
