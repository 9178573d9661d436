"""Approximate search recall is measured at build time and kept with the cache (issue 20, item 2), and IVF-PQ
above a size threshold with its memory estimate (item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from terravl.index.vectors import (CACHE_FILE, SAMPLE_MARGIN, IVFIndex, describe, estimate_bytes, exact_search,
                                   pq_subquantizers, resolve_kind)


def clustered(n: int = 20_000, dim: int = 64, centres: int = 50, noise: float = 2.0, seed: int = 0) -> np.ndarray:
    """Weakly clustered unit vectors: hard enough that the smallest nprobe misses most neighbours."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(centres, dim))[rng.integers(0, centres, n)] + noise * rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered()


def held_out_recall(ann: IVFIndex, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    hits = [len(set(exact_search(vectors, q, k)[0].tolist()) & set(ann.search(q, k)[0].tolist())) / k
            for q in queries]
    return float(np.mean(hits))


def test_nprobe_is_raised_until_recall_reaches_the_target_and_survives_save_load(vectors, tmp_path):
    ids = np.arange(len(vectors)) + 100
    fixed = IVFIndex.build(vectors, ids, nprobe=8, tune_queries=300)
    assert fixed.nprobe == 8 and fixed.recall < 0.9  # the smallest setting is not enough on this set
    ann = IVFIndex.build(vectors, ids, tune_queries=300)
    assert ann.kind == "fp16" and ann.recall >= 0.95 and 8 < ann.nprobe <= ann.nlist
    assert ann.info()["recall_target"] == 0.95
    # queries that are not in the index (new points around the same centres) get about the measured recall
    centres = np.random.default_rng(0).normal(size=(50, 64))
    rng = np.random.default_rng(9)
    q = centres[rng.integers(0, 50, 200)] + 2.0 * rng.normal(size=(200, 64))
    queries = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    assert held_out_recall(ann, vectors, queries) >= 0.93

    ann.save(tmp_path, version=3)
    assert IVFIndex.load(tmp_path, version=4) is None  # a stale cache is never used
    loaded = IVFIndex.load(tmp_path, version=3)
    assert (loaded.nprobe, loaded.recall, loaded.kind, loaded.nlist) == (ann.nprobe, ann.recall, "fp16", ann.nlist)
    assert np.array_equal(loaded.ids, ids)
    info = describe(tmp_path)
    assert info["nprobe"] == ann.nprobe and info["recall_at_10"] == pytest.approx(ann.recall)
    assert info["vectors"] == len(vectors) and info["store_version"] == 3 and info["kind"] == "fp16"


def test_a_query_sample_far_from_the_vectors_raises_nprobe_until_it_too_reaches_the_target(tmp_path):
    easy = clustered(10_000, noise=1.0, seed=4)  # leave-one-out rows find their neighbours in a few cells
    far = np.random.default_rng(5).normal(size=(150, 64)).astype(np.float32)  # queries off the data, like text
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    rows_only = IVFIndex.build(easy, np.arange(10_000), tune_queries=300)
    with_sample = IVFIndex.build(easy, np.arange(10_000), tune_queries=300, query_sample=far)
    assert rows_only.recall >= 0.95 and with_sample.nprobe > rows_only.nprobe
    assert held_out_recall(rows_only, easy, far) < 0.95 <= held_out_recall(with_sample, easy, far)
    assert with_sample.recall == min(with_sample.recall_rows, with_sample.recall_sample) >= 0.95
    assert with_sample.recall_sample >= 0.95 + SAMPLE_MARGIN  # the prompts are an easier proxy than real text
    with_sample.save(tmp_path, version=2)
    loaded = IVFIndex.load(tmp_path, 2)
    assert (loaded.recall_sample, loaded.sample_queries, loaded.nprobe) == (with_sample.recall_sample, 150,
                                                                            with_sample.nprobe)
    assert describe(tmp_path)["recall_sample"] == pytest.approx(with_sample.recall_sample)
    calls = []
    lazy = IVFIndex.cached(tmp_path / "x", 1, easy, np.arange(10_000), persist=False,  # made only to build
                           query_sample=lambda: calls.append(1) or far)
    assert calls == [1] and lazy.sample_queries == 150
    assert IVFIndex.cached(tmp_path / "x", 1, easy, np.arange(10_000), query_sample=lambda: calls.append(1)) is lazy
    assert calls == [1]


def test_a_cache_from_before_measured_recall_is_rebuilt(vectors, tmp_path):
    import faiss

    ids = np.arange(3000)
    old = IVFIndex.build(vectors[:3000], ids, nprobe=32, tune_queries=0)
    with open(tmp_path / CACHE_FILE, "wb") as fh:  # exactly what the previous release wrote
        np.savez(fh, index=faiss.serialize_index(old.index), ids=ids, meta=np.array([7, 32], dtype=np.int64))
    assert describe(tmp_path)["recall_at_10"] is None and describe(tmp_path)["nprobe"] == 32
    assert IVFIndex.load(tmp_path, version=7) is None
    rebuilt = IVFIndex.cached(tmp_path, 7, vectors[:3000], ids)
    assert rebuilt.recall is not None and rebuilt.recall >= 0.95
    assert describe(tmp_path)["recall_at_10"] == pytest.approx(rebuilt.recall)
    (tmp_path / CACHE_FILE).write_bytes(b"not an npz")  # a damaged cache is rebuilt too, not an error
    assert IVFIndex.load(tmp_path, version=7) is None and describe(tmp_path) is None


def test_pq_finds_the_exact_top1_on_easy_queries_and_reranks_to_exact_scores(vectors, tmp_path):
    ids = np.arange(len(vectors))
    ann = IVFIndex.build(vectors, ids, kind="pq", tune_queries=300)
    assert ann.kind == "pq" and ann.recall >= 0.95
    rng = np.random.default_rng(3)
    easy = vectors[:100] + 0.01 * rng.normal(size=(100, 64)).astype(np.float32)
    for q in easy:
        pos, scores = ann.search(q, 10)
        best, best_score = exact_search(vectors, q, 1)
        assert pos[0] == best[0] and scores[0] == pytest.approx(best_score[0], abs=1e-5)
    ann.save(tmp_path, version=1)
    loaded = IVFIndex.load(tmp_path, 1, vectors)  # re-ranks from the vectors it is given
    assert (loaded.kind, loaded.nprobe, loaded.refine, loaded.recall) == ("pq", ann.nprobe, ann.refine, ann.recall)
    assert np.array_equal(loaded.search(easy[0], 5)[0], ann.search(easy[0], 5)[0])
    assert IVFIndex.load(tmp_path, 1, vectors[:10]) is None  # vectors that do not match: rebuilt, not misused


def test_auto_kind_switches_to_pq_above_the_threshold(vectors):
    assert resolve_kind(10, "auto") == "fp16" and resolve_kind(3_000_000, "auto") == "pq"
    assert resolve_kind(10, "auto", pq_threshold=5) == "pq" and resolve_kind(3_000_000, "flat") == "flat"
    with pytest.raises(ValueError, match="kind"):
        resolve_kind(10, "hnsw")
    small = IVFIndex.build(vectors[:5000], np.arange(5000), pq_threshold=4000, tune_queries=0)
    assert small.kind == "pq"
    assert pq_subquantizers(512) == 64 and pq_subquantizers(384) == 48 and 300 % pq_subquantizers(300) == 0


@pytest.mark.parametrize("kind", ["fp16", "flat", "pq"])
def test_memory_estimate_matches_the_serialized_index(vectors, kind):
    import faiss

    ann = IVFIndex.build(vectors[:4000], np.arange(4000), kind=kind, tune_queries=0)
    actual = len(faiss.serialize_index(ann.index)) + ann.ids.nbytes
    estimate = estimate_bytes(4000, 64, kind, nlist=ann.nlist)
    assert 0.9 < estimate / actual < 1.1
    assert estimate_bytes(10_000_000, 512, "pq") < estimate_bytes(10_000_000, 512, "flat") / 20
    assert 1.9 < estimate_bytes(1_000_000, 512, "flat") / estimate_bytes(1_000_000, 512, "fp16") < 2
    assert estimate_bytes(10_000_000, 512, "pq", rerank_vectors=True) > 20e9


def test_a_saved_index_is_memory_mapped_by_later_processes_and_old_files_go(vectors, tmp_path, monkeypatch):
    from terravl.index import vectors as vec

    ids = np.arange(3000) + 100
    built = IVFIndex.cached(tmp_path, 3, vectors[:3000], ids)
    monkeypatch.setattr(vec, "_UNSAVED", {})  # as a fresh process
    loaded = IVFIndex.load(tmp_path, 3)
    assert loaded is not built and (loaded.nprobe, loaded.recall, loaded.kind) == (built.nprobe, built.recall, "fp16")
    for q in vectors[3000:3020]:
        assert np.array_equal(loaded.search(q, 10)[0], built.search(q, 10)[0])
    first = sorted(p.name for p in tmp_path.glob("ann-3-*.faiss"))
    assert len(first) == 1
    assert describe(tmp_path)["bytes"] == (tmp_path / CACHE_FILE).stat().st_size + (tmp_path / first[0]).stat().st_size
    # a new store version writes a new data file and removes the old one; a process that mapped it keeps working
    IVFIndex.cached(tmp_path, 4, vectors[:3000], ids)
    second = sorted(p.name for p in tmp_path.glob("ann-*.faiss"))
    assert len(second) == 1 and second[0].startswith("ann-4-")
    assert np.array_equal(loaded.search(vectors[3000], 10)[0], built.search(vectors[3000], 10)[0])
    # the data file cut short (a full disk) or gone (deleted by hand): rebuilt on the next search, not an error
    monkeypatch.setattr(vec, "_UNSAVED", {})
    data = tmp_path / second[0]
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    assert IVFIndex.load(tmp_path, 4) is None
    data.unlink()
    assert IVFIndex.load(tmp_path, 4) is None
    assert IVFIndex.cached(tmp_path, 4, vectors[:3000], ids).recall >= 0.95


def test_float16_lists_give_the_float32_lists_hits_with_near_exact_scores(vectors):
    """The default kind holds the vectors in float16: same neighbours as float32 lists at the same nprobe, and
    scores (cosines) within 1e-3 of the exact dot products of the float32 vectors."""
    ids = np.arange(len(vectors))
    half = IVFIndex.build(vectors, ids, kind="fp16", nprobe=16, tune_queries=0)
    full = IVFIndex.build(vectors, ids, kind="flat", nprobe=16, tune_queries=0)
    assert half.kind == "fp16" and full.kind == "flat"
    queries = clustered(100, seed=11)
    same = []
    for q in queries:
        pos, scores = half.search(q, 10)
        same.append(len(set(pos.tolist()) & set(full.search(q, 10)[0].tolist())) / 10)
        assert np.abs(scores - vectors[pos] @ q).max() < 1e-3
        assert np.all(np.diff(scores) <= 1e-6)  # best first
    assert np.mean(same) >= 0.99
    # a vector's score does not depend on the clustering (the vector itself is stored, not its offset from its
    # cell's centre): another index over half the vectors, other cells, gives the shared hits the same scores
    other = IVFIndex.build(vectors[::2], ids[::2], kind="fp16", nlist=32, nprobe=32, tune_queries=0)
    for q in queries[:20]:
        (pa, sa), (pb, sb) = half.search(q, 50), other.search(q, 50)
        a, b = dict(zip(half.ids[pa].tolist(), sa)), dict(zip(other.ids[pb].tolist(), sb))
        common = [i for i in a if i in b]
        assert common and all(a[i] == b[i] for i in common)


def test_a_lone_query_scanned_by_all_threads_gets_the_same_answer(vectors):
    """Which FAISS mode a search uses (threads over a lone query's cells, or over a batch's queries) is chosen per
    call and per thread, and never changes the answer."""
    import threading

    from terravl.index.vectors import probe_threads, set_probe_threads

    ann = IVFIndex.build(vectors, np.arange(len(vectors)), nprobe=24, tune_queries=0)
    try:
        for q in clustered(20, seed=12):
            set_probe_threads(True)
            pos, scores = ann.search(q, 10)
            assert ann.index.parallel_mode == 1
            set_probe_threads(False)
            again = ann.search(q, 10)
            assert ann.index.parallel_mode == 0
            assert np.array_equal(pos, again[0]) and np.allclose(scores, again[1], atol=1e-6)
        seen = []
        other = threading.Thread(target=lambda: seen.append(probe_threads()))
        other.start()
        other.join()
        assert seen == [True] and probe_threads() is False  # the setting is the calling thread's own
        set_probe_threads(True)
        ann._search_batch(clustered(5, seed=13), 10)
        assert ann.index.parallel_mode == 0  # a batch: threads over its queries
    finally:
        set_probe_threads(True)
