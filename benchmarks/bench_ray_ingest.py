"""`index build --ray` on a local Ray cluster against the single-process build, and a throughput model for N machines.

    python benchmarks/bench_ray_ingest.py                  # 1,000 AID scenes (150 px), terravl-default
    python benchmarks/bench_ray_ingest.py --files 400 --format json

Measured in one run on this machine, each build into a fresh index:
  (a) the single-process build (`terravl index build`: a reading thread + the encoder, 2 torch threads);
  (b) the Ray build on a local cluster of all cores (one embedding actor of 1.5 Ray CPUs = 2 torch threads per 2
      cores, decoding tasks of 0.25 CPU beside it), timed from the build's start and with the cluster's start-up;
  (c) per-core rates the model for N machines is made of: decoding a tile (read + tile + hash, 1 thread), embedding
      a tile (encode_images, 1 thread), and the single writer's commit rate (SQLite transactions of 64 tiles with
      their vectors and locations).
Model: a machine of c cores sustains c / (1/decode + 1/embed) tiles/s; N machines N times that, until the writer's
rate W caps it; S shards (one writer each) raise the cap to S × W.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def aid_files(n: int) -> list[Path]:
    from terravl import config

    shared = config.shared_dir()
    folder = shared / "data" / "aid_150px" / "images" if shared else None
    if folder is None or not folder.is_dir():
        sys.exit("the shared AID images are absent (set TERRAVL_SHARED)")
    files = sorted(folder.rglob("*.jpg"))
    rng = np.random.default_rng(0)
    return [files[i] for i in sorted(rng.choice(len(files), size=min(n, len(files)), replace=False))]


def single(files: list[Path], out: Path) -> dict:
    import terravl.models as m
    from terravl.index import build_index

    encoder = m.load(threads=2)
    start = time.perf_counter()
    report = build_index(files, encoder, out)
    return {"seconds": time.perf_counter() - start, "tiles": report.added}


def on_ray(files: list[Path], out: Path, cores: int) -> dict:
    import ray

    from terravl.index.ray_build import RaySettings, build_index_ray

    begin = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    first: list[float] = []

    def seen(_n: int) -> None:
        if not first:
            first.append(time.perf_counter())

    try:
        start = time.perf_counter()
        # like the single process: one model with 2 torch threads per 2 cores, decoding beside it
        report = build_index_ray(files, "terravl-default", out, settings=RaySettings(
            num_actors=max(1, cores // 2), cpus_per_actor=1.5, decode_cpus=0.25), progress=seen)
        end = time.perf_counter()
    finally:
        ray.shutdown()
    return {"seconds": end - start, "with_startup": end - begin, "steady": end - first[0] if first else None,
            "tiles": report.added}


def per_core(files: list[Path], tmp: Path) -> dict:
    import torch

    import terravl.models as m
    from terravl.index.build import source_items
    from terravl.index.store import IndexStore, TileRow

    torch.set_num_threads(1)
    sample = files[:200]
    start = time.perf_counter()
    items = [i for f in sample for i in source_items(f, 256, 0, 512)]
    decode = len(items) / (time.perf_counter() - start)
    encoder = m.load(threads=1)
    encoder.encode_images([i.array for i in items[:16]], progress=False)  # warm-up
    start = time.perf_counter()
    encoder.encode_images([i.array for i in items], batch_size=64, progress=False)
    embed = len(items) / (time.perf_counter() - start)
    rng = np.random.default_rng(0)
    n, dim = 20_000, encoder.embed_dim
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    rows = [TileRow(f"{i:040x}", f"/archive/scene_{i // 16}.tif", {"col_off": i % 16, "row_off": 0, "width": 256,
                                                                     "height": 256}, None, None, None, None,
                    vectors[i]) for i in range(n)]
    with IndexStore(tmp / "writer", create=True, model="bench", dim=dim) as store:
        start = time.perf_counter()
        for b in range(0, n, 64):
            store.add(rows[b:b + 64])
        write = n / (time.perf_counter() - start)
    return {"decode": decode, "embed": embed, "write": write}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000, help="AID scenes to index")
    parser.add_argument("--cores", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args()
    files = aid_files(args.files)
    for f in files:  # into the page cache first: neither build pays for the first disk read
        f.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a = single(files, tmp / "single")
        shutil.rmtree(tmp / "single")
        b = on_ray(files, tmp / "ray", args.cores)
        c = per_core(files, tmp)
    rate_a = a["tiles"] / a["seconds"]
    rates_b = {k: b["tiles"] / b[k] for k in ("seconds", "with_startup", "steady") if b[k]}
    machine = args.cores / (1 / c["decode"] + 1 / c["embed"])
    result = {"files": len(files), "single": {**a, "rate": rate_a}, "ray": {**b, "rate": rates_b["seconds"],
              "rate_with_startup": rates_b["with_startup"]}, "per_core": c, "machine_rate": machine,
              "writer_limit_machines": c["write"] / machine}
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return
    print(f"\nIndexing {len(files):,} AID scenes (150 px, one tile each) with terravl-default, {args.cores} cores\n")
    print(f"| {'build':<46} | {'tiles/s':>8} | {'× single':>8} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 10}|")
    print(f"| {'single process (baseline)':<46} | {rate_a:>8.1f} | {1:>7.2f}× |")
    print(f"| {'Ray, local cluster (build only)':<46} | {rates_b['seconds']:>8.1f} | {rates_b['seconds'] / rate_a:>7.2f}× |")
    print(f"| {'Ray, local cluster (with cluster start-up)':<46} | {rates_b['with_startup']:>8.1f} | "
          f"{rates_b['with_startup'] / rate_a:>7.2f}× |")
    if "steady" in rates_b:
        print(f"| {'Ray, from the first commit (actors loaded)':<46} | {rates_b['steady']:>8.1f} | "
              f"{rates_b['steady'] / rate_a:>7.2f}× |")
    print(f"\nPer-core rates (1 thread): decode {c['decode']:.0f} tiles/s, embed {c['embed']:.1f} tiles/s; "
          f"one writer commits {c['write']:.0f} tiles/s")
    print(f"\n| {'machines (× ' + str(args.cores) + ' cores)':<22} | {'model tiles/s':>13} | {'1 writer':>9} | "
          f"{'8 shards':>9} |")
    print(f"|{'-' * 24}|{'-' * 15}|{'-' * 11}|{'-' * 11}|")
    for n in (1, 4, 16, 64, 256):
        want = n * machine
        print(f"| {n:<22} | {want:>13.0f} | {min(want, c['write']):>9.0f} | {min(want, 8 * c['write']):>9.0f} |")
    print(f"\nThe single writer caps the build at about {c['write'] / machine:.0f} machines of {args.cores} cores.")


if __name__ == "__main__":
    main()
