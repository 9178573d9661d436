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
"""Probes stay open so an orchestrator can check the process without the key: they give status, the served
indexes' names and the work pools' load, never a path, a file or a result."""


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

        over = {"limit": False, "started": False}

        async def send_logged(message):
            if over["limit"]:  # the app's answer to a body it could not finish reading (often a 500) is dropped
                return
            if message["type"] == "http.response.start":
                over["started"] = True
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if set_cookie:
                    headers.append((b"set-cookie", f"{KEY_COOKIE}={set_cookie}; HttpOnly; SameSite=Strict; "
                                                   f"Path=/".encode()))
                message = {**message, "headers": headers}
            await send(message)

        too_large = {"error": {"field": "body", "message": f"request body over the limit of {self.max_body:,} bytes"}}
        try:
            if not ok:
                await _send_json(send_logged, 401, {"error": {"field": "api key", "message":
                                 "missing or wrong API key (send X-API-Key or Authorization: Bearer)"}},
                                 [(b"www-authenticate", b"Bearer")])
                return
            headers = dict(scope.get("headers", []))
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await _send_json(send_logged, 413, too_large)
                return
            received = 0

            async def limited_receive():
                # a body without Content-Length (chunked) is counted as it streams in, with the same limit
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        over["limit"] = True
                        raise _TooLarge()
                return message

            try:
                await self.app(scope, limited_receive, send_logged)
            except _TooLarge:
                pass
            except Exception:
                if not over["limit"]:
                    raise
            if over["limit"] and not over["started"]:
                over["limit"] = False
                await _send_json(send_logged, 413, too_large)
        finally:
            if log.isEnabledFor(logging.INFO):
                log.info(json.dumps({"request_id": request_id, "method": scope.get("method"),
                                     "path": scope["path"],
                                     "status": status["code"], "ms": round(1000 * (time.perf_counter() - start), 2),
                                     "client": (scope.get("client") or ["?"])[0]}))


class _TooLarge(Exception):
    pass


class HostCheck:
    """Starlette's :class:`TrustedHostMiddleware` matching (400 for a Host header not in ``allowed``: a DNS-rebinding
    page cannot drive the API from a victim's browser), answered with the API's JSON error body; the probes are
    exempt, as an orchestrator calls them by IP."""

    _OK = "terravl.host_ok"

    def __init__(self, app, allowed: list[str]):
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        self.app = app
        self.checked = TrustedHostMiddleware(app, allowed_hosts=sorted(set(allowed)), www_redirect=False)
        self.matcher = TrustedHostMiddleware(self._accept, allowed_hosts=sorted(set(allowed)), www_redirect=False)

    @classmethod
    async def _accept(cls, scope, receive, send) -> None:
        scope[cls._OK] = True

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.checked(scope, receive, send)
        if scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)

        async def discard(message) -> None:  # the matcher's plain-text refusal: replaced by the JSON one below
            pass

        await self.matcher(scope, receive, discard)
        if scope.pop(self._OK, False):
            return await self.app(scope, receive, send)
        await _send_json(send, 400, {"error": {"field": "host", "message": "this service is not addressed by that "
                                               "Host header (terravl serve --allowed-host NAME adds one)"}})


def allowed_hosts(bound: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Host names a request may address the service by: the bound address, the loopback names, and ``extra``
    (``terravl serve --allowed-host``). For a wildcard bind (0.0.0.0, ::) the machine's own name and addresses are
    added too, best effort; other names (a DNS name in front of it) must be given."""
    import socket

    names = {"localhost", "127.0.0.1", "[::1]", *(h.strip().lower() for h in extra if h.strip())}
    names.add(f"[{bound}]" if ":" in bound else bound.lower())
    if bound in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostname()
            names |= {host.lower(), socket.getfqdn().lower()}
            for *_, addr in socket.getaddrinfo(host, None):
                names.add(f"[{addr[0]}]" if ":" in addr[0] else addr[0])
        except OSError:
            pass
    return sorted(n for n in names if n not in ("0.0.0.0", "[::]"))
