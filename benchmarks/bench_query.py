"""The query path on a million-tile index: text encoding, the whole `search` call, a cold `terravl search`
process, the server's memory and its HTTP throughput — PyTorch's text tower against ONNX Runtime's, same run.

    python benchmarks/bench_query.py                   # 1M × 384 index under runs/bench_query (built once, ~10 min)
    python benchmarks/bench_query.py --n 200000 --seconds 5 --format json
    python benchmarks/bench_query.py --only-cold        # just the fresh `terravl search` processes

The index: N rows whose vectors are real default-model embeddings of image crops (the crop archive of
bench_index.py: ~24,600 distinct crops of the RSICD-train and UCM-train images) each copied with small Gaussian
noise (σ = 0.02 per dimension, cosine ≈ 0.93 to its origin) and renormalised, so the IVF cells are shaped like an
archive's, not isotropic. It is written through `IndexStore.add` and its approximate index built as `search`
builds it (nprobe tuned to recall@10 0.95 on rows and the text-prompt sample). Queries are distinct RSICD
*test* captions, each sent once ("uncached"), then again through the server's query-embedding cache ("cached").
Each text tower's in-process rows are measured in a fresh process started as the `terravl` command starts (its
OpenMP setting); the PyTorch-free one never loads PyTorch, as a `terravl search` or a script using only it.

Targets (issue 20): whole `search` call p50 ≤ 5 ms uncached and ≤ 1 ms cached; a cold `terravl search` process
(start to answer) ≤ 1.5 s; the server's resident memory ≤ 1.3× the vector bytes (N × dim × 4) — shown as the
growth over the same server on a 2,000-row index (the models and runtime, about 1 GB, do not grow with the index)
and as the total; HTTP search at 8 clients ≥ 2× the old path (PyTorch text tower, every query encoded), as the median
ratio of --pairs back-to-back pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
CACHE = ROOT / "runs" / "bench_query"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def p50(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def captions(n: int) -> list[str]:
    data = json.loads((SHARED / "data" / "rsicd_aid" / "dataset_rsicd_aid.json").read_text())["images"]
    seen, out = set(), []
    for image in sorted(data, key=lambda im: im["split"] != "test"):  # test captions first, then train ones
        for sentence in image["sentences"]:
            text = sentence["raw"].strip()
            if text.lower() not in seen:
                seen.add(text.lower())
                out.append(text)
    return out[:n]


def build(n: int, seed: int = 0) -> Path:
    """The N-row index (reused when it exists with the same N)."""
    from bench_index import crop_archive

    from terravl.index.store import IndexStore, TileRow
    from terravl.index.vectors import TUNING_PROMPTS, IVFIndex
    import terravl.models as m

    folder = CACHE / f"idx-{n}"
    done = folder / "built.json"
    if done.is_file() and json.loads(done.read_text()).get("n") == n:
        return folder
    base = crop_archive(SHARED)["base"]
    encoder = m.load("terravl-default")
    if base.shape[1] != encoder.embed_dim:
        raise SystemExit(f"crop archive is {base.shape[1]}-d, the default model {encoder.embed_dim}-d")
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with IndexStore(folder, create=True, model="terravl-default", dim=encoder.embed_dim) as store:
        for first in range(0, n, 20_000):
            rows = np.arange(first, min(n, first + 20_000))
            vectors = base[rows % len(base)] + 0.02 * rng.standard_normal((len(rows), base.shape[1]), np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.add([TileRow(f"{i:032x}", f"archive/{i // 1000:04d}/{i}.tif", {"col": 0, "row": 0, "width": 256,
                                                                           "height": 256}, None, None, None, None, v)
                       for i, v in zip(rows.tolist(), vectors)])
            log(f"  rows: {first + len(rows):,}/{n:,} ({(first + len(rows)) / (time.perf_counter() - start):.0f}/s)")
        written = time.perf_counter() - start
        ids, vectors = store.vectors()
        t = time.perf_counter()
        IVFIndex.cached(store.path, store.version, vectors, ids, query_sample=encoder.encode_texts(list(TUNING_PROMPTS)))
        ann_s = time.perf_counter() - t
    done.write_text(json.dumps({"n": n, "rows_s": written, "ann_s": ann_s}))
    return folder


TOWERS = {"torch": "PyTorch", "onnx": "ONNX Runtime", "light": "PyTorch-free (what `terravl search` uses)"}


def in_process(index: Path, queries: list[str]) -> list[dict]:
    """Text encoding alone and the whole `search` call, each text tower in a fresh process started as the `terravl`
    command starts (its OpenMP setting, :func:`terravl.index.faiss_runtime.openmp_spin_default`); the PyTorch-free
    one never loads PyTorch. Then cached queries, in that last process."""
    rows = []
    for tower in TOWERS:
        done = subprocess.run([sys.executable, __file__, "--worker", tower, "--index", str(index),
                               "--queries", str(len(queries))], capture_output=True, text=True, timeout=1800)
        if done.returncode:
            raise SystemExit(f"in-process worker ({tower}) failed: {done.stderr[-2000:]}")
        rows += json.loads(done.stdout.splitlines()[-1])
    return rows


def worker(index: Path, queries: list[str], tower: str) -> list[dict]:
    """One text tower's rows of :func:`in_process`, measured in this process."""
    from terravl.index.store import IndexStore
    from terravl.server.textcache import CachedTextEncoder, TextCache
    from terravl.tasks import search

    store = IndexStore(index, readonly=True)
    half = len(queries) // 2
    if tower == "light":
        from terravl.models.light_text import open_text_encoder

        encoder = open_text_encoder(store.model)
        if encoder is None:
            raise SystemExit(f"the PyTorch-free text side of {store.model} cannot serve here")
    else:
        import terravl.models as m
        from terravl.models.text_onnx import onnx_text_tower
        from terravl.models.text_towers import shared_sentence_encoder

        encoder = m.load(store.model)  # the model the index records (one built before v3 holds v2 vectors)
        encoder._text = shared_sentence_encoder() if tower == "torch" else onnx_text_tower()
    search(store, text="warm-up", encoder=encoder)
    encode = []
    for q in queries[:half]:
        t = time.perf_counter()
        encoder.encode_texts([q])
        encode.append(1000 * (time.perf_counter() - t))
    whole = []
    for q in queries[half:]:
        t = time.perf_counter()
        search(store, text=q, k=10, encoder=encoder)
        whole.append(1000 * (time.perf_counter() - t))
    rows = [{"what": f"text tower: {TOWERS[tower]}", "encode_p50_ms": p50(encode), "search_p50_ms": p50(whole),
             "queries": len(whole), "torch_loaded": "torch" in sys.modules}]
    if tower == "light":
        cached = CachedTextEncoder(encoder, TextCache(), store.model)
        for q in queries[half:]:
            cached.encode_texts([q])
        hits = []
        for q in queries[half:]:
            t = time.perf_counter()
            search(store, text=q, k=10, encoder=cached)
            hits.append(1000 * (time.perf_counter() - t))
        rows.append({"what": "query embedding cached", "encode_p50_ms": None, "search_p50_ms": p50(hits),
                     "queries": len(hits), "torch_loaded": "torch" in sys.modules})
    store.close()
    return rows


def cold(index: Path, runs: int = 3) -> list[dict]:
    """Wall time of a fresh `terravl search` process, start to answer, per text tower (page cache warm)."""
    out = []
    for label, backend, light in (("python -c 'import torch' (floor)", None, "0"),
                                  ("cold search, PyTorch text tower", "torch", "0"),
                                  ("cold search, ONNX tower inside the full model (before)", "onnx", "0"),
                                  ("cold search, PyTorch-free text path (now)", "onnx", "1")):
        times = []
        for i in range(runs + 1):
            env = {**os.environ, "TERRAVL_TEXT_BACKEND": backend or "auto", "TERRAVL_LIGHT_TEXT": light}
            cmd = ([sys.executable, "-c", "import torch"] if backend is None else
                   [sys.executable, "-m", "terravl.cli.main", "search", str(index), f"a river through farmland {i}",
                    "--k", "10", "--format", "json"])
            t = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
            if i:  # the first run only warms the page cache
                times.append(time.perf_counter() - t)
        out.append({"what": label, "p50_s": p50(times), "min_s": min(times), "max_s": max(times)})
    return out


def server(index: Path, queries: list[str], seconds: float, n: int, dim: int, pairs: int = 3) -> list[dict]:
    """Resident memory after serving distinct searches, and requests/s at 8 clients: the old path (PyTorch tower,
    every query new) and the ONNX tower with every query new, in ``pairs`` back-to-back pairs whose order
    alternates (old-new, new-old, ...) so that a drift of the machine's speed falls on both; the median of each
    and every pair's ratio are reported. Then the ONNX tower with 10 repeated queries (cache hits)."""
    from bench_server import load, rss_mib, start_server, warn_if_short

    def hammer(url: str, pool: list[str], repeat: bool) -> tuple[float, int, float]:
        latencies, failures, elapsed = asyncio.run(load(url, 8, seconds, 10**9, pool, cycle=repeat))
        if not repeat:
            warn_if_short(elapsed, seconds, len(pool))
        return len(latencies) / elapsed, failures, p50(latencies)

    def serve(backend: str, pool: list[str] | None) -> dict:
        os.environ["TERRAVL_TEXT_BACKEND"] = backend  # the server process inherits it
        proc, url = start_server(index, CACHE / f"serve-{backend}.log")
        try:
            repeat = pool is not None
            # each server is a fresh process with an empty query cache: the same distinct captions are new to all
            rate, failures, lat = hammer(url, queries if pool is None else pool, repeat)
            return {"requests_s": rate, "p50_ms": lat, "failures": failures, "rss_mib": rss_mib(proc.pid)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            os.environ.pop("TERRAVL_TEXT_BACKEND", None)

    runs: dict[str, list[dict]] = {"torch": [], "onnx": []}
    for i in range(pairs):
        for backend in (("torch", "onnx") if i % 2 == 0 else ("onnx", "torch")):
            runs[backend].append(serve(backend, None))
    ratios = [new["requests_s"] / old["requests_s"] for old, new in zip(runs["torch"], runs["onnx"])]
    rows = []
    for label, backend in (("8 clients, PyTorch tower, every query new (old path)", "torch"),
                           ("8 clients, ONNX tower, every query new", "onnx")):
        rates = [r["requests_s"] for r in runs[backend]]
        rows.append({"what": label, "requests_s": p50(rates), "runs_s": ", ".join(f"{r:.1f}" for r in rates),
                     "p50_ms": p50([r["p50_ms"] for r in runs[backend]]),
                     "failures": sum(r["failures"] for r in runs[backend]), "rss_mib": runs[backend][-1]["rss_mib"]})
    rows[1]["pair_ratios"] = ", ".join(f"{r:.2f}" for r in ratios)
    rows[1]["median_pair_ratio"] = p50(ratios)
    cached = serve("onnx", queries[:10])
    rows.append({"what": "8 clients, ONNX tower, 10 repeated queries (cache)", "requests_s": cached["requests_s"],
                 "runs_s": f"{cached['requests_s']:.1f}", "p50_ms": cached["p50_ms"],
                 "failures": cached["failures"], "rss_mib": cached["rss_mib"]})
    # the same server over a 2,000-row index: the models' and runtime's memory, which does not grow with the index
    proc, url = start_server(build(2_000), CACHE / "serve-small.log")
    try:
        hammer(url, queries[:200], False)
        floor = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    vector_mib = n * dim * 4 / 2**20
    for row in rows:
        row["rss_over_small_index_mib"] = row["rss_mib"] - floor
        row["index_rss_vs_vectors"] = row["rss_over_small_index_mib"] / vector_mib
    rows.append({"what": f"same server, 2,000-row index (floor); vectors of the big one: {vector_mib:.0f} MiB",
                 "requests_s": None, "runs_s": None, "p50_ms": None, "failures": None, "rss_mib": floor,
                 "rss_over_small_index_mib": 0.0, "index_rss_vs_vectors": None})
    return rows


def table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    if not rows:
        return
    keys = list(dict.fromkeys(key for row in rows for key in row))
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{v:.2f}" if isinstance(v := row.get(k), float) else str(v) for k in keys))


def main() -> None:
    from terravl.index.faiss_runtime import openmp_spin_default

    openmp_spin_default()  # as the `terravl` command starts; the workers and servers started from here inherit it
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="rows in the index")
    parser.add_argument("--queries", type=int, default=400, help="distinct text queries in process")
    parser.add_argument("--seconds", type=float, default=10.0, help="per HTTP level")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--pairs", type=int, default=3, help="back-to-back old/new server pairs (median reported)")
    parser.add_argument("--only-cold", action="store_true", help="only the fresh-process measurement")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--worker", choices=sorted(TOWERS), help=argparse.SUPPRESS)
    parser.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.worker:
        print(json.dumps(worker(args.index, captions(args.queries), args.worker)))
        return

    index = build(args.n)
    info = json.loads((index / "built.json").read_text())
    pool = captions(20_000)
    result = {"n": args.n, "build": info}
    if not args.only_cold:
        result["in_process"] = in_process(index, pool[:args.queries])
    result["cold"] = cold(index)
    if not (args.skip_server or args.only_cold):
        result["server"] = server(index, pool[args.queries:], args.seconds, args.n, 384, args.pairs)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return
    print(f"index: {args.n:,} × 384 (rows written in {info['rows_s']:.0f} s, approximate index {info['ann_s']:.0f} s)")
    if "in_process" in result:
        table("in process (ms, p50)", result["in_process"])
    table("fresh process, start to answer (s)", result["cold"])
    if "server" in result:
        table("terravl serve (requests/s, ms, resident MiB, × vector bytes)", result["server"])
        base = result["server"][0]["requests_s"]
        new = result["server"][1]
        print(f"  {new['what']}: {new['median_pair_ratio']:.2f}× the old path, median of back-to-back pairs "
              f"({new['pair_ratios']})")
        print(f"  {result['server'][2]['what']}: {result['server'][2]['requests_s'] / base:.2f}× the old path")


if __name__ == "__main__":
    main()
