"""ASGI middleware that protects every route: an optional API key, a request-body size limit enforced while the
body streams in (not after it is buffered), and one structured log line per request."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

log = logging.getLogger("terravl.server.access")

KEY_COOKIE = "terravl_key"
OPEN_PATHS = ("/healthz", "/readyz")
"""Probes stay open so an orchestrator can check the process without the key; they reveal nothing else."""


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class Guard:
    """API key check (header ``X-API-Key``, ``Authorization: Bearer``, or the cookie set by opening the page
    with ``?api_key=``), body-size limit (413) and access log, in one pass over each request."""

    def __init__(self, app, api_key: str | None = None, max_body: int = 32 << 20):
        self.app, self.api_key, self.max_body = app, api_key, int(max_body)

    def _authorised(self, scope) -> tuple[bool, str | None]:
        if not self.api_key or scope["path"] in OPEN_PATHS:
            return True, None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        offered = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if offered is None and auth.lower().startswith("bearer "):
            offered = auth[7:].strip()
        if offered is None and "cookie" in headers:
            morsel = SimpleCookie(headers["cookie"]).get(KEY_COOKIE)
            offered = morsel.value if morsel else None
        from_query = None
        if offered is None and scope["path"] == "/":
            from_query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key", [None])[0]
            offered = from_query
        ok = offered is not None and hmac.compare_digest(offered.encode(), self.api_key.encode())
        return ok, from_query if ok else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:12]
        status = {"code": 500}
        ok, set_cookie = self._authorised(scope)

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if set_cookie:
                    headers.append((b"set-cookie", f"{KEY_COOKIE}={set_cookie}; HttpOnly; SameSite=Strict; "
                                                   f"Path=/".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if not ok:
                await _send_json(send_logged, 401, {"error": {"field": "api key", "message":
                                 "missing or wrong API key (send X-API-Key or Authorization: Bearer)"}},
                                 [(b"www-authenticate", b"Bearer")])
                return
            headers = dict(scope.get("headers", []))
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await _send_json(send_logged, 413, {"error": {"field": "body", "message":
                                 f"request body over the limit of {self.max_body:,} bytes"}})
                return
            received = 0

            async def limited_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        raise _TooLarge()
                return message

            try:
                await self.app(scope, limited_receive, send_logged)
            except _TooLarge:
                await _send_json(send_logged, 413, {"error": {"field": "body", "message":
                                 f"request body over the limit of {self.max_body:,} bytes"}})
        finally:
            if log.isEnabledFor(logging.INFO):
                log.info(json.dumps({"request_id": request_id, "method": scope.get("method"),
                                     "path": scope["path"],
                                     "status": status["code"], "ms": round(1000 * (time.perf_counter() - start), 2),
                                     "client": (scope.get("client") or ["?"])[0]}))


class _TooLarge(Exception):
    pass
