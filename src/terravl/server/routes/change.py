"""Change over time: what changed between two dates of one place (two uploads or two indexed tiles), the files of
a change run by its opaque id, and questions about the change. The work runs in the service's heavy pool."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from terravl.io import BAND_PROFILES
from terravl.server.deps import MAX_ID, ServiceDep
from terravl.server.schemas import AskChangeResult, ChangeResponse, shaped
from terravl.server.service import ChangeOptions, ChangeSide
from terravl.validation import check_bands, check_int, check_text

router = APIRouter(tags=["change"])
MAX_REGION_PIXELS = 1_000_000
Method = Literal["trained", "cva", "embedding"]

BEFORE = File(None, description="The earlier image (JPEG, PNG, GeoTIFF or WebP, recognised by content); or give "
                                "before_id. A GeoTIFF pair is aligned by its georeference (any CRS); images without "
                                "one must have the same size.")
AFTER = File(None, description="The later image of the same place; or give after_id.")
BEFORE_ID = Form(None, ge=1, le=MAX_ID, description="Id of an indexed tile for the earlier date (with after_id); "
                                                    "or upload before.")
AFTER_ID = Form(None, ge=1, le=MAX_ID, description="Id of an indexed tile of the same place at the later date.")
INDEX = Form(None, description="The index the tile ids are from (default: the first served).")
METHOD = Form("trained", description="trained: the shipped change detector; cva: change vector analysis on "
                                     "normalised pixels (no model); embedding: distance of the dual encoder's "
                                     "window embeddings.")
MIN_REGION = Form(16, description=f"Changed regions under this many pixels are speckle, not change "
                                  f"(1–{MAX_REGION_PIXELS:,}).")
BANDS = Form(None, max_length=40, description="Bands of multispectral uploads to show as RGB: a profile (sentinel2, "
                                              "landsat8, …) or 1-based indexes like 4,3,2. Default: what each file "
                                              "says.")
DESCRIBE = Form(True, description="Caption each date and classify the largest regions on each date (slower).")


def _options(method: str, min_region_pixels: int, bands: str | None, describe: bool) -> ChangeOptions:
    return ChangeOptions(method, check_int(min_region_pixels, "min_region_pixels", 1, MAX_REGION_PIXELS),
                         check_bands(bands, BAND_PROFILES), bool(describe))


def _sides(before_id: int | None, after_id: int | None) -> tuple[ChangeSide, ChangeSide]:
    return ChangeSide("before", "before_id", tile_id=before_id), ChangeSide("after", "after_id", tile_id=after_id)


@router.post("/api/v1/change", response_model=ChangeResponse,
             responses={413: {"description": "an upload over the pixel limit, or an overlap over the work budget"}})
async def change(request: Request, service: ServiceDep, before: UploadFile | None = BEFORE,
                 after: UploadFile | None = AFTER, before_id: int | None = BEFORE_ID, after_id: int | None = AFTER_ID,
                 index: str | None = INDEX, method: Method = METHOD, min_region_pixels: int = MIN_REGION,
                 bands: str | None = BANDS, describe: bool = DESCRIBE):
    """What changed between two dates of one place: two uploads (``before``, ``after``) or two indexed tiles
    (``before_id``, ``after_id``). The pair is put on the before image's grid over their overlap; a pair that does
    not overlap is refused (400), and an overlap over the server's work budget too (413).

    Returns how much changed (share of the valid pixels, area in m² when georeferenced), the changed ``regions``
    as a GeoJSON FeatureCollection (WGS84, largest first, each with its area and position, and its scene class
    on each date when ``describe``), a ``caption`` of the change, each date's caption (``describe``), and
    ``links`` to the run's files: a PNG preview (before | after | changes in red), the change mask and the change
    probability (GeoTIFFs) and the regions (GeoJSON)."""
    options = _options(method, min_region_pixels, bands, describe)
    result = await service.on_pair(*_sides(before_id, after_id), (before, after), index, options.bands,
                                   lambda b, a, labels, trusted: service.change(b, a, labels, trusted, options),
                                   request)
    return shaped(ChangeResponse, result)


@router.get("/api/v1/changes/{change_id}/{name}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}, "image/tiff": {}, "application/geo+json": {}}}})
async def change_file(service: ServiceDep, change_id: str, name: str):
    """A file of a change run, by the ``change_id`` that ``/api/v1/change`` returned: ``preview.png``,
    ``mask.tif``, ``change.tif`` or ``regions.geojson`` (the last 50 runs are kept)."""
    path, media = service.change_file(change_id, name)
    return FileResponse(path, media_type=media, filename=f"change-{change_id[:8]}-{name}")


@router.post("/api/v1/ask-change", response_model=AskChangeResult)
async def ask_change(request: Request, service: ServiceDep,
                     question: str = Form(..., min_length=1, max_length=500,
                                          description="e.g. how much area changed? where? what was there before?"),
                     before: UploadFile | None = BEFORE, after: UploadFile | None = AFTER,
                     before_id: int | None = BEFORE_ID, after_id: int | None = AFTER_ID, index: str | None = INDEX,
                     method: Method = METHOD, min_region_pixels: int = MIN_REGION, bands: str | None = BANDS,
                     describe: bool = DESCRIBE):
    """Answer a question about the change between two dates (the same inputs as ``/api/v1/change``). Whether,
    how much, how many regions, where and what was there before are answered from the measured change
    (``based_on``: "measured change"); any other question is put to the VQA model on each date."""
    from terravl.models.bridge import question_prompt

    asked = check_text(question, "question")
    question_prompt(asked)  # a clear 400 before any work
    options = _options(method, min_region_pixels, bands, describe)
    result = await service.on_pair(*_sides(before_id, after_id), (before, after), index, options.bands,
                                   lambda b, a, labels, trusted: service.ask_change(b, a, labels, trusted, asked,
                                                                                    options), request)
    return shaped(AskChangeResult, result)
