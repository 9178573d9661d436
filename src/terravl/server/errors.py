"""Domain errors of the service and the one table that turns every error into an HTTP status and the JSON body
``{"error": {"field", "message"}}``.

The service layer (:mod:`terravl.server.service`) raises :mod:`terravl.errors` types and the two below, never
``HTTPException``: which status a failure gets is decided here, in one place.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from terravl.errors import ImageTooLargeError, InputError, TerraVLError, UnsupportedFormatError
from terravl.index.store import IndexCorruptError, IndexOpenError
from terravl.server.work import ClientGone, Overloaded


class NotFound(TerraVLError):
    """Something asked for by id or name does not exist (a tile, an index, a heat map)."""

    def __init__(self, field: str | None, message: str):
        self.field, self.message = field, message
        super().__init__(message)


class Unavailable(TerraVLError):
    """The service cannot answer this now for a reason of its own (a model that did not load, a tile whose source
    file has gone); not the client's fault, and retrying later may help."""

    def __init__(self, message: str, retry_after: int | None = None):
        self.message, self.retry_after = message, retry_after
        super().__init__(message)


STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (IndexOpenError, 503),  # a served index found damaged mid-request: the server's problem, never the client's
    (UnsupportedFormatError, 415),
    (ImageTooLargeError, 413),
    (InputError, 400),
    (NotFound, 404),
    (Unavailable, 503),
    (Overloaded, 503),
    (ClientGone, 499),  # nginx's "client closed request": only ever seen in the access log
)
"""Error type → HTTP status, most specific first."""


def status_of(exc: BaseException) -> int:
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 500)


def error_body(field: str | None, message: str) -> dict:
    return {"error": {"field": field, "message": message}}


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    headers = {}
    if isinstance(exc, IndexOpenError):  # its message names the server's folder: the log has it, the client not
        body = error_body("index", "index unavailable: its database is damaged; it must be restored or rebuilt"
                          if isinstance(exc, IndexCorruptError) else "index unavailable: its database cannot be read")
    elif isinstance(exc, InputError):
        body = error_body(exc.source, exc.message)
    elif isinstance(exc, NotFound):
        body = error_body(exc.field, exc.message)
    else:
        body = error_body(None, getattr(exc, "message", None) or str(exc))
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    return JSONResponse(body, status_code=status_of(exc), headers=headers)


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    field = ".".join(str(p) for p in first.get("loc", []) if p not in ("query", "body", "path"))
    return JSONResponse({**error_body(field or None, first.get("msg", "invalid request")),
                         "errors": [{"field": ".".join(map(str, e.get("loc", []))), "message": e.get("msg")}
                                    for e in errors[:10]]}, status_code=422)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(None, exc.detail), status_code=exc.status_code, headers=exc.headers)


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the same JSON shape."""
    for kind in (InputError, NotFound, Unavailable, Overloaded, ClientGone):
        app.add_exception_handler(kind, _domain_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
