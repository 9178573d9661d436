"""Vector search at archive scale: recall you can trust, latency, memory; and end-to-end index build rate.

    python benchmarks/bench_index.py                      # (a) crops archive, (b) 1M × 512 scale test, (c) build
    python benchmarks/bench_index.py --skip-scale --skip-build          # (a) only: recall on the crop archive
    python benchmarks/bench_index.py --n 200000 --skip-build --format json

(a) Recall on vectors shaped like a real archive. The base set is the embeddings, by the default model, of
distinct random crops (4 scales: 40-100 % of the short side, random position, one of the 8 flips / 90° rotations)
of the AID images of the RSICD train split (2 crops each) and the UCM train split (4 each): about 24,600 vectors,
no copies and no added noise. Three query sets are held apart: crops of images that are not in the base set
(RSICD test / UCM val), new crops of indexed images (not among the base crops), and one RSICD test caption per
held-apart AID image (text queries, as `terravl search` gets). Exact search (one matrix product) is the ground
truth. The IVF index chooses `nprobe` at build time (target recall@10 0.95) from leave-one-out queries on its
own vectors ("auto"), or from those and the embeddings of 150 generic text prompts (`TUNING_PROMPTS`: scene names
in 3 phrasings, not the RSICD captions; "auto + text sample"), because text queries sit farther from the image
vectors and need more cells; the old fixed nprobe = 32 is shown beside them. "at build" is the recall the tuning
measured and saved. Isotropic random vectors of the same size are the worst case. Embeddings are cached under runs/bench_index/ (about 4 minutes
on one core the first time).
(b) Scale: N (default 1,000,000) × 512 isotropic random vectors, made for this test (there are not a million
distinct real crops here): build time, p50 latency and recall of IVF-flat, IVF-fp16 and IVF-PQ with tuned nprobe, and their
measured memory (serialized FAISS index + ids, and the resident-memory growth of loading it) against
`estimate_bytes`, plus 10M × 512 on paper. Memory does not depend on the vectors' distribution; recall on
isotropic vectors is the worst case, not an archive's.
(c) `index build` on 2,000 image tiles against the bare encoder rate (encode_images on the same files), same run;
target ≥ 0.85×.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CROP_SCALES = (0.4, 0.55, 0.75, 1.0)
CACHE_DIR = Path(__file__).resolve().parents[1] / "runs" / "bench_index"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- (a) the crop archive ------------------------------------------------------------------------------------
def _crop_keys(rng: np.random.Generator, size: tuple[int, int], count: int, taken: set) -> list[tuple]:
    """``count`` distinct (side, x, y, dihedral op) crops of an image of ``size``, none of them in ``taken``."""
    w, h = size
    out = []
    while len(out) < count:
        side = int(round(min(w, h) * CROP_SCALES[rng.integers(len(CROP_SCALES))]))
        key = (side, int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1)), int(rng.integers(8)))
        if key not in taken:
            taken.add(key)
            out.append(key)
    return out


def _crop(image, key: tuple):
    from PIL import Image

    side, x, y, op = key
    crop = image.crop((x, y, x + side, y + side))
    ops = [None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90,
           Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
           Image.Transpose.TRANSVERSE]
    return crop if ops[op] is None else crop.transpose(ops[op])


def crop_archive(shared: Path, model: str | None = None, seed: int = 0, aid_crops: int = 2, ucm_crops: int = 4,
                 n_queries: int = 500) -> dict:
    """Embeddings of the crop archive and its three query sets (see the module docstring), cached as .npy."""
    import terravl.models as m
    from PIL import Image

    encoder = m.load(model) if model else m.load()
    key = hashlib.sha1(json.dumps([encoder.source or encoder.name, seed, aid_crops, ucm_crops, n_queries,
                                   CROP_SCALES, 1]).encode()).hexdigest()[:10]
    folder = CACHE_DIR / f"crops-{encoder.name}-{key}"
    names = ("base", "q_heldout", "q_newcrop", "q_text")
    if all((folder / f"{n}.npy").is_file() for n in names):
        out = {n: np.load(folder / f"{n}.npy") for n in names}
        out["label"] = (folder / "label.txt").read_text().strip()
        out["q_prompts"] = _prompts(encoder, folder)
        return out
    rng = np.random.default_rng(seed)
    data = shared / "data"
    aid = json.loads((data / "rsicd_aid" / "dataset_rsicd_aid.json").read_text())["images"]
    ucm = json.loads((data / "ucm_captions" / "dataset_ucm_captions.json").read_text())["images"]
    base_imgs = [(data / r["filepath"] / r["filename"], aid_crops) for r in aid if r["split"] == "train"]
    base_imgs += [(data / r["filepath"] / r["filename"], ucm_crops) for r in ucm if r["split"] == "train"]
    held_aid = [r for r in aid if r["split"] == "test"]
    held = [data / r["filepath"] / r["filename"] for r in held_aid]
    held += [data / r["filepath"] / r["filename"] for r in ucm if r["split"] == "val"]
    held = [held[i] for i in np.sort(rng.choice(len(held), size=min(n_queries, len(held)), replace=False))]
    texts = [r["sentences"][int(rng.integers(len(r["sentences"])))]["raw"]
             for r in (held_aid[i] for i in np.sort(rng.choice(len(held_aid), size=n_queries, replace=False)))]
    newcrop_from = set(np.sort(rng.choice(len(base_imgs), size=n_queries, replace=False)).tolist())

    base_jobs, newcrop_jobs, held_jobs = [], [], []
    for i, (path, count) in enumerate(base_imgs):
        with Image.open(path) as im:
            size = im.size
        taken: set = set()
        base_jobs += [(path, k) for k in _crop_keys(rng, size, count, taken)]
        if i in newcrop_from:  # a crop of an indexed image that is not among its base crops
            newcrop_jobs += [(path, k) for k in _crop_keys(rng, size, 1, taken)]
    for path in held:
        with Image.open(path) as im:
            held_jobs += [(path, k) for k in _crop_keys(rng, im.size, 1, set())]

    def embed(jobs: list, what: str) -> np.ndarray:
        out, t = [], time.perf_counter()
        for start in range(0, len(jobs), 512):
            crops = []
            for path, k in jobs[start:start + 512]:
                with Image.open(path) as im:
                    crops.append(_crop(im.convert("RGB"), k))
            out.append(encoder.encode_images(crops, batch_size=64, workers=1, progress=False))
            log(f"  {what}: {start + len(crops):,}/{len(jobs):,} crops embedded "
                f"({(start + len(crops)) / (time.perf_counter() - t):.0f}/s)")
        return np.concatenate(out).astype(np.float32)

    result = {"base": embed(base_jobs, "base"), "q_heldout": embed(held_jobs, "held-apart images"),
              "q_newcrop": embed(newcrop_jobs, "new crops"), "q_text": encoder.encode_texts(texts).astype(np.float32)}
    result["label"] = f"crops of AID+UCM ({encoder.name}, {len(base_jobs):,}×{result['base'].shape[1]})"
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        np.save(folder / f"{n}.npy", result[n])
    (folder / "label.txt").write_text(result["label"] + "\n")
    result["q_prompts"] = _prompts(encoder, folder)
    return result


def _prompts(encoder, folder: Path) -> np.ndarray:
    """Embeddings of :data:`terravl.index.vectors.TUNING_PROMPTS`, the text sample build-time tuning can use."""
    from terravl.index.vectors import TUNING_PROMPTS

    path = folder / f"prompts-{hashlib.sha1(repr(TUNING_PROMPTS).encode()).hexdigest()[:8]}.npy"
    if not path.is_file():
        np.save(path, encoder.encode_texts(list(TUNING_PROMPTS)).astype(np.float32))
    return np.load(path)


def isotropic(n: int, dim: int, n_queries: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = np.empty((n + n_queries, dim), dtype=np.float32)
    for start in range(0, n + n_queries, 200_000):  # in slices: no float64 temporaries of the whole set
        chunk = rng.standard_normal((min(n + n_queries, start + 200_000) - start, dim), dtype=np.float32)
        data[start:start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return data[:n], data[n:]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- measuring -------------------------------------------------------------------------------------------------
def exact_truth(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[list[set], list[float]]:
    from terravl.index import exact_search

    truth, times = [], []
    for q in queries:
        t = time.perf_counter()
        pos, _ = exact_search(vectors, q, k)
        times.append(time.perf_counter() - t)
        truth.append(set(pos.tolist()))
    return truth, times


def measure(ann, queries: np.ndarray, truth: list[set], k: int) -> tuple[float, float, float]:
    """(recall@k against exact, p50 ms, p99 ms) of single-query searches, as `terravl search` makes them."""
    times, recall = [], []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        pos, _ = ann.search(q, k)
        times.append(time.perf_counter() - t)
        recall.append(len(truth[i] & set(pos.tolist())) / k)
    return float(np.mean(recall)), 1e3 * float(np.percentile(times, 50)), 1e3 * float(np.percentile(times, 99))


def _method(ann, fixed: bool) -> str:
    how = "fixed" if fixed else "auto + text sample" if ann.sample_queries else "auto"
    refine = f", re-rank {ann.refine * 10}" if ann.kind == "pq" else ""  # candidates for k = 10
    return f"IVF-{ann.kind} nlist {ann.nlist}, nprobe {ann.nprobe} ({how}){refine}"


def recall_rows(label: str, vectors: np.ndarray, query_sets: dict[str, np.ndarray], k: int, target: float,
                nprobe: int | None, sample: np.ndarray | None = None) -> list[dict]:
    """Exact; flat IVF tuned on leave-one-out rows, and on those plus the text ``sample``; IVF-fp16 (what
    ``search`` builds) tuned like the latter; the old fixed nprobe 32; IVF-PQ tuned like the flat index (with the
    sample if given); for each query set."""
    from terravl.index import IVFIndex

    ids = np.arange(len(vectors))
    truths = {name: exact_truth(vectors, q, k) for name, q in query_sets.items()}
    rows = [{"vectors": label, "queries": name, "method": "exact (numpy matmul)", "build_s": 0.0,
             "p50_ms": 1e3 * float(np.percentile(t[1], 50)), "p99_ms": 1e3 * float(np.percentile(t[1], 99)),
             "recall": 1.0, "tuned_recall": None} for name, t in truths.items()]
    variants = [("flat", nprobe, None), ("flat", nprobe, sample), ("fp16", nprobe, sample), ("flat", 32, None),
                ("pq", nprobe, sample)]
    if nprobe is not None:
        variants = [("flat", nprobe, None), ("fp16", nprobe, None), ("pq", nprobe, None)]
    elif sample is None:
        variants = [v for i, v in enumerate(variants) if i != 1]
    for kind, fixed, with_sample in variants:
        t = time.perf_counter()
        ann = IVFIndex.build(vectors, ids, kind=kind, nprobe=fixed, target=target, query_sample=with_sample)
        build = time.perf_counter() - t
        for name, q in query_sets.items():
            recall, p50, p99 = measure(ann, q, truths[name][0], k)
            rows.append({"vectors": label, "queries": name, "method": _method(ann, fixed is not None),
                         "build_s": build, "p50_ms": p50, "p99_ms": p99, "recall": recall,
                         "tuned_recall": ann.recall})
    return rows


def scale_rows(n: int, dim: int, n_queries: int, k: int, target: float, tune_queries: int) -> list[dict]:
    """IVF-flat, IVF-fp16 and IVF-PQ over N × dim isotropic vectors: build, latency, recall, measured and estimated
    memory."""
    import faiss

    from terravl.index import IVFIndex
    from terravl.index.vectors import estimate_bytes

    vectors, queries = isotropic(n, dim, n_queries)
    truth, times = exact_truth(vectors, queries, k)
    label = f"isotropic {n:,}×{dim} (scale test)"
    rows = [{"vectors": label, "queries": "isotropic", "method": "exact (numpy matmul)", "build_s": 0.0,
             "p50_ms": 1e3 * float(np.percentile(times, 50)), "p99_ms": 1e3 * float(np.percentile(times, 99)),
             "recall": 1.0, "tuned_recall": None, "index_mb": vectors.nbytes / 1e6, "estimate_mb": None,
             "rss_mb": None}]
    for kind in ("flat", "fp16", "pq"):
        log(f"  scale test: building IVF-{kind} over {n:,} × {dim}")
        t = time.perf_counter()
        ann = IVFIndex.build(vectors, np.arange(n), kind=kind, target=target, tune_queries=tune_queries)
        build = time.perf_counter() - t
        recall, p50, p99 = measure(ann, queries, truth, k)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "index.faiss"
            faiss.write_index(ann.index, str(path))
            size = path.stat().st_size + ann.ids.nbytes
            info = ann.info()
            del ann
            gc.collect()
            grown = loaded_rss(path)
        rows.append({"vectors": label, "queries": "isotropic",
                     "method": f"IVF-{kind} nlist {info['nlist']}, nprobe {info['nprobe']} (auto)"
                               + (f", re-rank {info['refine'] * k}" if kind == "pq" else ""),
                     "build_s": build, "p50_ms": p50, "p99_ms": p99, "recall": recall,
                     "tuned_recall": info["recall_at_10"], "index_mb": size / 1e6,
                     "estimate_mb": estimate_bytes(n, dim, kind) / 1e6, "rss_mb": (grown + 8 * n) / 1e6})
    return rows


def loaded_rss(path: Path) -> int:
    """Resident-memory growth of a fresh process that loads the saved FAISS index (measured after importing
    faiss, so only the index counts)."""
    import subprocess

    code = ("import os, sys, faiss\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
            "before = rss(); index = faiss.read_index(sys.argv[1]); print(rss() - before)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


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


# -- printing ---------------------------------------------------------------------------------------------------
def print_table(rows: list[dict], columns: list[tuple[str, str, int, str]]) -> None:
    print("| " + " | ".join(f"{title:<{w}}" if fmt == "s" else f"{title:>{w}}" for _, title, w, fmt in columns)
          + " |")
    print("|" + "|".join("-" * (w + 2) for _, _, w, _ in columns) + "|")
    for row in rows:
        cells = []
        for key, _, w, fmt in columns:
            value = row.get(key)
            cells.append(f"{'-':>{w}}" if value is None else f"{value:<{w}}" if fmt == "s" else f"{value:>{w}{fmt}}")
        print("| " + " | ".join(cells) + " |", flush=True)


def paper_rows(dim: int) -> list[dict]:
    from terravl.index.vectors import estimate_bytes

    return [{"vectors": f"{n:,}×{dim}", "kind": kind, "estimate_mb": estimate_bytes(n, dim, kind) / 1e6,
             "with_rerank_mb": estimate_bytes(n, dim, kind, rerank_vectors=kind == "pq") / 1e6}
            for n in (1_000_000, 10_000_000) for kind in ("flat", "fp16", "pq")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the scale test (b)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500, help="queries per set in (a)")
    parser.add_argument("--scale-queries", type=int, default=200, help="queries in the scale test (b)")
    parser.add_argument("--nprobe", type=int, default=None, help="fix nprobe instead of tuning it at build time")
    parser.add_argument("--target", type=float, default=0.95, help="recall@10 that build-time tuning aims for")
    parser.add_argument("--tune-queries", type=int, default=200, help="leave-one-out queries for tuning in (b)")
    parser.add_argument("--model", default=None, help="encoder for the crop archive (default: the default model)")
    parser.add_argument("--tiles", type=int, default=2000)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-vectors", action="store_true", help="skip (a) and (b)")
    parser.add_argument("--skip-recall", action="store_true", help="skip (a)")
    parser.add_argument("--skip-scale", action="store_true", help="skip (b)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args()
    from terravl import config

    result: dict = {}
    k = 10
    if not args.skip_vectors:
        shared = config.shared_dir()
        if args.skip_recall:
            pass
        elif shared is None:
            log("(a) skipped: no shared data folder (set TERRAVL_SHARED)")
        else:
            crops = crop_archive(shared, args.model, n_queries=args.queries)
            base = crops["base"]
            sets = {"held-apart images": crops["q_heldout"], "new crops of indexed images": crops["q_newcrop"],
                    "text (RSICD test captions)": crops["q_text"]}
            rows = recall_rows(crops["label"], base, sets, k, args.target, args.nprobe, crops["q_prompts"])
            iso_base, iso_q = isotropic(len(base), base.shape[1], args.queries)
            rows += recall_rows(f"isotropic {len(base):,}×{base.shape[1]}", iso_base, {"isotropic": iso_q}, k,
                                args.target, args.nprobe)
            result["recall"] = rows
            if args.format == "table":
                print(f"\n(a) recall@10 against exact search, single-query latency on 1 thread; target "
                      f"{args.target}\n")
                print_table(rows, [("vectors", "base vectors", 46, "s"), ("queries", "queries", 28, "s"),
                                   ("method", "method", 62, "s"), ("build_s", "build s", 7, ".1f"),
                                   ("p50_ms", "p50 ms", 6, ".2f"), ("recall", "recall@10", 9, ".3f"),
                                   ("tuned_recall", "at build", 8, ".3f")])
        if not args.skip_scale:
            rows = scale_rows(args.n, args.dim, args.scale_queries, k, args.target, args.tune_queries)
            result["scale"] = rows
            result["on_paper"] = paper_rows(args.dim)
            if args.format == "table":
                print(f"\n(b) scale test: {args.n:,} × {args.dim} isotropic random vectors, {args.scale_queries} queries, "
                      f"{args.tune_queries} tuning queries\n")
                print_table(rows, [("method", "method", 48, "s"), ("build_s", "build s", 7, ".1f"),
                                   ("p50_ms", "p50 ms", 6, ".2f"), ("p99_ms", "p99 ms", 6, ".2f"),
                                   ("recall", "recall@10", 9, ".3f"), ("tuned_recall", "at build", 8, ".3f"),
                                   ("index_mb", "index MB", 8, ".0f"), ("estimate_mb", "estimate MB", 11, ".0f"),
                                   ("rss_mb", "loaded RSS MB", 13, ".0f")])
                print("\non paper (estimate_bytes; IVF-PQ re-ranks from the float32 vectors, held in RAM or "
                      "memory-mapped)\n")
                print_table(result["on_paper"], [("vectors", "vectors", 14, "s"), ("kind", "kind", 4, "s"),
                                                  ("estimate_mb", "index MB", 9, ",.0f"),
                                                  ("with_rerank_mb", "+ re-rank vectors MB", 20, ",.0f")])
        if args.format == "table":
            print(f"\npeak RSS {rss_mib():,.0f} MiB")
    if not args.skip_build:
        r = bench_build(args.tiles)
        result["build"] = r
        if args.format == "table":
            print(f"\n(c) index build over {r['files']:,} AID JPEG tiles with the default model\n")
            print("| bare encode_images img/s | index build tiles/s | ratio |\n|---|---|---|")
            print(f"| {r['bare']:.1f} | {r['build']:.1f} | {r['build'] / r['bare']:.2f}× |")
    if args.format == "json":
        result["peak_rss_mib"] = rss_mib()
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
