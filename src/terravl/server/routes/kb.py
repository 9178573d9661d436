"""Knowledge bases (``terravl serve --kb``): the served ones, and ranked evidence for a question. Answers grounded
in a knowledge base come from ``POST /api/v1/ask`` with its ``kb`` field. A request names a served knowledge base
by name, never by path; evidence names its source by file name only."""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel

from terravl.kb.results import KBAnswer, Retrieval
from terravl.server.deps import MAX_ID, ServiceDep
from terravl.validation import MAX_QUERY_CHARS, check_bbox, check_date_range, check_k, check_text

router = APIRouter(tags=["knowledge base"])
MAX_EVIDENCE = 100
BBOX = "min_lon,min_lat,max_lon,max_lat (WGS84 degrees)"


class KBInfo(BaseModel):
    name: str
    items: int
    images: int
    passages: int
    model: str


class KBQueryResult(Retrieval):
    """Ranked evidence from the knowledge base ``kb``."""

    kb: str


class KBAskResult(KBAnswer):
    """An answer grounded in the knowledge base ``kb``, with numbered citations into ``evidence``."""

    kb: str


@router.get("/api/v1/kbs", response_model=list[KBInfo])
async def kbs(service: ServiceDep) -> list[dict]:
    """The served knowledge bases."""
    return await service.light.run(service.kbs)


@router.get("/api/v1/kb/query", response_model=KBQueryResult)
async def kb_query(request: Request, service: ServiceDep,
                   q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, description="The question."),
                   kb: str | None = Query(None, max_length=200, description="A served knowledge base's name "
                                                                           "(default: the first)."),
                   k: int = Query(10, description=f"Evidence items, 1–{MAX_EVIDENCE}."),
                   bbox: str | None = Query(None, description=BBOX),
                   date_from: str | None = Query(None, description="YYYY-MM-DD"),
                   date_to: str | None = Query(None, description="YYYY-MM-DD")) -> dict:
    """Hybrid retrieval (BM25 + dense text + cross-modal image similarity, reciprocal rank fusion, re-ranking):
    ranked evidence with scores, relevance and sources."""
    text, k, box = check_text(q, "q"), check_k(k, maximum=MAX_EVIDENCE), check_bbox(bbox)
    date_from, date_to = check_date_range(date_from, date_to)
    service.kb_name(kb)  # an unknown knowledge base is a 404 before any work
    return await service.light.run(service.kb_query, kb, text, k, box, date_from, date_to, request=request)


@router.get("/api/v1/kb/items/{item_id}/image", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def kb_image(service: ServiceDep, item_id: int = Path(..., ge=1, le=MAX_ID),
                   kb: str | None = Query(None, max_length=200, description="A served knowledge base's name "
                                                                           "(default: the first)."),
                   size: int = Query(256, ge=16, le=1024, description="Longest side of the PNG, in pixels.")):
    """PNG of an image item of a served knowledge base, by the ``id`` of an evidence item of kind ``image`` (so a
    citation can be shown; never by path)."""
    data = await service.light.run(service.kb_image, kb, item_id, size)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
