"""Vector search at archive scale, and end-to-end index build rate.

    python benchmarks/bench_index.py                 # (a) 1,000,000 × 512 vectors, 1,000 queries; (b) 2,000 tiles
    python benchmarks/bench_index.py --n 200000 --skip-build

(a) Vectors shaped like real embeddings: the embeddings of the shared AID images by the default model (or a
Gaussian mixture when it is absent), each repeated with small noise up to N, L2-normalised, plus 1,000 held-apart
queries (fresh noisy copies). Exact search (one matrix product) is the baseline and the ground truth for recall;
FAISS IVF is what `terravl search` uses above 100,000 vectors. Isotropic random vectors are reported as the worst
case. Targets (issue 6): p50 ≤ 10 ms and recall@10 ≥ 0.95 on 2 cores.
(b) `index build` on 2,000 image tiles against the bare encoder rate (encode_images on the same files), same run;
target ≥ 0.85×.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def real_shaped(n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(seed)
    base, label = None, "Gaussian mixture (10,000 centres)"
    try:
        import terravl.models as m
        from terravl import config

        shared = config.shared_dir()
        if shared and (shared / "data" / "aid_150px" / "images").is_dir():
            files = sorted((shared / "data" / "aid_150px" / "images").rglob("*.jpg"))
            encoder = m.load()
            base = encoder.encode_images(files, progress=False)
            if base.shape[1] < dim:  # an isometry into `dim` dimensions keeps every inner product
                q, _ = np.linalg.qr(rng.normal(size=(dim, base.shape[1])))
                base = (base @ q.T).astype(np.float32)
            label = f"AID embeddings ({encoder.name}, {len(files):,}) + noise"
    except Exception as exc:  # noqa: BLE001 - fall back to synthetic data
        print(f"(no default model embeddings: {exc})", file=sys.stderr)
    if base is None:
        base = rng.normal(size=(10_000, dim)).astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
    spread = np.float32(0.35 / np.sqrt(dim))
    def sample(count: int) -> np.ndarray:
        out = np.empty((count, base.shape[1]), dtype=np.float32)
        for start in range(0, count, 100_000):
            stop = min(count, start + 100_000)
            pick = rng.integers(0, len(base), stop - start)
            chunk = base[pick] + spread * rng.standard_normal((stop - start, base.shape[1]), dtype=np.float32)
            out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
        return out
    return sample(n), sample(n_queries), label


def isotropic(n: int, dim: int, n_queries: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n + n_queries, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data[:n], data[n:], "isotropic random (worst case)"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_vectors(vectors: np.ndarray, queries: np.ndarray, k: int, nprobe: int, exact_queries: int,
                  compare_usearch: bool = False) -> list[dict]:
    from terravl.index import IVFIndex, exact_search

    ids = np.arange(len(vectors))
    rows = []
    truth, times = [], []
    for q in queries[:exact_queries]:
        t = time.perf_counter()
        pos, _ = exact_search(vectors, q, k)
        times.append(time.perf_counter() - t)
        truth.append(set(pos.tolist()))
    rows.append({"method": "exact (numpy matmul)", "build_s": 0.0, "p50_ms": 1e3 * np.percentile(times, 50),
                 "p99_ms": 1e3 * np.percentile(times, 99), "recall": 1.0, "disk_mb": vectors.nbytes / 1e6})
    t = time.perf_counter()
    ann = IVFIndex.build(vectors, ids, nprobe=nprobe)
    build = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        ann.save(Path(tmp), 0)
        disk = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
    times, recall = [], []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        pos, _ = ann.search(q, k)
        times.append(time.perf_counter() - t)
        if i < exact_queries:
            recall.append(len(truth[i] & set(pos.tolist())) / k)
    rows.append({"method": f"FAISS IVF (nlist {ann.index.nlist}, nprobe {nprobe})", "build_s": build,
                 "p50_ms": 1e3 * np.percentile(times, 50), "p99_ms": 1e3 * np.percentile(times, 99),
                 "recall": float(np.mean(recall)), "disk_mb": disk})
    if compare_usearch:
        rows.append(_usearch_row(vectors, queries, truth, k, exact_queries))
    return rows


def _usearch_row(vectors, queries, truth, k, exact_queries) -> dict:
    """usearch's HNSW, measured beside FAISS to choose the library (it is not a TerraVL dependency)."""
    from usearch.index import Index

    index = Index(ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=16, expansion_add=128,
                  expansion_search=64)
    t = time.perf_counter()
    index.add(np.arange(len(vectors)), vectors, threads=2)
    build = time.perf_counter() - t
    times, recall = [], []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        found = index.search(q, k)
        times.append(time.perf_counter() - t)
        if i < exact_queries:
            recall.append(len(truth[i] & set(found.keys.tolist())) / k)
    with tempfile.TemporaryDirectory() as tmp:
        index.save(str(Path(tmp) / "u.usearch"))
        disk = (Path(tmp) / "u.usearch").stat().st_size / 1e6
    return {"method": "usearch HNSW (M 16, ef 128/64)", "build_s": build, "p50_ms": 1e3 * np.percentile(times, 50),
            "p99_ms": 1e3 * np.percentile(times, 99), "recall": float(np.mean(recall)), "disk_mb": disk}


def bench_build(n_tiles: int) -> dict:
    import terravl.models as m
    from terravl import config
    from terravl.index import build_index

    shared = config.shared_dir()
    files = sorted((shared / "data" / "aid_150px" / "images").rglob("*.jpg"))[:n_tiles]
    encoder = m.load()
    encoder.encode_images(files[:64])
    t = time.perf_counter()
    encoder.encode_images(files, batch_size=64, progress=False)
    bare = len(files) / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        report = build_index(files, encoder, Path(tmp) / "idx", batch_size=64)
        full = report.added / (time.perf_counter() - t)
    return {"files": len(files), "bare": bare, "build": full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--exact-queries", type=int, default=200, help="queries timed exactly (ground truth)")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--tiles", type=int, default=2000)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-vectors", action="store_true")
    parser.add_argument("--compare-usearch", action="store_true",
                        help="also measure usearch's HNSW (pip install usearch; not a TerraVL dependency)")
    args = parser.parse_args()
    if not args.skip_vectors:
        print(f"\n(a) {args.n:,} × {args.dim} float32 vectors, {args.queries:,} queries, k = 10\n")
        print(f"| {'vectors':<48} | {'method':<34} | {'build s':>7} | {'p50 ms':>7} | {'p99 ms':>7} | "
              f"{'recall@10':>9} | {'disk MB':>8} |")
        print("|" + "|".join("-" * (w + 2) for w in (48, 34, 7, 7, 7, 9, 8)) + "|")
        for make in (real_shaped, isotropic):
            vectors, queries, label = make(args.n, args.dim, args.queries)
            for row in bench_vectors(vectors, queries, 10, args.nprobe, args.exact_queries, args.compare_usearch):
                print(f"| {label:<48} | {row['method']:<34} | {row['build_s']:>7.1f} | {row['p50_ms']:>7.2f} | "
                      f"{row['p99_ms']:>7.2f} | {row['recall']:>9.3f} | {row['disk_mb']:>8.0f} |", flush=True)
            del vectors
        print(f"\npeak RSS {rss_mib():,.0f} MiB")
    if not args.skip_build:
        r = bench_build(args.tiles)
        print(f"\n(b) index build over {r['files']:,} AID JPEG tiles with the default model\n")
        print("| bare encode_images img/s | index build tiles/s | ratio |\n|---|---|---|")
        print(f"| {r['bare']:.1f} | {r['build']:.1f} | {r['build'] / r['bare']:.2f}× |")


if __name__ == "__main__":
    main()
