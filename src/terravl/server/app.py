"""The TerraVL HTTP service: a versioned JSON API over the same task functions as the CLI, and the web map page.

FastAPI is used for typed request validation and the OpenAPI page that comes from those types; uvicorn serves it.
The application is assembled here from its parts: the service layer (:mod:`.service`), the routers by area
(:mod:`.routes`), the error table (:mod:`.errors`) and the middleware (:mod:`.guards`). Files are only ever read
by id from the served indexes: no route takes a server path.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.types import ASGIApp

from terravl import __version__
from terravl.server import errors
from terravl.server.guards import Guard, HostCheck
from terravl.server.routes import archive, change, chat, ground, kb, operations, page, understand
from terravl.server.service import Service

log = logging.getLogger("terravl.server")


def create_app(indexes: list[str | Path], api_key: str | None = None, cors_origins: list[str] | None = None,
               max_upload_bytes: int = 32 << 20, max_upload_pixels: int = 40_000_000, workers: int = 2,
               queue: int = 64, captioner: str | None = None, preload: bool = True, light_workers: int = 2,
               allowed_hosts: list[str] | None = None, max_windows: int = 20_000,
               max_change_pixels: int = 16_000_000, kbs: list[str | Path] | None = None) -> ASGIApp:
    """The ASGI application serving ``indexes`` (see ``terravl serve --help`` for the options). The FastAPI
    application inside the middleware is reachable as ``.app`` down the chain; its service is ``app.state.service``.
    ``allowed_hosts`` None accepts any Host header (library use); ``terravl serve`` always passes a list."""
    service = Service(indexes, captioner, workers, queue, max_upload_pixels, preload, light_workers, max_windows,
                      max_change_pixels, kbs=kbs)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.heavy.run(service.load)
        log.info("ready: %s", ", ".join(f"{n} ({p})" for n, p in service.paths.items()))
        yield
        service.close()

    app = FastAPI(title="TerraVL", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Ask questions of satellite and aerial imagery in plain language: search, classify, "
                              "caption, ask and localize over the served archive indexes, and "
                                          "compare two dates of one place (change).")
    app.state.service = service
    errors.install(app)
    for router in (operations.router, archive.router, understand.router, change.router, ground.router, kb.router,
                   chat.router, page.router):
        app.include_router(router)
    page.mount_assets(app)
    return _middleware(app, api_key, cors_origins, max_upload_bytes, allowed_hosts)


def _middleware(app: FastAPI, api_key: str | None, cors_origins: list[str] | None, max_body: int,
                allowed_hosts: list[str] | None) -> ASGIApp:
    """Guard (key, body limit, log) inside CORS (browsers send preflights without credentials, so they are
    answered before the key check) inside the Host check (a DNS-rebinding page never reaches anything)."""
    outer: ASGIApp = Guard(app, api_key=api_key, max_body=max_body)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        outer = CORSMiddleware(outer, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                               allow_headers=["X-API-Key", "Authorization", "Content-Type"])
    if allowed_hosts is not None:
        outer = HostCheck(outer, allowed_hosts)
    return outer


def service_of(asgi: ASGIApp) -> Service:
    """The :class:`Service` inside an application built by :func:`create_app` (for tests and benchmarks)."""
    while not isinstance(asgi, FastAPI):
        asgi = asgi.app  # type: ignore[attr-defined]
    return asgi.state.service
