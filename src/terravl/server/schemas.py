"""Response schemas of the HTTP API, derived from the task result types of :mod:`terravl.results`, so the CLI's
JSON and the API's cannot drift apart: a subclass only adds what the web needs (which index, a thumbnail URL)."""

from __future__ import annotations

from pydantic import BaseModel

from terravl.results import Answer, Caption, ChangeAnswer, ChangeResult, Classification, SearchHit
from terravl.tasks.describe import Description


class Hit(SearchHit):
    """A search hit, with the index it came from and the URL of its thumbnail."""

    index: str
    thumbnail: str


class IndexInfo(BaseModel):
    name: str
    tiles: int
    model: str


class ClassifyResult(Classification):
    pass


class CaptionResult(Caption):
    pass


class AskResult(Answer):
    pass


class DescribeResult(Description):
    pass


class LocalizeResult(BaseModel):
    query: str
    path: str
    windows: int
    regions: dict
    heatmap: str


class ChangeLinks(BaseModel):
    """URLs of a change run's files (the last 50 runs are kept)."""

    preview: str
    """PNG: before | after | after with the changed pixels in red."""
    mask: str
    """GeoTIFF: 1 changed, 0 unchanged, 255 no data, on the before image's grid over the overlap."""
    change: str
    """GeoTIFF: change probability (float32)."""
    regions: str
    """GeoJSON (WGS84): the changed regions, the same as ``regions`` inline."""


class ChangeResponse(ChangeResult):
    """What changed between two dates (the CLI's ``terravl change`` JSON), with the run's opaque id and the URLs
    of its files; ``outputs`` (server paths in the CLI) is always null here."""

    change_id: str
    links: ChangeLinks


class AskChangeResult(ChangeAnswer):
    pass


class PoolState(BaseModel):
    """One work pool: jobs running, jobs waiting, how many it admits, and whether new work will wait."""

    busy: int
    queued: int
    capacity: int
    saturated: bool


class Readiness(BaseModel):
    status: str
    indexes: list[str]
    queue: int
    pools: dict[str, PoolState]


def shaped(model: type[BaseModel], data: dict) -> BaseModel:
    """``data`` as ``model``, keeping only the fields the schema declares (a task may return more)."""
    return model.model_validate({k: v for k, v in data.items() if k in model.model_fields})
