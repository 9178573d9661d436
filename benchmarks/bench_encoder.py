"""Images/s of ``Encoder.encode_images`` over a folder of JPEG tiles (decode + preprocess + forward), against the
bare model forward on ready tensors, in the same run.

    python benchmarks/bench_encoder.py                     # 2,000 tiles, ViT-B-32 (random weights) [+ terravl-default]
    python benchmarks/bench_encoder.py --n 256 --models vit-b-32
    python benchmarks/bench_encoder.py --models terravl-default,terravl-default-v2 --backends torch,onnx

TerraVL's own models run once per image backend asked for (``TERRAVL_IMAGE_BACKEND``: PyTorch, or the ONNX
Runtime twin of the image tower that is the default on the CPU), so the two are compared in the same run.

Tiles are the AID JPEGs in ../shared/data/aid_150px when present, else 256-px JPEG chips cut from the shipped
sample rasters. Target (issue 4): encode_images ≥ 0.9× the bare forward rate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch


def tile_folder(n: int, tmp: Path) -> list[Path]:
    from terravl import config

    shared = config.shared_dir()
    if shared and (shared / "data" / "aid_150px" / "images").is_dir():
        files = sorted((shared / "data" / "aid_150px" / "images").rglob("*.jpg"))
        step = max(1, len(files) // n)
        return files[::step][:n]
    from PIL import Image

    from terravl.io import iter_tiles

    out: list[Path] = []
    while len(out) < n:
        for raster in sorted(config.samples_dir().glob("*.tif")):
            for tile in iter_tiles(raster, 256, 128):
                path = tmp / f"t{len(out):05d}.jpg"
                Image.fromarray(tile.array.copy()).save(path, quality=90)
                out.append(path)
                if len(out) >= n:
                    return out
    return out


def bench(encoder, files: list[Path], batch_size: int) -> dict:
    from terravl.models.images import to_pil

    ready = torch.stack([encoder.preprocess(to_pil(f)) for f in files])
    encoder.encode_images(files[:batch_size], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(ready), batch_size):
            encoder._forward_images(ready[i:i + batch_size])
    bare = len(files) / (time.perf_counter() - start)
    start = time.perf_counter()
    encoder.encode_images(files, batch_size=batch_size, progress=False)
    full = len(files) / (time.perf_counter() - start)
    return {"bare": bare, "full": full}


def startup_seconds(image: Path, repeats: int = 3) -> float:
    """Wall time of a fresh process from start to the default model's first image embedding (median)."""
    import statistics
    import subprocess

    code = ("import terravl.models as m; m.load('terravl-default').encode_images([%r])" % str(image))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="number of JPEG tiles")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--models", default="vit-b-32,terravl-default",
                        help="comma list: vit-b-32 (open_clip ViT-B-32, random weights) and/or registry names")
    parser.add_argument("--backends", default="onnx",
                        help="image backends for TerraVL's own models, comma list of torch and onnx (default: onnx, "
                             "what runs by default on the CPU)")
    args = parser.parse_args()
    import os

    import terravl.models as m

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = tile_folder(args.n, Path(tmp))
        for name in args.models.split(","):
            if name == "vit-b-32":
                import open_clip

                ckpt = Path(tmp) / "vit-b-32.pt"
                torch.save(open_clip.create_model("ViT-B-32", pretrained=None, pretrained_text=False).state_dict(),
                           ckpt)
                encoder = m.load(ckpt, arch="ViT-B-32")
                label = "open_clip ViT-B-32"
                rows.append((label, bench(encoder, files, args.batch_size)))
                continue
            for backend in args.backends.split(","):
                os.environ["TERRAVL_IMAGE_BACKEND"] = backend
                try:
                    encoder = m.load(name)
                except m.WeightsNotFoundError as exc:
                    print(f"skipping {name}: {exc}", file=sys.stderr)
                    break
                own = encoder.__class__.__name__ == "TerraVLEncoder"
                label = f"{name} [{backend}]" if own else name
                rows.append((label, bench(encoder, files, args.batch_size)))
                print(f"{label}: done", file=sys.stderr)
                if not own:
                    break
            os.environ.pop("TERRAVL_IMAGE_BACKEND", None)
    if "terravl-default" in args.models.split(","):
        print(f"\nstart-up to the first embedding with terravl-default (fresh process, median of 3): "
              f"{startup_seconds(files[0]):.2f} s", file=sys.stderr)
    print(f"\nencode_images over {len(files)} JPEG tiles, batch {args.batch_size}, {torch.get_num_threads()} torch "
          f"threads\n")
    print(f"| {'model':<30} | {'bare forward img/s':>18} | {'encode_images img/s':>19} | {'ratio':>6} |")
    print(f"|{'-' * 32}|{'-' * 20}|{'-' * 21}|{'-' * 8}|")
    for label, r in rows:
        print(f"| {label:<30} | {r['bare']:>18.1f} | {r['full']:>19.1f} | {r['full'] / r['bare']:>5.2f}× |")


if __name__ == "__main__":
    main()
