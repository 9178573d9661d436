"""Visual grounding over HTTP: where in an upload or an indexed tile is the thing an expression names? The answer
(boxes, regions with areas, scores) inline, and the run's files (mask, probability, regions, preview) by an opaque
id. The work runs in the service's heavy pool, with the same upload hardening as the other image routes."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel

from terravl.io import BAND_PROFILES
from terravl.server.deps import MAX_ID, ServiceDep
from terravl.server.schemas import shaped
from terravl.server.service import ImageSource
from terravl.tasks.ground import GroundResult
from terravl.validation import check_bands

router = APIRouter(tags=["ground"])


class GroundLinks(BaseModel):
    """URLs of a grounding run's files (the last 50 runs are kept)."""

    mask: str
    """GeoTIFF: 1 the answer, 2 other matches, 0 no match, 255 no data (georeferenced like the input)."""
    score: str
    """GeoTIFF: the probability of each pixel (float32)."""
    regions: str
    """GeoJSON: the answer's outlines, the same as ``regions`` inline."""
    preview: str
    """PNG: the image | the image with the answer in red (other matches yellow) and its box."""


class GroundResponse(GroundResult):
    """Where the expression is (the CLI's ``terravl ground`` JSON), with the run's id and the URLs of its files;
    ``outputs`` (server paths in the CLI) is always null here."""

    ground_id: str
    links: GroundLinks


@router.post("/api/v1/ground", response_model=GroundResponse,
             responses={413: {"description": "an upload over the pixel limit or the work budget"}})
async def ground(request: Request, service: ServiceDep,
                 expression: str = Form(..., description="What to find, e.g. \"the storage tanks next to the "
                                                         "river\" (at most 500 characters)."),
                 image: UploadFile | None = File(None, description="An image (JPEG, PNG, GeoTIFF or WebP, recognised "
                                                                   "by content); or give id."),
                 id: int | None = Form(None, ge=1, le=MAX_ID, description="Id of an indexed tile; or upload an "
                                                                          "image."),
                 index: str | None = Form(None, description="The index the tile id is from (default: the first)."),
                 all: bool = Form(False, description="Every instance found, best first (default: the best one)."),
                 method: Literal["auto", "trained", "baseline"] = Form(
                     "auto", description="trained: the shipped referring-segmentation head; baseline: training-free "
                                         "dense similarity; auto: trained when installed."),
                 bands: str | None = Form(None, max_length=40, description="Bands of a multispectral upload to show "
                                                                           "as RGB (sentinel2, 4,3,2, …).")):
    """Find what ``expression`` refers to in an upload or an indexed tile: the best matching region (every one
    with ``all``), each with its score, box (pixel window and WGS84 polygon when the image is georeferenced;
    pixel coordinates only, said in ``coordinates``, when not), area and outline (``regions``, GeoJSON). When
    nothing matches, ``found`` is false and ``best_score`` says how close the best region came. ``links`` give the
    mask and probability GeoTIFFs, the regions and a PNG preview."""
    from terravl.tasks.ground import check_expression

    text = check_expression(expression)  # a clear 400 before any work
    source = ImageSource(tile_id=id, index=index, bands=check_bands(bands, BAND_PROFILES))
    if id is not None and image is None:
        service.index_name(index)  # an unknown index is a 404 before any work
    result = await service.on_image(source, image, lambda src: service.ground(src, text, all, method), request)
    return shaped(GroundResponse, result)


@router.get("/api/v1/groundings/{ground_id}/{name}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}, "image/tiff": {}, "application/geo+json": {}}}})
async def ground_file(service: ServiceDep, ground_id: str, name: str):
    """A file of a grounding run, by the ``ground_id`` that ``/api/v1/ground`` returned: ``mask.tif``,
    ``score.tif``, ``regions.geojson`` or ``preview.png`` (the last 50 runs are kept)."""
    path, media = service.run_file("groundings", ground_id, name)
    return FileResponse(path, media_type=media, filename=f"ground-{ground_id[:8]}-{name}")
