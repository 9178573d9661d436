"""The typed shapes every capability answers with, shared by the library, the CLI and the HTTP service.

One :class:`Problem` describes any input that could not be answered (an unreadable file, a missing file named by a
dataset, a symbolic-link loop, a raster with no valid pixels…), wherever it was found: readers, tiling, encoding,
index builds and tasks all report the same shape, in the same JSON (``{"path", "error"}``). Each task result is a
small pydantic model: the CLI prints its ``to_dict()`` as JSON and its fields as table columns, the HTTP service
declares the same class (or a subclass adding links) as its response schema, so the two cannot drift apart.

This module sits at the bottom of the layers (beside :mod:`terravl.errors`): every layer may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Iterator, TypeVar

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Problem:
    """One input that got no answer: where (a file, ``file#item``, or a field name) and why, in words.

    ``index`` is the position of the input in the caller's list when it has one (tasks answer in input order)."""

    path: str
    error: str
    index: int | None = None

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "error": self.error}

    @classmethod
    def of(cls, source: Any, exc: BaseException, index: int | None = None) -> "Problem":
        """The problem an exception describes: a typed :class:`~terravl.errors.InputError` gives its own message."""
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return cls(str(source), message, index)


class Result(BaseModel):
    """Base of every task result: plain data, JSON as the CLI and the API print it (``None`` fields left out)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class Located(Result):
    """What a result is about: the input (a path, ``image #N`` or ``upload``) and, for a tile of a larger raster,
    its pixel window; ``footprint`` is its WGS84 GeoJSON polygon when the raster is georeferenced; ``bands`` says
    which bands of a multispectral file were shown as RGB, and why."""

    path: str
    window: dict | None = None
    footprint: dict | None = None
    bands: dict | None = None


class LabelScore(Result):
    label: str
    probability: float


class Classification(Located):
    """Zero-shot scene class of one image or tile: the best label, its probability, and the top ``k``."""

    label: str
    score: float
    top: list[LabelScore]


class Caption(Located):
    caption: str


class Answer(Located):
    question: str
    answer: str


class SearchHit(Result):
    """An indexed tile that matches a query, with where it is (source file, window, footprint, CRS) and when."""

    id: int
    path: str
    window: dict | None = None
    footprint: dict | None = None
    crs: str | None = None
    acquired: str | None = None
    content_hash: str | None = None
    score: float

    def to_dict(self) -> dict[str, Any]:
        # hits keep their null fields: a consumer reads the same keys for every hit
        return self.model_dump()


class CaptionMatch(Result):
    caption: str
    score: float
    rank: int


T = TypeVar("T", bound=Result)


@dataclass(frozen=True)
class Answers(Generic[T]):
    """A task's answer to a batch: one entry per input (or per tile of a tiled input), in input order, each a
    result or a :class:`Problem`. ``answered + len(problems) == inputs`` always holds."""

    items: tuple[T | Problem, ...]

    def __iter__(self) -> Iterator[T | Problem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> T | Problem:
        return self.items[i]

    @property
    def results(self) -> list[T]:
        return [x for x in self.items if not isinstance(x, Problem)]

    @property
    def problems(self) -> list[Problem]:
        return [x for x in self.items if isinstance(x, Problem)]

    def to_list(self) -> list[dict]:
        """JSON form: results and problems in input order (problems as ``{"path", "error"}`` entries)."""
        return [x.to_dict() for x in self.items]

    def summary(self) -> dict[str, int]:
        return {"inputs": len(self.items), "answered": len(self.results), "problems": len(self.problems)}



class ChangeResult(Result):
    """What changed between two dates of one place (:func:`terravl.tasks.change`).

    Fractions are of the pixels valid on both dates; ``changed_area_m2`` is None without a georeference. ``regions``
    is a GeoJSON FeatureCollection (WGS84) of the changed regions, largest first, each with its area, share of the
    scene, position and scene class on each date. ``caption`` describes the change (``caption_source``: composed from
    these numbers, or a trained change captioner); ``before_caption`` / ``after_caption`` describe each date."""

    before: str
    after: str
    before_date: str | None = None
    after_date: str | None = None
    method: str
    threshold: float
    changed: bool
    changed_fraction: float
    changed_pixels: int
    valid_pixels: int
    changed_area_m2: float | None = None
    region_count: int
    regions: dict
    caption: str
    caption_source: str
    before_caption: str | None = None
    after_caption: str | None = None
    grid: dict
    outputs: dict | None = None
    warnings: list[str] = []

    def to_dict(self) -> dict[str, Any]:
        # keeps its null fields (no georeference → no area): every result has the same keys
        return self.model_dump()


class ChangeAnswer(Result):
    """An answer to a question about the change between two dates; ``based_on`` says where it comes from (the
    measured change, or the VQA model on each date)."""

    before: str
    after: str
    question: str
    answer: str
    based_on: str


class ChangeSeries(Result):
    """Every consecutive pair of a time series, in date order, and the timeline of changed area."""

    rasters: list[dict]
    pairs: list[dict]
    timeline: list[dict]
    outputs: dict | None = None
    warnings: list[str] = []
