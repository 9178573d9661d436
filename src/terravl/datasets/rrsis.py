"""RRSIS-D referring remote-sensing image segmentation data (Liu et al., CVPR 2024), in the refer/RefCOCO layout it
is published in: ``refs(unc).p`` (a pickled list of references: ``ref_id``, ``ann_id``, ``image_id``, ``split``,
``sentences`` with ``sent``/``raw``), ``instances.json`` (COCO: ``images`` with ``file_name``, ``annotations`` with
``bbox`` [x, y, w, h] and ``segmentation`` as polygons or RLE) and the images (``images/rrsisd/JPEGImages/`` or
``JPEGImages/`` or ``images/``). Each sentence of a reference is one record.

The pickle is read with an unpickler that builds only plain containers, strings and numbers: a dataset file must
not be able to run code. A ``refs(unc).json`` with the same list is read as well.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np

from terravl.datasets.records import DatasetReader
from terravl.datasets.rsvg import GroundingRecord
from terravl.errors import DatasetFormatError

REFS_NAMES = ("refs(unc).p", "refs(unc).json", "refs.p", "refs.json")
IMAGE_FOLDERS = ("images/rrsisd/JPEGImages", "JPEGImages", "images")


class _PlainUnpickler(pickle.Unpickler):
    """Plain data only: any class or function reference in the file is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refuses to load {module}.{name}: only plain data is read")


def _refs_file(root: Path) -> Path | None:
    for base in (root, root / "rrsisd"):
        for name in REFS_NAMES:
            if (base / name).is_file():
                return base / name
    return None


class RRSISDataset(DatasetReader):
    """RRSIS-D (refer layout) → :class:`GroundingRecord` with masks."""

    format = "rrsis-d"
    description = "RRSIS-D (refer layout): refs(unc).p, instances.json (COCO polygons/RLE), JPEGImages/"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir() and _refs_file(path) is not None

    def _load(self) -> None:
        refs_path = _refs_file(self.path)
        if refs_path is None:
            raise DatasetFormatError(self.path, "no refs(unc).p / refs(unc).json found (RRSIS-D refer layout)")
        instances = refs_path.parent / "instances.json"
        if not instances.is_file():
            raise DatasetFormatError(self.path, f"no instances.json beside {refs_path.name}")
        try:
            raw = refs_path.read_bytes()
            refs = json.loads(raw) if refs_path.suffix == ".json" else _PlainUnpickler(io.BytesIO(raw)).load()
            coco = json.loads(instances.read_text())
        except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
            raise DatasetFormatError(refs_path, f"unreadable ({exc})") from None
        if not isinstance(refs, list) or not isinstance(coco, dict):
            raise DatasetFormatError(refs_path, "expected a list of references and a COCO instances object")
        images = {img.get("id"): img for img in coco.get("images", []) if isinstance(img, dict)}
        anns = {a.get("id"): a for a in coco.get("annotations", []) if isinstance(a, dict)}
        folder = next((self.path / f for f in IMAGE_FOLDERS if (self.path / f).is_dir()), self.path)
        for index, ref in enumerate(refs):
            where = f"{refs_path}#[{index}]"
            if not isinstance(ref, dict):
                self.problem(where, "reference is not an object")
                continue
            ann, image = anns.get(ref.get("ann_id")), images.get(ref.get("image_id"))
            if ann is None or image is None:
                self.problem(where, "its ann_id or image_id is not in instances.json")
                continue
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                self.problem(where, "annotation without a bbox [x, y, w, h]")
                continue
            seg = ann.get("segmentation")
            polygons = tuple(tuple(float(v) for v in p) for p in seg) if isinstance(seg, list) else ()
            rle = seg if isinstance(seg, dict) else None
            name = image.get("file_name") or ref.get("file_name")
            for s_index, sentence in enumerate(ref.get("sentences") or []):
                text = (sentence.get("sent") or sentence.get("raw") or "") if isinstance(sentence, dict) else ""
                if not str(text).strip():
                    self.problem(f"{where}.sentences[{s_index}]", "empty sentence")
                    continue
                self.records.append(GroundingRecord(folder / str(name), str(text).strip(), (x, y, x + w, y + h),
                                                    ref.get("split"), str(ref.get("category_id", "")) or None,
                                                    polygons, rle, ref=f"{ref.get('ref_id', index)}.{s_index}"))


def decode_mask(record: GroundingRecord, height: int, width: int) -> np.ndarray:
    """The record's target mask (H, W) bool: COCO polygons filled, or an RLE decoded (compressed or not)."""
    if record.rle is not None:
        return _decode_rle(record.rle)
    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    for poly in record.polygons:
        if len(poly) >= 6:
            draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=1)
    return np.asarray(img, dtype=bool)


def _decode_rle(rle: dict) -> np.ndarray:
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = _uncompress(counts)
    flat = np.zeros(height * width, dtype=bool)
    pos, value = 0, False
    for run in counts:
        if value:
            flat[pos:pos + int(run)] = True
        pos += int(run)
        value = not value
    return flat.reshape(width, height).T  # COCO RLE runs down columns


def _uncompress(text: str) -> list[int]:
    """COCO's compressed RLE string: 5-bit groups, a continuation bit, sign-extended, delta-coded after the
    second run."""
    counts: list[int] = []
    i = 0
    while i < len(text):
        value, shift, more = 0, 0, True
        while more:
            c = ord(text[i]) - 48
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            i += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts
