"""Re-ranking a text search with the captioner (`terravl search --rerank`): what it costs and what it finds, both
measured in the same run on the same queries.

    python benchmarks/bench_rerank.py                      # 500 queries on the rsicd_aid test images
    python benchmarks/bench_rerank.py --queries 50 --dataset ucm --format json

The index holds the held-out images of one captioned set (`rsicd_aid` test: 1,027 images; `ucm`: the 210 UC Merced
val images), built once under runs/bench_rerank. Queries are that split's own captions, spread evenly (every
10th for 500 of rsicd_aid's 5,135, every 5th for 210 of UCM's 1,050), each searched with `k` 10, without and then with `rerank`; a hit is the caption's own image. The
table gives the whole `search` call's p50 and p90 (one warm-up query each first) and recall at 1, 5 and 10 over
those queries. The model and captioner are the shipped defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SETS = {"rsicd_aid": (SHARED / "rsicd_aid" / "dataset_rsicd_aid.json", "test"),
        "ucm": (SHARED / "ucm_captions" / "dataset_ucm_captions.json", "val")}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(SETS), default="rsicd_aid")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--format", choices=["table", "json"], default="table")
    args = ap.parse_args(argv)

    import numpy as np

    import terravl.models as models
    from terravl.datasets import open_dataset
    from terravl.index import build_index
    from terravl.index.shards import open_index
    from terravl.tasks import search
    from terravl.tasks.rerank import Reranker

    path, split = SETS[args.dataset]
    records = [r for r in open_dataset(path) if r.split == split and r.path]
    out = ROOT / "runs" / "bench_rerank" / args.dataset
    if not (out / "done").exists():
        log(f"building the index of {len(records)} {split} images under {out} (once)")
        build_index([r.path for r in records], models.load(), out)
        (out / "done").write_text("ok\n")
    step = max(1, len(records) * 5 // args.queries)
    pairs = [(c, Path(r.path).name) for r in records for c in r.captions][::step][: args.queries]
    reranker = Reranker(models.load_captioner())
    rows = []
    with open_index(out, readonly=True) as store:
        for name, rerank in (("search", None), ("search --rerank", reranker)):
            search(store, text=pairs[0][0], k=10, rerank=rerank)  # warm-up: models, caches
            times, ranks = [], []
            for text, own in pairs:
                t0 = time.perf_counter()
                hits = search(store, text=text, k=10, rerank=rerank)
                times.append(1000 * (time.perf_counter() - t0))
                names = [Path(h.path).name for h in hits]
                ranks.append(names.index(own) if own in names else 10)
            ranks = np.array(ranks)
            rows.append({"path": name, "queries": len(pairs), "p50_ms": statistics.median(times),
                         "p90_ms": float(np.percentile(times, 90)),
                         **{f"R@{k}": 100.0 * float(np.mean(ranks < k)) for k in (1, 5, 10)}})
            log(f"{name}: done")
    if args.format == "json":
        print(json.dumps({"dataset": args.dataset, "split": split, "images": len(records), "rows": rows}, indent=1))
        return 0
    print(f"text search on {len(records)} {args.dataset} {split} images, {len(pairs)} of its captions as queries")
    print(f"{'path':<18}{'p50 ms':>9}{'p90 ms':>9}{'R@1':>8}{'R@5':>8}{'R@10':>8}")
    for r in rows:
        print(f"{r['path']:<18}{r['p50_ms']:>9.1f}{r['p90_ms']:>9.1f}{r['R@1']:>8.2f}{r['R@5']:>8.2f}{r['R@10']:>8.2f}")
    base, with_rerank = rows
    print(f"cost of re-ranking: {with_rerank['p50_ms'] / base['p50_ms']:.1f}× the p50 of a plain search")
    return 0


if __name__ == "__main__":
    sys.exit(main())
