"""Tiling throughput and peak memory on a large generated GeoTIFF, against a bare rasterio windowed-read loop.

    python benchmarks/bench_tiling.py            # 20,000 × 20,000 × 4-band uint16 (3.2 GB, written to a temp dir)
    python benchmarks/bench_tiling.py --side 4000 --keep /tmp/big.tif

Each measurement runs in its own process so that its peak RSS (ru_maxrss) is its own. Targets (issue 3):
terravl ≥ 0.8× the baseline's megapixels/s, peak RSS < 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(path: Path, side: int, block: int = 256) -> None:
    """A tiled 4-band uint16 GeoTIFF with smooth structure plus noise (like reflectance), written in strips."""
    import rasterio
    from affine import Affine

    profile = {"driver": "GTiff", "width": side, "height": side, "count": 4, "dtype": "uint16", "tiled": True,
               "blockxsize": block, "blockysize": block, "crs": "EPSG:32633", "BIGTIFF": "YES",
               "transform": Affine(10.0, 0, 500000.0, 0, -10.0, 5000000.0)}
    rng = np.random.default_rng(0)
    cols = np.arange(side, dtype=np.float32)
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(path, "w", **profile) as dst:
        for row in range(0, side, block):
            h = min(block, side - row)
            rows = np.arange(row, row + h, dtype=np.float32)[:, None]
            base = 2000 + 1500 * np.sin(cols / 700.0) * np.cos(rows / 900.0)
            strip = np.empty((4, h, side), dtype=np.uint16)
            for b in range(4):
                strip[b] = (base * (1 + 0.2 * b) + rng.integers(0, 400, (h, side))).astype(np.uint16)
            dst.write(strip, window=((row, row + h), (0, side)))


def run_baseline(path: str, size: int) -> dict:
    import rasterio
    from rasterio.windows import Window

    from terravl.io import tile_windows

    start = time.perf_counter()
    pixels = 0
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(path) as ds:
        for _, _, w in tile_windows(ds.width, ds.height, size, 0):
            data = ds.read(window=Window(w.col_off, w.row_off, w.width, w.height))
            pixels += data.shape[1] * data.shape[2]
    return {"seconds": time.perf_counter() - start, "pixels": pixels}


def run_terravl(path: str, size: int) -> dict:
    from terravl.io import iter_tiles

    start = time.perf_counter()
    pixels = 0
    for tile in iter_tiles(path, size, 0):
        pixels += tile.window.width * tile.window.height
        assert tile.array.dtype == np.uint8
    return {"seconds": time.perf_counter() - start, "pixels": pixels}


def child(kind: str, path: str, size: int) -> None:
    result = {"baseline": run_baseline, "terravl": run_terravl}[kind](path, size)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(kind: str, path: Path, size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--path", str(path), "--size", str(size)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=20_000, help="raster width = height in pixels")
    parser.add_argument("--size", type=int, default=256, help="tile size")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each reader; the median is reported")
    parser.add_argument("--keep", type=Path, help="write (or reuse) the raster here instead of a temp dir")
    parser.add_argument("--child", choices=["baseline", "terravl"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path, args.size)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "big.tif"
        if not path.exists():
            t0 = time.perf_counter()
            generate(path, args.side)
            print(f"generated {args.side}×{args.side}×4 uint16 in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        # warm the page cache once so neither run pays for the first disk read, then alternate the two readers
        # and keep each one's median run (by time)
        measure("baseline", path, args.size)
        runs: dict[str, list[dict]] = {"baseline": [], "terravl": []}
        for _ in range(args.repeats):
            for kind in runs:
                runs[kind].append(measure(kind, path, args.size))
        rows = {kind: sorted(r, key=lambda x: x["seconds"])[len(r) // 2] for kind, r in runs.items()}
    base_rate = rows["baseline"]["pixels"] / rows["baseline"]["seconds"] / 1e6
    print(f"\nTiling a {args.side:,} × {args.side:,} × 4-band uint16 GeoTIFF into {args.size}-px tiles "
          f"(median of {args.repeats} runs, each in its own process)\n")
    print(f"| {'reader':<44} | {'MPx/s':>7} | {'× baseline':>10} | {'peak RSS MiB':>12} |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 12}|{'-' * 14}|")
    labels = {"baseline": "rasterio windowed read, all bands (baseline)",
              "terravl": "terravl iter_tiles → uint8 RGB + mask + stretch"}
    for kind, r in rows.items():
        rate = r["pixels"] / r["seconds"] / 1e6
        print(f"| {labels[kind]:<44} | {rate:>7.1f} | {rate / base_rate:>9.2f}× | {r['peak_rss_mib']:>12.0f} |")
    # the spread: each back-to-back pair (baseline run, then terravl run) gives one ratio
    ratios = sorted(b["seconds"] / t["seconds"] * t["pixels"] / b["pixels"]
                    for b, t in zip(runs["baseline"], runs["terravl"]))
    print(f"\nratio of each back-to-back pair ({len(ratios)}): " + ", ".join(f"{r:.2f}" for r in ratios) +
          f"; min {ratios[0]:.2f}, median {ratios[len(ratios) // 2]:.2f}, max {ratios[-1]:.2f}")


if __name__ == "__main__":
    main()
