"""Peak memory and time of `terravl change` on large pairs (issue 15: "memory stays bounded: tiled processing, peak
RSS measured on a 20,000 × 20,000 pair").

    python benchmarks/bench_change.py                       # 2,000² baseline and 20,000² pair, cva and trained
    python benchmarks/bench_change.py --sides 2000,6000 --methods cva

Each row runs `terravl change` in its own process (so its peak RSS, ru_maxrss, is its own) on a synthetic UTM pair:
smooth terrain, and on the after date a brighter scene with bright blocks pasted in (1 % of the area). The 2,000²
row, measured in the same run, is the baseline: bounded memory means the 20,000² row (100× the pixels) needs about
the same. The pairs are written once into --workdir (about 0.5 GB for 20,000²) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BLOCK = 1024


def write_pair(folder: Path, side: int) -> tuple[Path, Path]:
    """before/after GeoTIFFs side × side (tiled, deflate), written block by block at constant memory."""
    import numpy as np
    import rasterio
    from affine import Affine
    from PIL import Image

    before, after = folder / f"before_{side}.tif", folder / f"after_{side}.tif"
    if before.exists() and after.exists():
        return before, after
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": Affine(0.5, 0, 500000, 0, -0.5, 4000000), "tiled": True, "compress": "deflate",
               "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER"}
    rng = np.random.default_rng(0)
    with rasterio.open(before.with_suffix(".part"), "w", **profile) as b, \
            rasterio.open(after.with_suffix(".part"), "w", **profile) as a:
        for row in range(0, side, BLOCK):
            for col in range(0, side, BLOCK):
                h, w = min(BLOCK, side - row), min(BLOCK, side - col)
                small = rng.integers(60, 160, size=(h // 32 + 2, w // 32 + 2, 3)).astype(np.uint8)
                scene = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
                later = np.clip(scene.astype(np.int16) + 10, 0, 255).astype(np.uint8)
                for _ in range(max(1, h * w // 400_000)):  # ~1 % of the area: 64² bright blocks
                    r, c = rng.integers(0, max(1, h - 64)), rng.integers(0, max(1, w - 64))
                    later[r:r + 64, c:c + 64] = (245, 240, 235)
                window = rasterio.windows.Window(col, row, w, h)
                b.write(np.moveaxis(scene, -1, 0), window=window)
                a.write(np.moveaxis(later, -1, 0), window=window)
    before.with_suffix(".part").replace(before)
    after.with_suffix(".part").replace(after)
    return before, after


def run(before: Path, after: Path, method: str, out: Path) -> dict:
    """`terravl change` in a child process: wall time and the child's own peak RSS (from wait4)."""
    cmd = [sys.executable, "-m", "terravl.cli.main", "change", str(before), str(after), "--method", method,
           "--out", str(out), "--format", "json"]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "stdout.json", "wb") as so, open(out / "stderr.txt", "wb") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se)
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(out / 'stderr.txt').read_text()[-2000:]}")
    return {"result": json.loads((out / "stdout.json").read_text()), "seconds": elapsed,
            "peak_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", default="2000,20000", help="Pair sides in pixels; the first is the baseline.")
    parser.add_argument("--methods", default="cva,trained")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/terravl-bench-change"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for side in (int(s) for s in args.sides.split(",")):
        start = time.perf_counter()
        before, after = write_pair(args.workdir, side)
        print(f"pair {side}² ready ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        for method in args.methods.split(","):
            measured = run(before, after, method, args.workdir / f"out_{side}_{method}")
            result = measured["result"]
            rows.append((side, method, measured["seconds"], measured["peak_mib"],
                         side * side / measured["seconds"] / 1e6, 100 * result["changed_fraction"],
                         result["region_count"]))
            print(f"{side}² {method}: {measured['seconds']:.0f} s, {measured['peak_mib']:.0f} MiB", file=sys.stderr)
    base = {method: peak for side, method, _, peak, *_ in rows if side == rows[0][0]}
    print(f"{'pair':>14} {'method':>8} {'wall s':>8} {'peak RSS MiB':>13} {'× baseline':>11} {'Mpx/s':>7} "
          f"{'changed %':>10} {'regions':>8}")
    for side, method, seconds, peak, rate, share, regions in rows:
        print(f"{side:>6,} × {side:<6,} {method:>8} {seconds:>8.0f} {peak:>13.0f} {peak / base[method]:>10.2f}× "
              f"{rate:>7.2f} {share:>10.2f} {regions:>8}")


if __name__ == "__main__":
    main()
