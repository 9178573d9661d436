"""The TerraVL MCP server: the SDK's :class:`MCPServer` with the tools and resources over one
:class:`~terravl.server.service.Service`, the one table that turns every refusal into a tool error naming its
field, and the two transports (stdio, streamable HTTP).

A refusal is never a crash: bad arguments (the schema's limits, or the same ``check_*`` functions as the HTTP API),
an unknown argument, an unknown index or tile, an image that is not one or is too large, all answer an
``isError`` result whose text is ``FIELD: MESSAGE`` and whose structured content is the HTTP API's error body
``{"error": {"field", "message"}}``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from concurrent.futures import Future
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp_types import CallToolResult, TextContent
from pydantic import ValidationError

from terravl import __version__
from terravl.errors import InputError
from terravl.server.errors import NotFound, Unavailable
from terravl.server.service import Service
from terravl.server.work import Overloaded

log = logging.getLogger("terravl.mcp")
IMAGE_FIELDS = ("image", "before", "after")
INSTRUCTIONS = """TerraVL answers questions about satellite and aerial imagery.
- search finds tiles of the served indexes by text (or an example image); hits carry footprints (GeoJSON, WGS84),
  dates, a tile id and a tile resource URI. Read terravl://indexes for what is served (tiles, model, extent).
- classify, caption, ask and localize work on an image sent as base64 data or on an indexed tile (id from a hit).
- change and ask_change compare two dates of one place (two images as data, or two tile ids).
- kb_query and ask_kb (only when knowledge bases are served; see terravl://kbs) rank evidence for a question and
  answer it with numbered citations, about an image or a tile when one is given.
Images are always sent as base64 data, never as file paths."""


class TerraVLServer(MCPServer):
    """:class:`MCPServer` whose tool calls refuse unknown arguments and report every anticipated failure as a
    tool error naming its field (see :func:`refusal`)."""

    def __init__(self, service: Service, max_upload_bytes: int):
        super().__init__("terravl", title="TerraVL", version=__version__, instructions=INSTRUCTIONS,
                         log_level="WARNING")
        self.service = service
        self.max_upload_bytes = int(max_upload_bytes)
        self.arguments: dict[str, set[str]] = {}
        self.loading: Future | None = None

    def start_loading(self) -> None:
        """Load the models in the background while the client connects (as ``terravl serve`` does before it
        accepts requests); tool calls wait for it, so that no two threads load one model at once."""
        def failed(future: Future) -> None:
            if future.exception() is not None:
                log.error("loading models failed: %s", future.exception())

        self.loading = self.service.heavy.submit(self.service.load)
        self.loading.add_done_callback(failed)

    def add_tool(self, fn, name: str | None = None, **kwargs) -> None:
        super().add_tool(fn, name=name, **kwargs)
        self.arguments[name or fn.__name__] = set(inspect.signature(fn).parameters)

    async def call_tool(self, name: str, arguments: dict[str, Any], context=None):
        allowed = self.arguments.get(name)
        unknown = sorted(set(arguments) - allowed) if allowed is not None else []
        if unknown:
            hint = " (images are sent as base64 data, never as a path)" if any(
                w in unknown[0].lower() for w in ("path", "file", "url")) else ""
            return self.refused(name, unknown[0], f"is not an argument of {name}; it takes "
                                                  f"{', '.join(sorted(allowed))}{hint}")
        if self.loading is not None and not self.loading.done():
            await asyncio.wait([asyncio.wrap_future(self.loading)])  # its failure is logged; the call says its own
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            found = refusal(exc, self.max_upload_bytes, list(self.service.paths), list(self.service.kb_paths))
            if found is None:  # a crash: the SDK logs it and answers a generic message
                raise
            return self.refused(name, *found)

    def refused(self, tool: str, field: str | None, message: str) -> CallToolResult:
        text = f"{field}: {message}" if field else message
        log.info("tool %s refused: %s", tool, text)
        return CallToolResult(content=[TextContent(text=text)], is_error=True,
                              structured_content={"error": {"field": field, "message": message}})


def refusal(exc: ToolError, max_bytes: int, indexes: list[str],
            kbs: list[str] = ()) -> tuple[str | None, str] | None:
    """(field, message) of an anticipated failure, or None for a crash. The SDK wraps what a tool raises in a
    :class:`ToolError`: the original is its ``__cause__``."""
    from terravl.index.store import IndexCorruptError, IndexOpenError

    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        return _invalid(cause, max_bytes, indexes, kbs)
    if isinstance(cause, IndexOpenError):  # its message names the server's folder: the log has it, the client not
        log.error("%s", cause)
        return "index", ("index unavailable: its database is damaged; it must be restored or rebuilt"
                         if isinstance(cause, IndexCorruptError) else "index unavailable: its database cannot be read")
    if isinstance(cause, InputError):
        return cause.source, cause.message
    if isinstance(cause, NotFound):
        return cause.field, cause.message
    if isinstance(cause, (Unavailable, Overloaded)):
        return None, str(getattr(cause, "message", None) or cause)
    if cause is None and not isinstance(exc, UnexpectedToolError):  # the SDK's own, e.g. an unknown tool
        return None, str(exc)
    return None


def _invalid(exc: ValidationError, max_bytes: int, indexes: list[str],
             kbs: list[str] = ()) -> tuple[str | None, str]:
    """The first invalid argument and what is wrong with it, in one line (a union type gives one message per
    alternative: they are joined with "or")."""
    errors = exc.errors(include_url=False)
    field = str(errors[0]["loc"][0]) if errors[0]["loc"] else None
    mine = [e for e in errors if (str(e["loc"][0]) if e["loc"] else None) == field]
    if field in IMAGE_FIELDS and mine[0]["type"] == "string_too_long":
        return field, f"over the upload limit of {max_bytes:,} bytes (base64 data is 4/3 of the image's size)"
    if field == "index" and mine[0]["type"] == "literal_error":  # the HTTP API's words for an unknown index
        return field, f"no index named {str(mine[0]['input'])[:100]!r}; served: {', '.join(indexes)}"
    if field == "kb" and mine[0]["type"] == "literal_error":  # the HTTP API's words for an unknown knowledge base
        return field, f"no knowledge base named {str(mine[0]['input'])[:100]!r}; served: {', '.join(kbs)}"
    messages = list(dict.fromkeys("is required" if e["type"] == "missing" else e["msg"] for e in mine))
    others = sorted({str(e["loc"][0]) for e in errors if e["loc"]} - {field})
    more = f" (also invalid: {', '.join(others)})" if others else ""
    return field, " or ".join(messages) + more


def build_server(service: Service, max_upload_bytes: int = 32 << 20) -> TerraVLServer:
    """The MCP server over ``service``: its tools and resources; images sent as data up to ``max_upload_bytes``."""
    from terravl.mcp.resources import register_resources
    from terravl.mcp.tools import register_tools

    server = TerraVLServer(service, max_upload_bytes)
    register_tools(server, service, max_upload_bytes)
    register_resources(server, service)
    return server


def run_stdio(server: TerraVLServer) -> None:
    """Serve over this process's stdin/stdout until the client closes them (the SDK points fd 1 at stderr
    meanwhile, so nothing else printed can corrupt the protocol)."""
    import anyio

    anyio.run(server.run_stdio_async)


def run_http(server: TerraVLServer, host: str, port: int, api_key: str | None = None,
             allowed_hosts: list[str] | None = None, log_level: str = "warning") -> None:
    """Serve streamable HTTP at ``http://HOST:PORT/mcp``. The request body limit is what two images of the upload
    limit take as base64, checked as the body streams in by the HTTP API's own guard (with its optional API key);
    Host and Origin are checked against the bound address's names (DNS rebinding)."""
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    from terravl.server.guards import Guard

    names = allowed_hosts or ["127.0.0.1", "localhost", "[::1]"]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection="*" not in names,
        allowed_hosts=[*names, *(f"{n}:*" for n in names)],
        allowed_origins=[f"{scheme}://{n}{port_}" for n in names for scheme in ("http", "https")
                         for port_ in ("", ":*")])
    max_body = 2 * (server.max_upload_bytes * 4 // 3) + (1 << 20)
    app = server.streamable_http_app(max_request_body_size=max_body, transport_security=security, host=host)
    guarded = _CloseOnShutdown(Guard(app, api_key=api_key, max_body=max_body), server.service.close)
    uvicorn.run(guarded, host=host, port=port, log_level=log_level, access_log=False, server_header=False,
                timeout_graceful_shutdown=10)


class _CloseOnShutdown:
    """Close the service (its pools and temporary folder) when the ASGI lifespan ends: uvicorn re-raises SIGTERM
    after its graceful shutdown, so code after ``uvicorn.run`` never runs then."""

    def __init__(self, app, close):
        self.app, self.close = app, close

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def sending(message):
            if message["type"] == "lifespan.shutdown.complete":
                self.close()
            await send(message)

        await self.app(scope, receive, sending)
