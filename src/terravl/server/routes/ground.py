"""Visual grounding over HTTP: where in an upload or an indexed tile is the thing an expression names? The answer
(boxes, regions with areas, scores) inline, and the run's files (mask, probability, regions, preview) by an opaque
id. The work runs in the service's heavy pool, with the same upload hardening as the other image routes."""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel

from terravl.io import BAND_PROFILES
from terravl.server.deps import MAX_ID, ServiceDep
from terravl.server.errors import NotFound, Unavailable
from terravl.server.schemas import shaped
from terravl.server.service import HEATMAP_ID, KEEP_OUTPUTS, ChangeSide, ImageSource
from terravl.tasks.ground import GroundResult
from terravl.validation import check_bands

router = APIRouter(tags=["ground"])
FILES = {"mask.tif": "image/tiff", "score.tif": "image/tiff", "regions.geojson": "application/geo+json",
         "preview.png": "image/png"}
LINKS = {"mask": "mask.tif", "score": "score.tif", "regions": "regions.geojson", "preview": "preview.png"}
_lock = threading.Lock()


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


def _folder(service) -> Path:
    """A new folder for one run; the oldest beyond the last 50 are deleted."""
    root = service.tmp / "groundings"
    with _lock:
        root.mkdir(exist_ok=True)
        existing = []
        for path in root.iterdir():
            try:
                existing.append((path.stat().st_mtime, path))
            except OSError:
                continue
        for _, old in sorted(existing)[:-(KEEP_OUTPUTS - 1)]:
            shutil.rmtree(old, ignore_errors=True)
        new = root / uuid.uuid4().hex
        new.mkdir()
    return new


def _method(service, name: str):
    """The grounding method, loaded once per service (the trained head reads the shipped default encoder's tower,
    whatever model the served indexes were built with)."""
    import terravl.models as m
    from terravl.models.registry import WeightsNotFoundError
    from terravl.tasks.ground_methods import make_method

    cache = service.__dict__.setdefault("_ground_methods", {})
    with _lock:
        if name not in cache:
            try:
                cache[name] = make_method(name, encoder=service.encoder(m.DEFAULT_MODEL))
            except WeightsNotFoundError:
                # the registry's message names folders on this server: not for the caller
                raise Unavailable("the trained grounder is not installed on this server (use method=baseline)") from None
        return cache[name]


def _run(service, source: ImageSource, expression: str, all_: bool, method: str) -> dict:
    from terravl.tasks.ground import ground

    folder = _folder(service)
    made = None
    try:
        if source.upload is not None:
            service.check_upload(source.upload)
            raster, label, trusted, bands = source.upload, "upload", False, source.bands
        else:
            made, label = service.tile_raster(source.index, ChangeSide("image", "id", tile_id=source.tile_id),
                                              source.bands)
            raster, trusted, bands = made, True, "auto"
        result = ground(raster, expression, method=_method(service, method), all=all_, out=folder,
                        max_pixels=service.max_change_pixels, bands=bands, trusted=trusted, label=label,
                        progress=False)
        (folder / "ground.json").unlink(missing_ok=True)  # it names the server's files: never kept or served
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if made is not None:
            made.unlink(missing_ok=True)
    base = f"/api/v1/groundings/{folder.name}"
    return {**result.model_dump(), "outputs": None, "ground_id": folder.name,
            "links": {key: f"{base}/{name}" for key, name in LINKS.items()}}


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
    result = await service.on_image(source, image, lambda src: _run(service, src, text, all, method), request)
    return shaped(GroundResponse, result)


@router.get("/api/v1/groundings/{ground_id}/{name}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}, "image/tiff": {}, "application/geo+json": {}}}})
async def ground_file(service: ServiceDep, ground_id: str, name: str):
    """A file of a grounding run, by the ``ground_id`` that ``/api/v1/ground`` returned: ``mask.tif``,
    ``score.tif``, ``regions.geojson`` or ``preview.png`` (the last 50 runs are kept)."""
    if not HEATMAP_ID.match(ground_id):
        raise NotFound("ground_id", "no such grounding run")
    if name not in FILES:
        raise NotFound("name", f"no such file; a grounding run has {', '.join(FILES)}")
    path = service.tmp / "groundings" / ground_id / name
    if not path.is_file():
        raise NotFound("ground_id", f"no such grounding run (only the last {KEEP_OUTPUTS} are kept)")
    return FileResponse(path, media_type=FILES[name], filename=f"ground-{ground_id[:8]}-{name}")
