"""Typed records that the dataset readers yield, and the reader base class.

Every reader honours the dataset's official split, reports each malformed item as a :class:`Problem` naming its
file and index (never dropping it silently), and summarises itself in the shape ``terravl datasets inspect``
prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".jp2"}


@dataclass(frozen=True)
class Problem:
    """One unreadable or malformed item: where (file, with ``#index`` or field) and what is wrong."""

    path: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "error": self.error}


@dataclass(frozen=True)
class ImageRecord:
    """An image with its scene class (classification datasets)."""

    path: Path
    label: str
    split: str | None = None


@dataclass(frozen=True)
class CaptionRecord:
    """An image with its reference captions (caption and retrieval datasets)."""

    image_id: int
    filename: str
    split: str
    captions: tuple[str, ...]
    path: Path | None = None
    label: str | None = None
    tags: tuple[str, ...] = ()            # object multi-labels where the dataset has them (UCM: "cars", "trees")


@dataclass(frozen=True)
class VQARecord:
    """One question about one image, with its answer and question type (RSVQA)."""

    question_id: int
    image_id: int
    question: str
    answer: str
    question_type: str
    split: str
    path: Path | None = None


@dataclass(frozen=True)
class ChangePairRecord:
    """A bi-temporal pair: before (A) and after (B) images, with change captions or a change mask."""

    name: str
    before: Path
    after: Path
    split: str | None = None
    captions: tuple[str, ...] = ()
    changed: bool | None = None
    mask: Path | None = None


class DatasetReader:
    """Base class: subclasses set ``format`` and implement ``detect``, ``_load`` (fill ``records``)."""

    format: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, path: str | Path, split: str | None = None):
        self.path = Path(path)
        self.problems: list[Problem] = []
        self.records: list = []
        self._load()
        if split is not None:
            self.records = [r for r in self.records if getattr(r, "split", None) == split]

    @classmethod
    def detect(cls, path: Path) -> bool:
        raise NotImplementedError

    def _load(self) -> None:
        raise NotImplementedError

    def problem(self, where: str | Path, error: str) -> None:
        self.problems.append(Problem(str(where), error))

    def __iter__(self) -> Iterator:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def summary(self) -> dict:
        """``format``, ``splits`` (images per split), ``classes`` (images per class), ``problems``, extras."""
        splits = Counter(getattr(r, "split", None) or "all" for r in self.records)
        classes = Counter(r.label for r in self.records if getattr(r, "label", None))
        return {"format": self.format, "path": str(self.path), "splits": dict(sorted(splits.items())),
                "classes": dict(sorted(classes.items())), **self.extra_summary(),
                "problems": [p.to_dict() for p in self.problems]}

    def extra_summary(self) -> dict:
        return {}


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES

