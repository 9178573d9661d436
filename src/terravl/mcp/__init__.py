"""TerraVL as tools for AI agents: a Model Context Protocol server (``terravl mcp``) over the same service layer as
the HTTP API (:class:`terravl.server.service.Service`), so limits, validation and upload hardening are identical.

:mod:`.params` (typed arguments and image data), :mod:`.tools` (one tool per capability), :mod:`.resources`
(the served indexes and their tiles) and :mod:`.server` (the server, its error table and the two transports).
"""

from terravl.mcp.server import build_server, run_http, run_stdio

__all__ = ["build_server", "run_http", "run_stdio"]
