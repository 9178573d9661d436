"""RSVG / DIOR-RSVG visual-grounding data (Zhan et al., TGRS 2023): one box per expression.

Layout as published: ``Annotations/*.xml`` (Pascal VOC: ``<filename>`` and, per ``<object>``, ``<name>``,
``<bndbox>`` with ``xmin ymin xmax ymax`` and ``<description>``, the expression), ``JPEGImages/`` and split files
``train.txt`` / ``val.txt`` / ``test.txt`` of object indices: objects are numbered across the annotation files in
sorted file order, as the authors' data loader counts them. Without split files every object is read.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from terravl.datasets.records import DatasetReader
from terravl.errors import DatasetFormatError


@dataclass(frozen=True)
class GroundingRecord:
    """One expression about one image: the target's box (x0, y0, x1, y1, pixels, exclusive ends) and, where the
    dataset has one, its mask (``polygons``: COCO polygons, or ``rle``: a COCO RLE dict)."""

    image: Path
    expression: str
    box: tuple[float, float, float, float]
    split: str | None = None
    category: str | None = None
    polygons: tuple = ()
    rle: dict | None = None
    ref: str = ""

    @property
    def has_mask(self) -> bool:
        return bool(self.polygons) or self.rle is not None


class RSVGDataset(DatasetReader):
    """DIOR-RSVG folder → :class:`GroundingRecord` (boxes only)."""

    format = "rsvg"
    description = "RSVG / DIOR-RSVG: Annotations/*.xml (object name, bndbox, description), JPEGImages/, split txt"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "Annotations").is_dir() and any((path / "Annotations").glob("*.xml"))

    def _load(self) -> None:
        root = self.path
        annotations = sorted((root / "Annotations").glob("*.xml")) if (root / "Annotations").is_dir() else []
        if not annotations:
            raise DatasetFormatError(root, "no Annotations/*.xml found (RSVG / DIOR-RSVG layout)")
        images = root / "JPEGImages"
        splits = {}
        for split in ("train", "val", "test"):
            file = root / f"{split}.txt"
            if file.is_file():
                for line in file.read_text().split():
                    if line.strip().isdigit():
                        splits[int(line)] = split
        count = 0
        for path in annotations:
            try:
                tree = ET.parse(path).getroot()
            except ET.ParseError as exc:
                self.problem(path, f"not readable XML ({exc})")
                continue
            filename = (tree.findtext("filename") or path.stem + ".jpg").strip()
            for obj in tree.findall("object"):
                index, count = count, count + 1
                where = f"{path}#object[{index}]"
                text = (obj.findtext("description") or "").strip()
                box = obj.find("bndbox")
                try:
                    x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                except (AttributeError, TypeError, ValueError):
                    self.problem(where, "missing or non-numeric bndbox")
                    continue
                if not text:
                    self.problem(where, "missing description (the expression)")
                    continue
                if x1 <= x0 or y1 <= y0:
                    self.problem(where, f"empty box {x0, y0, x1, y1}")
                    continue
                if splits and index not in splits:
                    continue
                self.records.append(GroundingRecord(images / filename, text, (x0, y0, x1, y1),
                                                    splits.get(index), (obj.findtext("name") or "").strip() or None,
                                                    ref=str(index)))
