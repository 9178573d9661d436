"""Scene-classification datasets stored as one folder per class.

UC Merced (21 classes), AID (30), NWPU-RESISC45 (45), EuroSAT (10), WHU-RS19 (19) and PatternNet (38) are all
distributed this way, sometimes under one extra folder (``images/``, ``2750/``, ``Images/``). Splits, where a
dataset has official ones, come from list files beside the folders, in TorchGeo's naming
(``<name>-train.txt``/``train.txt``, one image file name or relative path per line) or from a ``labels.csv``
with a ``split`` column.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from terravl.datasets.records import DatasetReader, ImageRecord, is_image

_SPLIT_FILE = re.compile(r"(?:^|[-_])(train|val|valid|validation|test)\.txt$", re.I)


def _class_root(path: Path) -> Path | None:
    """The folder whose sub-folders are classes: ``path`` itself or its only sub-folder."""
    if not path.is_dir():
        return None
    for candidate in (path, *[d for d in path.iterdir() if d.is_dir()][:1]):
        subdirs = [d for d in candidate.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if len(subdirs) >= 2 and all(any(is_image(f) for f in d.iterdir()) for d in subdirs[:5]):
            return candidate
        if candidate is path and len(subdirs) != 1:
            return None
    return None


class SceneFolderDataset(DatasetReader):
    """Images under ``<root>/<Class>/<image>``; the label is the folder name."""

    format = "scene-folders"
    description = "scene classification, one folder per class (UCM, AID, RESISC45, EuroSAT, WHU-RS19, PatternNet)"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return _class_root(path) is not None

    def _load(self) -> None:
        root = _class_root(self.path)
        if root is None:
            from terravl.errors import DatasetFormatError

            raise DatasetFormatError(self.path, "no class folders with images found")
        self.root = root
        splits = self._split_lists()
        for class_dir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for file in sorted(class_dir.iterdir()):
                if file.name.startswith("."):
                    continue
                if not is_image(file):
                    self.problem(file, "not an image file (unexpected extension)")
                    continue
                rel = f"{class_dir.name}/{file.name}"
                split = splits.get(rel) or splits.get(file.name)
                self.records.append(ImageRecord(file, class_dir.name, split))
        if splits:
            listed = {r.path.name for r in self.records if r.split}
            for name in splits:
                if Path(name).name not in listed:
                    self.problem(name, "listed in a split file but not found among the class folders")

    def _split_lists(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for folder in {self.path, self.root}:
            for file in sorted(folder.glob("*.txt")):
                match = _SPLIT_FILE.search(file.name)
                if not match:
                    continue
                split = {"valid": "val", "validation": "val"}.get(match[1].lower(), match[1].lower())
                for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
                    name = line.strip().replace("\\", "/")
                    if name:
                        found[_relative(name)] = split
            labels = folder / "labels.csv"
            if labels.is_file():
                with open(labels, newline="", encoding="utf-8") as fh:
                    reader = csv.DictReader(fh)
                    if reader.fieldnames and "split" in reader.fieldnames and "path" in reader.fieldnames:
                        for row in reader:
                            if row.get("split"):
                                found[_relative(row["path"])] = row["split"]
        return found

    def extra_summary(self) -> dict:
        return {"images": len(self.records), "root": str(self.root)}


def _relative(name: str) -> str:
    parts = name.split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else name
