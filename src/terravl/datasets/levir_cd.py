"""LEVIR-CD (Chen & Shi, Remote Sensing 2020) and datasets in its layout: bi-temporal pairs with change masks.

``A/<name>.png`` (before), ``B/<name>.png`` (after), ``label/<name>.png`` (0 = no change, 255 = changed
building), either flat or under ``train/``, ``val/``, ``test/``. Flat crops take their split from ``list/<split>.txt``
or, in the BIT crop naming ``<split>_<tile>_<row>_<col>.png``, from the name.
"""

from __future__ import annotations

import re
from pathlib import Path

from terravl.datasets.records import ChangePairRecord, DatasetReader, is_image
from terravl.errors import DatasetFormatError

_SPLITS = ("train", "val", "test")
_PREFIX = re.compile(r"^(train|val|test)_")


def _pair_roots(path: Path) -> list[tuple[str | None, Path]]:
    if not path.is_dir():
        return []
    if (path / "A").is_dir() and (path / "B").is_dir():
        return [(None, path)]
    return [(s, path / s) for s in _SPLITS if (path / s / "A").is_dir() and (path / s / "B").is_dir()]


class LevirCD(DatasetReader):
    """Records: :class:`ChangePairRecord` with ``mask`` (and ``changed`` from the mask when checked)."""

    format = "levir-cd"
    description = "LEVIR-CD change detection: A/, B/, label/ (flat or per split)"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return bool(_pair_roots(path))

    def _load(self) -> None:
        roots = _pair_roots(self.path)
        if not roots:
            raise DatasetFormatError(self.path, "no A/ and B/ folders found")
        lists = self._split_lists()
        for split, root in roots:
            names_b = {p.name for p in (root / "B").iterdir() if is_image(p)}
            label_dir = root / "label"
            for before in sorted(p for p in (root / "A").iterdir() if not p.name.startswith(".")):
                if not is_image(before):
                    self.problem(before, "not an image file")
                    continue
                if before.name not in names_b:
                    self.problem(before, "no matching after image in B/")
                    continue
                mask = label_dir / before.name if label_dir.is_dir() else None
                if mask is not None and not mask.is_file():
                    self.problem(before, "no matching change mask in label/")
                    mask = None
                record_split = split or lists.get(before.name) or _name_split(before.name)
                self.records.append(ChangePairRecord(before.stem, before, root / "B" / before.name, record_split,
                                                     mask=mask))
            names_a = {p.name for p in (root / "A").iterdir()}
            for name in sorted(names_b - names_a):
                self.problem(root / "B" / name, "no matching before image in A/")

    def _split_lists(self) -> dict[str, str]:
        found = {}
        for split in _SPLITS:
            file = self.path / "list" / f"{split}.txt"
            if file.is_file():
                for line in file.read_text(encoding="utf-8", errors="replace").split():
                    found[line.strip()] = split
        return found

    def extra_summary(self) -> dict:
        return {"pairs": len(self.records), "masks": sum(1 for r in self.records if r.mask)}


def _name_split(name: str) -> str | None:
    match = _PREFIX.match(name)
    return match[1] if match else None
