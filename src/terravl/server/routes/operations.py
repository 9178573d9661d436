"""Probes for orchestrators: liveness and readiness (open without the API key; see guards.OPEN_PATHS)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from terravl.server.deps import ServiceDep
from terravl.server.schemas import Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness,
            responses={503: {"description": "still loading models, or a served index is unavailable"}})
async def readyz(service: ServiceDep):
    """Models are loaded and every index is open: requests will be served. ``pools`` gives each work pool's
    ``busy``, ``queued``, ``capacity`` and ``saturated``; a saturated pool is still ready (200): its requests
    wait, or get 503 with Retry-After once its queue is full, and search has a pool of its own.

    A served index whose database is damaged or gone makes the service unready: 503 with ``status``
    "unavailable" and ``unavailable`` {index name: reason} (no Retry-After: it stays so until the index is
    restored or rebuilt; requests on that index answer 503 "index unavailable" meanwhile)."""
    if not service.ready:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
    state = await run_in_threadpool(service.readiness)  # it opens each index: not on the event loop
    if state["unavailable"]:
        return JSONResponse(state, status_code=503)
    return state
