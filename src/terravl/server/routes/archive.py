"""The archive: served indexes, text and image search, and tile thumbnails (by id, never by path)."""

from __future__ import annotations

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import Response

from terravl.server.deps import MAX_ID, ServiceDep
from terravl.server.schemas import Hit, IndexInfo
from terravl.server.service import ImageSource
from terravl.validation import MAX_QUERY_CHARS, check_bbox, check_date_range, check_k, check_text

router = APIRouter()
MAX_HITS = 200
BBOX = "min_lon,min_lat,max_lon,max_lat (WGS84 degrees)"


@router.get("/api/v1/indexes", response_model=list[IndexInfo], tags=["archive"])
async def indexes(service: ServiceDep) -> list[dict]:
    """The served indexes."""
    return await service.light.run(service.indexes)


@router.get("/api/v1/search", response_model=list[Hit], tags=["search"])
async def search_text(request: Request, service: ServiceDep,
                      q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for."),
                      k: int = Query(10, description=f"Hits to return, 1–{MAX_HITS}."),
                      bbox: str | None = Query(None, description=BBOX),
                      date_from: str | None = Query(None, description="YYYY-MM-DD"),
                      date_to: str | None = Query(None, description="YYYY-MM-DD"),
                      index: str | None = None,
                      rerank: bool = Query(False, description="Have the captioner re-read the 20 best tiles and "
                                                              "re-order them (about 20× the time of a plain "
                                                              "search).")) -> list[dict]:
    """Text search: the ``k`` best tiles, each with its footprint and thumbnail URL."""
    text, k, box = check_text(q, "q"), check_k(k, maximum=MAX_HITS), check_bbox(bbox)
    date_from, date_to = check_date_range(date_from, date_to)
    return await service.search_pool(rerank).run(service.search_text, index, text, k, box, date_from, date_to, rerank, request=request)


@router.post("/api/v1/search", response_model=list[Hit], tags=["search"])
async def search_image(request: Request, service: ServiceDep,
                       image: UploadFile = File(..., description="Example image (JPEG, PNG, GeoTIFF or WebP)."),
                       k: int = Form(10), bbox: str | None = Form(None, description=BBOX),
                       date_from: str | None = Form(None), date_to: str | None = Form(None),
                       index: str | None = Form(None)) -> list[dict]:
    """Search by example image (image-model work: the heavy pool)."""
    k, box = check_k(k, maximum=MAX_HITS), check_bbox(bbox)
    date_from, date_to = check_date_range(date_from, date_to)
    return await service.on_image(ImageSource(index=index), image,
                                  lambda src: service.search_image(src, k, box, date_from, date_to), request)


@router.get("/api/v1/tiles/{tile_id}", tags=["archive"], response_class=Response)
async def tile(service: ServiceDep, tile_id: int = Path(..., ge=0, le=MAX_ID), index: str | None = None,
               size: int = Query(256, ge=16, le=1024)):
    """PNG thumbnail of an indexed tile, by id (never by path)."""
    data = await service.light.run(service.thumbnail, index, tile_id, size)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
