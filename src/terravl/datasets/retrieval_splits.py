"""The split files used by remote-sensing cross-modal retrieval code (AMFMN, GaLR, …).

``<split>_filename.txt`` and ``<split>_caps.txt`` per split (``train``, ``test``, and Sydney's re-divided
``train_…_verify``/``val_…_verify``). Two alignments occur in the wild and both are read: one file name per image
with 5 caption lines each (the train files), or one file name per caption line, repeated (the test files).
"""

from __future__ import annotations

import re
from pathlib import Path

from terravl.datasets.records import CaptionRecord, DatasetReader
from terravl.errors import DatasetFormatError

_NAME = re.compile(r"^(?P<split>[a-z]+)_filename(?P<suffix>(?:_[a-z]+)?)\.txt$")
CAPTIONS_PER_IMAGE = 5


def split_file_pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    """(split, filename file, caps file) for every complete pair in ``folder``."""
    pairs = []
    if not folder.is_dir():
        return pairs
    for file in sorted(folder.glob("*_filename*.txt")):
        match = _NAME.match(file.name)
        if not match:
            continue
        caps = folder / f"{match['split']}_caps{match['suffix']}.txt"
        if caps.is_file():
            split = match["split"] + (match["suffix"] if match["suffix"] else "")
            pairs.append((split, file, caps))
    return pairs


class RetrievalSplits(DatasetReader):
    """Records: :class:`CaptionRecord` (no image paths: these files carry text only)."""

    format = "retrieval-splits"
    description = "RS retrieval split files: <split>_filename.txt + <split>_caps.txt (AMFMN layout)"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return bool(split_file_pairs(path))

    def _load(self) -> None:
        pairs = split_file_pairs(self.path)
        if not pairs:
            raise DatasetFormatError(self.path, "no <split>_filename.txt / <split>_caps.txt pairs found")
        image_id = 0
        for split, names_file, caps_file in pairs:
            names = _lines(names_file)
            caps = _lines(caps_file)
            if len(names) == len(caps):
                groups = _group_aligned(names, caps)
            elif len(caps) == CAPTIONS_PER_IMAGE * len(names):
                groups = [(n, caps[i * CAPTIONS_PER_IMAGE:(i + 1) * CAPTIONS_PER_IMAGE]) for i, n in enumerate(names)]
            else:
                self.problem(caps_file, f"{len(caps)} caption lines do not match {len(names)} file names "
                                        f"(expected {len(names)} or {CAPTIONS_PER_IMAGE * len(names)}); split skipped")
                continue
            for index, (name, captions) in enumerate(groups):
                kept = tuple(c.strip() for c in captions if c.strip())
                for c_index, caption in enumerate(captions):
                    if not caption.strip():
                        self.problem(f"{caps_file}#{name}[{c_index}]", "empty caption line (skipped)")
                if not name.strip():
                    self.problem(f"{names_file}#{index}", "empty file name (skipped)")
                    continue
                self.records.append(CaptionRecord(image_id, name.strip(), split, kept))
                image_id += 1

    def extra_summary(self) -> dict:
        return {"images": len(self.records), "captions": sum(len(r.captions) for r in self.records)}


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _group_aligned(names: list[str], caps: list[str]) -> list[tuple[str, list[str]]]:
    groups: list[tuple[str, list[str]]] = []
    for name, cap in zip(names, caps):
        if groups and groups[-1][0] == name:
            groups[-1][1].append(cap)
        else:
            groups.append((name, [cap]))
    return groups
