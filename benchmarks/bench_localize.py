"""Peak memory and time of semantic localisation on large plain images (issue 22: "one normal upload to
/api/v1/localize exhausts memory").

    python benchmarks/bench_localize.py                 # 4000² JPEG at the default scale, 1000² JPEG at --scales 32
    python benchmarks/bench_localize.py --side 2000     # a smaller big image

Each row runs in its own process so that its peak RSS (ru_maxrss) is its own. The baseline row, measured in the
same run, is the floor every localisation pays: the model loaded and the whole image decoded once. Target:
localize on a 4000² upload ≤ 1.5 GB peak RSS (it grew past 8 GB before the fix; the CLI needed 3.96 GB for a
1000² JPEG at --scales 32).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(2)
import terravl.models as m
mode, path, scales = sys.argv[1], sys.argv[2], tuple(int(s) for s in sys.argv[3].split(","))
encoder = m.load(m.DEFAULT_MODEL)
start = time.perf_counter()
if mode == "floor":
    from terravl.io import read_image
    read_image(path)
    encoder.encode_texts(["a river"])
    windows = 0
else:
    from terravl.tasks import localize
    windows = localize(path, "a river", encoder, scales=scales, trusted=False)["windows"]
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"windows": windows, "seconds": elapsed, "peak_mib": peak}))
"""


def make_jpeg(path: Path, side: int) -> Path:
    """A side² JPEG made of real AID scenes when ../shared is there (else smooth noise), so JPEG sizes are real."""
    import numpy as np
    from PIL import Image

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "aid_150px" / "images"
    canvas = Image.new("RGB", (side, side))
    scenes = sorted(shared.glob("*/*.jpg"))[:400] if shared.is_dir() else []
    rng = np.random.default_rng(0)
    for i, y in enumerate(range(0, side, 150)):
        for j, x in enumerate(range(0, side, 150)):
            if scenes:
                tile = Image.open(scenes[(i * 37 + j) % len(scenes)]).convert("RGB")
            else:
                tile = Image.fromarray(rng.integers(0, 255, (150, 150, 3), dtype=np.uint8))
            canvas.paste(tile, (x, y))
    canvas.save(path, quality=90)
    return path


def run(mode: str, path: Path, scales: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), scales], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=4000, help="Side of the large JPEG (pixels).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big = make_jpeg(Path(tmp) / f"big_{args.side}.jpg", args.side)
        small = make_jpeg(Path(tmp) / "small_1000.jpg", 1000)
        rows = [
            (f"floor: model + decode {args.side}² JPEG (baseline)", run("floor", big, "256")),
            (f"localize {args.side}² JPEG, scales 256 (the service default)", run("localize", big, "256")),
            ("localize 1000² JPEG, scales 32", run("localize", small, "32")),
        ]
    print("| run | windows | seconds | peak RSS MiB |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['windows']:,} | {r['seconds']:.1f} | {r['peak_mib']:.0f} |")
    floor = rows[0][1]["peak_mib"]
    print(f"\nlocalize {args.side}² over the floor: +{rows[1][1]['peak_mib'] - floor:.0f} MiB "
          f"(target: ≤ 1536 MiB in all)")


if __name__ == "__main__":
    main()
