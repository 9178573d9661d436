"""The typed arguments of the MCP tools, built from the same limits as the CLI and the HTTP API.

Every bound comes from :mod:`terravl.validation` or the HTTP routes' own constants, so an agent is told (in each
tool's JSON schema) exactly what the API would accept; the tools then run the same ``check_*`` functions as the
routes, so the two cannot disagree. Images arrive as base64 data, never as a path: :func:`upload_of` turns one
into what the service's upload path expects (an object with ``.file``), enforcing the byte limit before anything
is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from terravl.tasks.classify import BUILTIN_CLASSES
from terravl.errors import ImageTooLargeError, InputError
from terravl.server.deps import MAX_ID
from terravl.server.routes.archive import BBOX, MAX_HITS
from terravl.server.routes.change import MAX_REGION_PIXELS
from terravl.server.routes.kb import MAX_EVIDENCE
from terravl.server.routes.understand import MAX_TOP
from terravl.validation import (MAX_BEAMS, MAX_LABEL_CHARS, MAX_LABELS, MAX_QUERY_CHARS, MAX_SCALE, MAX_SCALES,
                                MAX_TOKENS, MIN_SCALE)

MAX_THUMBNAILS = 10
"""Most hit thumbnails one search returns as image content (each is a PNG of up to 256 px)."""
THUMBNAIL_SIZE = 256
DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)

Text = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS,
                            description="What to look for, in plain language (e.g. 'a harbor with many boats').")]
Question = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS,
                                description="A question about the image, e.g. 'is there a bridge?'.")]
K = Annotated[int, Field(ge=1, le=MAX_HITS, description=f"Hits to return, 1–{MAX_HITS}.")]
KBQuestion = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS,
                                  description="A question for the knowledge base, e.g. 'what covers the depot "
                                              "roof?'.")]
Evidence = Annotated[int, Field(ge=1, le=MAX_EVIDENCE, description=f"Evidence items to return, 1–{MAX_EVIDENCE}.")]
Top = Annotated[int, Field(ge=1, le=MAX_TOP, description=f"How many to return, 1–{MAX_TOP}.")]
Bbox = Annotated[list[float] | str | None, Field(description=f"Only tiles intersecting this box: {BBOX}, as four "
                                                             "numbers or a comma-separated string.")]
Date = Annotated[str | None, Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="YYYY-MM-DD")]
TileId = Annotated[int | None, Field(ge=1, le=MAX_ID, description="Id of an indexed tile (from a search hit); or "
                                                                   "send the image as data.")]
Labels = Annotated[list[Annotated[str, Field(max_length=MAX_LABEL_CHARS)]] | str | None,
                   Field(description=f"Class names to score (a list or a comma-separated string): at least 2, at "
                                     f"most {MAX_LABELS}, each at most {MAX_LABEL_CHARS} characters. Or use "
                                     f"classes.")]
Classes = Annotated[Literal[tuple(BUILTIN_CLASSES)] | None,  # type: ignore[valid-type]
                    Field(description="A built-in class list instead of labels.")]
Bands = Annotated[str | None, Field(max_length=40, description="Bands of a multispectral image to show as RGB: a "
                                                               "profile (sentinel2, landsat8, …) or 1-based indexes "
                                                               "like 4,3,2. Default: what the file says.")]
Beams = Annotated[int, Field(ge=1, le=MAX_BEAMS, description=f"Beam width, 1–{MAX_BEAMS} (1: greedy).")]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS, description=f"Longest caption in tokens, 1–{MAX_TOKENS}.")]
Scales = Annotated[list[Annotated[int, Field(ge=MIN_SCALE, le=MAX_SCALE)]] | str,
                   Field(description=f"Window sizes in pixels ({MIN_SCALE}–{MAX_SCALE}, at most {MAX_SCALES}), e.g. "
                                     f"[128, 256].")]
Method = Annotated[Literal["trained", "cva", "embedding"],
                   Field(description="trained: the shipped change detector; cva: change vector analysis on "
                                     "normalised pixels (no model); embedding: distance of the dual encoder's "
                                     "window embeddings.")]
MinRegion = Annotated[int, Field(ge=1, le=MAX_REGION_PIXELS, description=f"Changed regions under this many pixels "
                                                                         f"are speckle (1–{MAX_REGION_PIXELS:,}).")]
Describe = Annotated[bool, Field(description="Caption each date and classify the largest regions (slower).")]
MaxObjects = Annotated[int, Field(ge=0, le=20, description="Most objects the description names, 0–20 (the parts "
                                                           "list every one found).")]
GroundMethod = Annotated[Literal["auto", "trained", "baseline"],
                         Field(description="trained: the shipped referring-segmentation head; baseline: "
                                           "training-free dense similarity of the dual encoder; auto: trained when "
                                           "installed.")]
AllInstances = Annotated[bool, Field(description="Every instance found, best first (default: the best one).")]
Rerank = Annotated[bool, Field(description="Text queries: have the captioner re-read the 20 best tiles and "
                                           "re-order them (better order, about 20× slower).")]
Thumbnails = Annotated[int, Field(ge=0, le=MAX_THUMBNAILS, description=f"PNG thumbnails of the best hits to return "
                                                                       f"as image content, 0–{MAX_THUMBNAILS}.")]


def image_type(max_bytes: int, what: str = "An image") -> Any:
    """The type of an image argument: base64 text (or a ``data:`` URL) no longer than ``max_bytes`` of data can
    be, so an oversized image is refused by the schema before it is decoded."""
    limit = math.ceil(max_bytes / 3) * 4
    limit += limit // 76 * 2 + 256  # MIME line breaks and a data-URL prefix
    return Annotated[str | None, Field(max_length=limit, description=(
        f"{what} as base64 data (a data: URL is accepted): JPEG, PNG, GeoTIFF or WebP, recognised by content, at "
        f"most {max_bytes:,} bytes. Never a file path."))]


def index_type(names: list[str]) -> Any:
    """The ``index`` argument: one of the served indexes (an enum in the schema), default the first."""
    return Annotated[Literal[tuple(names)] | None,  # type: ignore[valid-type]
                     Field(description=f"The served index to use (default {names[0]!r}).")]


def kb_type(names: list[str]) -> Any:
    """The ``kb`` argument: one of the served knowledge bases by name (an enum in the schema), default the first;
    never a path."""
    return Annotated[Literal[tuple(names)] | None,  # type: ignore[valid-type]
                     Field(description=f"The served knowledge base to use, by name (default {names[0]!r}); see "
                                       f"terravl://kbs.")]


@dataclass(frozen=True)
class Upload:
    """An image sent as data, in the shape the service's upload path reads (FastAPI's ``UploadFile.file``)."""

    file: io.BytesIO


def upload_of(data: str | None, max_bytes: int, field: str = "image") -> Upload | None:
    """The decoded image of a base64 argument (None when absent); errors name ``field``."""
    if data is None:
        return None
    text = DATA_URL.sub("", data.strip(), count=1)
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "is not valid base64 data (send the image's bytes base64-encoded, never a "
                                "path)") from None
    if not raw:
        raise InputError(field, "is empty")
    if len(raw) > max_bytes:
        raise ImageTooLargeError(field, f"{len(raw):,} bytes is over the upload limit of {max_bytes:,} bytes")
    return Upload(io.BytesIO(raw))
