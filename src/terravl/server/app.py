"""The TerraVL HTTP service: a versioned JSON API over the same task functions as the CLI, and the web map page.

FastAPI is used for typed request validation and the OpenAPI page that comes from those types; uvicorn serves it.
Models load once at start-up and are shared by every request; model work runs in a bounded thread pool
(:class:`~terravl.server.work.WorkPool`). Files are only ever read by id from the served indexes: no route takes
a server path.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel

from terravl import __version__
from terravl.errors import ImageTooLargeError, InputError
from terravl.server.guards import Guard
from terravl.server.work import Overloaded, WorkPool

log = logging.getLogger("terravl.server")
STATIC = Path(__file__).resolve().parent / "static"
UPLOAD_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"}
HEATMAP_ID = re.compile(r"^[0-9a-f]{32}$")


class Hit(BaseModel):
    id: int
    index: str
    path: str
    score: float
    footprint: dict | None = None
    window: dict | None = None
    crs: str | None = None
    acquired: str | None = None
    thumbnail: str


class IndexInfo(BaseModel):
    name: str
    tiles: int
    model: str


class CaptionResult(BaseModel):
    path: str
    caption: str
    footprint: dict | None = None


class AskResult(BaseModel):
    path: str
    question: str
    answer: str
    footprint: dict | None = None


class ClassifyResult(BaseModel):
    path: str
    label: str
    score: float
    top: list[dict]
    footprint: dict | None = None


class LocalizeResult(BaseModel):
    query: str
    path: str
    windows: int
    regions: dict
    heatmap: str


class Service:
    """Served indexes, shared models and the work pool."""

    def __init__(self, indexes: list[str | Path], captioner: str | None = None, workers: int = 2,
                 queue: int = 64, max_upload_pixels: int = 40_000_000, preload: bool = True):
        from terravl.index.store import IndexStore

        self.paths: dict[str, Path] = {}
        for path in indexes:
            path = Path(path)
            store = IndexStore(path)  # fails early, naming the folder, if it is not an index
            store.close()
            name, n = path.name or "index", 2
            while name in self.paths:
                name, n = f"{path.name}-{n}", n + 1
            self.paths[name] = path
        if not self.paths:
            raise InputError("INDEX", "serve at least one index")
        self.captioner_name = captioner
        self.max_upload_pixels = int(max_upload_pixels)
        self.pool = WorkPool(workers, queue)
        self.preload = preload
        self.encoders: dict[str, Any] = {}
        self._captioner = None
        self._local = threading.local()
        self.model_lock = threading.Lock()
        """Serialises image-model calls: encoders record per-call state (which inputs failed)."""
        self._load_lock = threading.Lock()
        self._thumbs: OrderedDict = OrderedDict()
        self._thumb_lock = threading.Lock()
        self.tmp = Path(tempfile.mkdtemp(prefix="terravl-serve-"))
        self.ready = False

    # -- start-up -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load every index's encoder (and the captioner) once; then the service is ready."""
        for name in self.paths:
            self.encoder(self.store(name).model).encode_texts(["warm-up"])  # loads the text tower too
        if self.preload:
            try:
                self.captioner()
            except HTTPException as exc:  # search still works without a captioner
                log.warning("%s", exc.detail)
        self.ready = True

    def close(self) -> None:
        self.pool.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- shared resources -----------------------------------------------------------------------------
    def store(self, name: str | None):
        """This thread's open store of index ``name`` (reopened when the index has changed on disk)."""
        from terravl.index.store import IndexStore

        name = name or next(iter(self.paths))
        if name not in self.paths:
            raise HTTPException(404, f"no index named {name!r}; served: {', '.join(self.paths)}")
        stores = getattr(self._local, "stores", None)
        if stores is None:
            stores = self._local.stores = {}
        store, opened_at = stores.get(name, (None, None))
        if store is None or store.version != opened_at:  # the store caches vectors: reopen after an index change
            if store is not None:
                store.close()
            store = IndexStore(self.paths[name])
            stores[name] = (store, store.version)
        return store

    def encoder(self, model: str):
        with self._load_lock:
            if model not in self.encoders:
                import terravl.models as m

                self.encoders[model] = m.load(model)
            return self.encoders[model]

    def captioner(self):
        with self._load_lock:
            if self._captioner is None:
                import terravl.models as m

                try:
                    self._captioner = m.load_captioner(self.captioner_name or m.DEFAULT_CAPTIONER)
                except InputError as exc:
                    raise HTTPException(503, f"captioning is unavailable: {exc}") from None
                self._captioner.encoder  # noqa: B018 - load its image encoder now too
            return self._captioner

    # -- tiles ----------------------------------------------------------------------------------------
    def tile_row(self, index: str | None, tile_id: int):
        row = self.store(index).rows([tile_id]).get(tile_id)
        if row is None:
            raise HTTPException(404, f"no tile {tile_id} in index {index or next(iter(self.paths))!r}")
        return row

    def tile_pixels(self, index: str | None, tile_id: int):
        """(H, W, 3) uint8 pixels of an indexed tile, read from its source file by the index's own record."""
        from terravl.io import PixelWindow, open_raster

        row = self.tile_row(index, tile_id)
        window = PixelWindow(**row.window) if row.window else None
        with open_raster(row.source) as src:
            array, _ = src.read_rgb(window)
        return array.copy(), row

    def thumbnail(self, index: str | None, tile_id: int, size: int) -> bytes:
        from PIL import Image

        key = (index or next(iter(self.paths)), tile_id, size, self.store(index).version)
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        array, _ = self.tile_pixels(index, tile_id)
        image = Image.fromarray(array)
        image.thumbnail((size, size), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False)
        data = buffer.getvalue()
        with self._thumb_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > 512:
                self._thumbs.popitem(last=False)
        return data

    # -- uploads --------------------------------------------------------------------------------------
    async def save_upload(self, upload: UploadFile) -> Path:
        suffix = Path(upload.filename or "").suffix.lower()
        if suffix not in UPLOAD_SUFFIXES:
            suffix = ".img"
        target = self.tmp / f"upload-{uuid.uuid4().hex}{suffix}"
        with open(target, "wb") as fh:
            while chunk := await upload.read(1 << 20):
                fh.write(chunk)
        return target

    def check_upload(self, path: Path, field: str = "image") -> None:
        """Header-only check of an uploaded image: readable, within the pixel limit (decompression bombs stop
        here, before any pixel is decoded)."""
        from terravl.io import raster_info

        try:
            info = raster_info(path)
        except InputError as exc:
            raise InputError(field, f"not a readable image ({exc.message})") from None
        if info.width * info.height > self.max_upload_pixels:
            raise ImageTooLargeError(field, f"{info.width} × {info.height} pixels exceeds the upload limit of "
                                            f"{self.max_upload_pixels:,} pixels")

    def decode_upload(self, path: Path, field: str = "image"):
        """The uploaded image as PIL RGB after the header check; errors name the form field, never the
        server's temporary file."""
        from terravl.models.images import to_pil

        self.check_upload(path, field)
        try:
            return to_pil(path)
        except (InputError, OSError, ValueError) as exc:
            message = getattr(exc, "message", str(exc)).replace(str(path), field)
            raise InputError(field, f"not a readable image ({message})") from None

    def heatmap_path(self) -> Path:
        folder = self.tmp / "heatmaps"
        folder.mkdir(exist_ok=True)
        existing = sorted(folder.glob("*.tif"), key=lambda p: p.stat().st_mtime)
        for old in existing[:-49]:
            old.unlink(missing_ok=True)
        return folder / f"{uuid.uuid4().hex}.tif"


def _hits(results: list[dict], index: str) -> list[dict]:
    return [{**{k: r.get(k) for k in ("id", "path", "score", "footprint", "window", "crs", "acquired")},
             "index": index, "thumbnail": f"/api/v1/tiles/{r['id']}?index={index}"} for r in results]


def _bbox(value: str | None) -> tuple[float, float, float, float] | None:
    if value is None or value == "":
        return None
    try:
        parts = tuple(float(x) for x in value.split(","))
    except ValueError:
        raise InputError("bbox", "must be four numbers: min_lon,min_lat,max_lon,max_lat") from None
    if len(parts) != 4 or not (-180 <= parts[0] <= parts[2] <= 180 and -90 <= parts[1] <= parts[3] <= 90):
        raise InputError("bbox", "must be min_lon,min_lat,max_lon,max_lat in degrees, with min ≤ max")
    return parts  # type: ignore[return-value]


def create_app(indexes: list[str | Path], api_key: str | None = None, cors_origins: list[str] | None = None,
               max_upload_bytes: int = 32 << 20, max_upload_pixels: int = 40_000_000, workers: int = 2,
               queue: int = 64, captioner: str | None = None, preload: bool = True) -> FastAPI:
    """The ASGI application serving ``indexes`` (see ``terravl serve --help`` for the options)."""
    service = Service(indexes, captioner, workers, queue, max_upload_pixels, preload)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.pool.run(service.load)
        log.info("ready: %s", ", ".join(f"{n} ({p})" for n, p in service.paths.items()))
        yield
        service.close()

    app = FastAPI(title="TerraVL", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Ask questions of satellite and aerial imagery in plain language: search, classify, "
                              "caption, ask and localize over the served archive indexes.")
    app.state.service = service

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError):
        status = 413 if isinstance(exc, ImageTooLargeError) else 400
        return JSONResponse({"error": {"field": str(exc.source), "message": exc.message}}, status_code=status)

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, exc: Overloaded):
        return JSONResponse({"error": {"field": None, "message": str(exc)}}, status_code=503,
                            headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": [], "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", []) if p not in ("query", "body", "path"))
        return JSONResponse({"error": {"field": field or None, "message": first.get("msg", "invalid request")},
                             "errors": [{"field": ".".join(map(str, e.get("loc", []))), "message": e.get("msg")}
                                        for e in exc.errors()[:10]]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": {"field": None, "message": exc.detail}}, status_code=exc.status_code,
                            headers=exc.headers)

    # -- operations -----------------------------------------------------------------------------------
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz():
        """Models are loaded and every index is open: requests will be served."""
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        return {"status": "ready", "indexes": list(service.paths), "queue": service.pool.pending}

    # -- API ------------------------------------------------------------------------------------------
    @app.get("/api/v1/indexes", response_model=list[IndexInfo], tags=["archive"])
    async def indexes_route() -> list[dict]:
        """The served indexes."""
        def work():
            return [{"name": n, "tiles": service.store(n).count(), "model": service.store(n).model}
                    for n in service.paths]
        return await service.pool.run(work)

    @app.get("/api/v1/search", response_model=list[Hit], tags=["search"])
    async def search_text(q: str = Query(..., min_length=1, max_length=500, description="What to look for."),
                          k: int = Query(10, ge=1, le=200), bbox: str | None = Query(
                              None, description="min_lon,min_lat,max_lon,max_lat (WGS84)"),
                          date_from: str | None = Query(None, pattern=r"^\d{4}-\d{2}-\d{2}$"),
                          date_to: str | None = Query(None, pattern=r"^\d{4}-\d{2}-\d{2}$"),
                          index: str | None = None) -> list[dict]:
        """Text search: the ``k`` best tiles, each with its footprint and thumbnail URL."""
        from terravl.tasks import search

        box = _bbox(bbox)

        def work():
            store = service.store(index)
            return _hits(search(store, text=q, k=k, bbox=box, date_from=date_from, date_to=date_to,
                                encoder=service.encoder(store.model)), index or next(iter(service.paths)))
        return await service.pool.run(work)

    @app.post("/api/v1/search", response_model=list[Hit], tags=["search"])
    async def search_image(image: UploadFile = File(..., description="Example image (JPEG, PNG, GeoTIFF)."),
                           k: int = Form(10, ge=1, le=200), bbox: str | None = Form(None),
                           date_from: str | None = Form(None, pattern=r"^\d{4}-\d{2}-\d{2}$"),
                           date_to: str | None = Form(None, pattern=r"^\d{4}-\d{2}-\d{2}$"),
                           index: str | None = Form(None)) -> list[dict]:
        """Search by example image."""
        from terravl.tasks import search

        box = _bbox(bbox)

        def work(path: Path, _):
            picture = service.decode_upload(path)
            store = service.store(index)
            with service.model_lock:
                return _hits(search(store, image=picture, k=k, bbox=box, date_from=date_from, date_to=date_to,
                                    encoder=service.encoder(store.model)), index or next(iter(service.paths)))
        return await _on_input(image, None, work)

    async def _on_input(image: UploadFile | None, tile_id: int | None, work):
        """Save the upload (if any), run ``work(upload path | None, tile id | None)`` in the work pool, and
        delete the upload afterwards, whatever happened. Exactly one of the two inputs must be given."""
        if (image is None) == (tile_id is None):
            raise InputError("image/id", "give exactly one of an uploaded image or the id of an indexed tile")
        path = await service.save_upload(image) if image is not None else None

        def run():
            try:
                return work(path, tile_id)
            finally:
                if path is not None:
                    path.unlink(missing_ok=True)
        return await service.pool.run(run)

    def _pixels(path: Path | None, tile_id: int | None, index: str | None):
        """(model input, description) for an upload or an indexed tile."""
        if path is not None:
            return service.decode_upload(path), {"path": "upload"}
        array, row = service.tile_pixels(index, tile_id)
        return array, {"path": row.source, "footprint": row.footprint}

    @app.post("/api/v1/classify", response_model=ClassifyResult, tags=["understand"])
    async def classify_route(image: UploadFile | None = File(None), id: int | None = Form(None, ge=1),
                             index: str | None = Form(None), labels: str | None = Form(None, max_length=4000),
                             classes: str | None = Form(None, max_length=40), k: int = Form(5, ge=1, le=50)) -> dict:
        """Zero-shot scene classification of an upload or an indexed tile (``labels`` comma-separated, or a
        built-in list in ``classes``: aid, ucm, resisc45, eurosat, whu-rs19, patternnet)."""
        from terravl.tasks import classify

        def work(path, tile_id):
            pixels, about = _pixels(path, tile_id, index)
            encoder = service.encoder(service.store(index).model)
            with service.model_lock:
                result = classify([pixels], encoder, labels, classes, k)[0]
            if "error" in result:
                raise InputError("image", result["error"])
            return {**result, **about}
        return await _on_input(image, id, work)

    @app.post("/api/v1/caption", response_model=CaptionResult, tags=["understand"])
    async def caption_route(image: UploadFile | None = File(None), id: int | None = Form(None, ge=1),
                            index: str | None = Form(None), beams: int = Form(3, ge=1, le=8),
                            max_tokens: int = Form(40, ge=1, le=128)) -> dict:
        """A one-sentence description of an upload or an indexed tile."""
        from terravl.tasks import caption

        def work(path, tile_id):
            pixels, about = _pixels(path, tile_id, index)
            with service.model_lock:
                return {**caption([pixels], service.captioner(), beams=beams, max_tokens=max_tokens)[0], **about}
        return await _on_input(image, id, work)

    @app.post("/api/v1/ask", response_model=AskResult, tags=["understand"])
    async def ask_route(question: str = Form(..., min_length=1, max_length=500), image: UploadFile | None = File(None),
                        id: int | None = Form(None, ge=1), index: str | None = Form(None)) -> dict:
        """Answer a question about an upload or an indexed tile."""
        from terravl.models.bridge import question_prompt
        from terravl.tasks import ask

        question_prompt(question)  # a clear 400 before any work
        def work(path, tile_id):
            pixels, about = _pixels(path, tile_id, index)
            with service.model_lock:
                return {**ask([pixels], question, service.captioner())[0], **about}
        return await _on_input(image, id, work)

    @app.post("/api/v1/localize", response_model=LocalizeResult, tags=["understand"])
    async def localize_route(query: str = Form(..., min_length=1, max_length=500),
                             image: UploadFile | None = File(None), id: int | None = Form(None, ge=1),
                             index: str | None = Form(None), scales: str = Form("256", pattern=r"^\d+(,\d+){0,3}$"),
                             top: int = Form(5, ge=1, le=50)) -> dict:
        """Where in a scene is the text? For an indexed tile, the whole source raster it was cut from is
        searched. Returns the top regions (GeoJSON) and the URL of the heat map GeoTIFF."""
        from terravl.tasks import localize

        sizes = tuple(int(s) for s in scales.split(","))
        if any(not 32 <= s <= 4096 for s in sizes):
            raise InputError("scales", "window sizes must be between 32 and 4096 pixels")

        def work(path, tile_id):
            if path is not None:
                service.check_upload(path)
            raster = path if path is not None else Path(service.tile_row(index, tile_id).source)
            heat = service.heatmap_path()
            encoder = service.encoder(service.store(index).model)
            with service.model_lock:
                result = localize(raster, query, encoder, heat, scales=sizes, top=top)
            return {"query": query, "path": "upload" if path is not None else str(raster),
                    "windows": result["windows"], "regions": result["regions"],
                    "heatmap": f"/api/v1/heatmaps/{heat.stem}"}
        return await _on_input(image, id, work)

    @app.get("/api/v1/heatmaps/{heatmap_id}", tags=["understand"], response_class=FileResponse)
    async def heatmap(heatmap_id: str):
        """A heat map GeoTIFF written by ``/api/v1/localize`` (the last 50 are kept)."""
        if not HEATMAP_ID.match(heatmap_id):
            raise HTTPException(404, "no such heat map")
        path = service.tmp / "heatmaps" / f"{heatmap_id}.tif"
        if not path.is_file():
            raise HTTPException(404, "no such heat map (only the last 50 are kept)")
        return FileResponse(path, media_type="image/tiff", filename=f"heatmap-{heatmap_id[:8]}.tif")

    @app.get("/api/v1/tiles/{tile_id}", tags=["archive"], response_class=Response)
    async def tile(tile_id: int, index: str | None = None, size: int = Query(256, ge=16, le=1024)):
        """PNG thumbnail of an indexed tile, by id (never by path)."""
        data = await service.pool.run(service.thumbnail, index, tile_id, size)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    # -- page and docs --------------------------------------------------------------------------------
    import swagger_ui_bundle
    import xstatic.pkg.leaflet as leaflet

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/vendor/leaflet", StaticFiles(directory=leaflet.BASE_DIR), name="leaflet")
    app.mount("/vendor/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs():
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="TerraVL API",
                                   swagger_js_url="/vendor/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/vendor/swagger/swagger-ui.css",
                                   swagger_favicon_url="/vendor/swagger/favicon-32x32.png")

    guarded = Guard(app, api_key=api_key, max_body=max_upload_bytes)
    if not cors_origins:
        return guarded
    from starlette.middleware.cors import CORSMiddleware

    # outside the guard: browsers send CORS preflights without credentials, so they must be answered before the
    # API-key check
    return CORSMiddleware(guarded, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                          allow_headers=["X-API-Key", "Authorization", "Content-Type"])
