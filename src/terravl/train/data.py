"""Training data for contrastive training: images decoded once into a uint8 tensor cache, their captions (and
class-name prompts) as string ids, and the frozen text tower's features computed once and cached on disk."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from terravl.datasets import open_dataset
from terravl.datasets.records import CaptionRecord, ImageRecord
from terravl.errors import InputError
from terravl.eval.zeroshot import RS_TEMPLATES, class_phrase


@dataclass
class Split:
    """One split: image paths, an image tensor cache, caption ids per image, class label per image."""

    paths: list[Path]
    images: torch.Tensor                   # (N, 3, S, S) uint8
    captions: list[list[int]]              # ids into TextTable.strings
    labels: list[int]                      # ids into TextTable.classes, -1 if none
    skipped: list[dict] = field(default_factory=list)
    rows: list = field(default_factory=list)
    val_rows: list = field(default_factory=list)
    name: str = ""                                              # the dataset's short name (evaluation splits)
    class_ids: list[int] = field(default_factory=list)          # its own classes, ids into TextTable.classes


@dataclass
class TextTable:
    """Every distinct training/eval string (captions and class prompts) with its id."""

    strings: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)   # per class: ids of its prompts

    def add(self, text: str) -> int:
        if text not in self.index:
            self.index[text] = len(self.strings)
            self.strings.append(text)
        return self.index[text]

    def add_classes(self, classes: list[str], templates=RS_TEMPLATES) -> None:
        self.classes = sorted(classes)
        self.prompt_ids = [[self.add(t.format(class_phrase(c))) for t in templates] for c in self.classes]


def load_records(path: str | Path, split: str, label_captions: bool = False
                 ) -> list[tuple[Path, list[str], str | None]]:
    """(image path, captions, class phrase) for a split of a caption dataset or class folders (captions empty).

    ``split="all"`` takes every record (for class folders without split lists; never use it for evaluation data).
    With ``label_captions``, an image's object multi-labels become one more caption ("an aerial image with cars,
    trees and pavement"): words for what is in the scene, beside the sentences people wrote."""
    dataset = open_dataset(path)
    rows = []
    for r in dataset:
        if split != "all" and getattr(r, "split", None) != split:
            continue
        if isinstance(r, CaptionRecord):
            if r.path is None:
                continue
            extra = [tags_caption(r.tags)] if label_captions and r.tags else []
            rows.append((r.path, list(r.captions) + extra, class_phrase(r.label) if r.label else None))
        elif isinstance(r, ImageRecord):
            rows.append((r.path, [], class_phrase(r.label) if r.label else None))
    if not rows:
        raise InputError(path, f"no images with files on disk in split {split!r}")
    return rows


def tags_caption(tags) -> str:
    """``("cars", "trees", "pavement")`` → "an aerial image with cars, trees and pavement"."""
    words = [class_phrase(t) for t in tags]
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"an aerial image with {listed}"


def decode_split(rows, size: int, table: TextTable, progress: bool = True) -> Split:
    """Decode and resize every image once (bilinear, whole image) into a uint8 tensor."""
    from terravl.models.images import to_pil

    images, keep, skipped = [], [], []
    for path, captions, label in tqdm(rows, desc=f"decoding @{size}px", unit="img", disable=not progress or None):
        try:
            img = to_pil(path)
        except (InputError, OSError, ValueError) as exc:
            skipped.append({"path": str(path), "error": getattr(exc, "message", str(exc))})
            continue
        img = img.resize((size, size), Image.BILINEAR, reducing_gap=None)
        images.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
        keep.append((path, captions, label))
    class_index = {c: i for i, c in enumerate(table.classes)}
    return Split([p for p, _, _ in keep], torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8),
                 [[table.add(c) for c in caps] for _, caps, _ in keep],
                 [class_index.get(label, -1) if label else -1 for _, _, label in keep], skipped)


def text_features(table: TextTable, cache_dir: Path, progress: bool = True) -> torch.Tensor:
    """Frozen MiniLM features of every string, computed once and cached by content hash."""
    from terravl.models.text_towers import shared_sentence_encoder

    digest = hashlib.sha256("\n".join(table.strings).encode()).hexdigest()[:16]
    cache = cache_dir / f"text_features_{digest}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    encoder = shared_sentence_encoder()
    with tqdm(total=len(table.strings), desc="text features (frozen MiniLM, once)", unit="txt",
              disable=not progress or None) as bar:
        feats = encoder.encode(table.strings, progress=bar.update)
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(feats, cache)
    return feats


def file_checksum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def images_checksum(paths: list[Path]) -> str:
    """One sha256 over the (name, sha256) of every image read: the exact training input, in one line."""
    h = hashlib.sha256()
    for p in sorted(paths, key=str):
        h.update(f"{Path(p).name}:{file_checksum(Path(p))}\n".encode())
    return h.hexdigest()


def describe_data(config_data: str, train: Split, evaluation: Split) -> dict:
    info = {"dataset": str(config_data), "train_images": len(train.paths),
            "validation_images": len(train.val_rows), "eval_images": len(evaluation.paths),
            "train_images_sha256": images_checksum(train.paths), "skipped": train.skipped + evaluation.skipped}
    if Path(config_data).is_file():
        info["dataset_sha256"] = file_checksum(Path(config_data))
    return info


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
