"""MCP resources: the served indexes (``terravl://indexes``) and knowledge bases (``terravl://kbs``), each indexed
tile as a PNG, and the files that ``localize``, ``change`` and ``ground`` write (by the opaque ids they return). Nothing is
read by a path the client chooses: tiles by index name and id, outputs by id, as the HTTP API does."""

from __future__ import annotations

import json
from typing import Any, Callable

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from terravl.errors import InputError
from terravl.server.deps import MAX_ID
from terravl.server.errors import NotFound, Unavailable
from terravl.server.service import CHANGE_FILES, GROUND_FILES, Service
from terravl.validation import check_int

TILE_SIZE = 1024
"""Longest side of a tile resource (indexed tiles are usually 256–512 px, so this is their full resolution)."""


def index_summaries(service: Service) -> list[dict[str, Any]]:
    """Each served index: tiles, distinct sources, the model it was built with, its extent (WGS84 bbox of the
    georeferenced tiles) and acquisition span; an index that cannot be opened says why (never its folder)."""
    out = []
    for name in service.paths:
        problem = service.index_problem(name)
        if problem is not None:
            out.append({"name": name, "unavailable": problem})
            continue
        info = service.store(name).info()
        out.append({"name": name, "tiles": info["count"], "sources": info["sources"], "model": info["model"],
                    "extent": info["bbox"], "acquired": info["acquired"],
                    "tile_uri": f"terravl://indexes/{name}/tiles/{{id}}"})
    return out


async def _read(service: Service, fn: Callable, *args) -> Any:
    """``fn(*args)`` in the service's light pool, its refusals as the SDK's resource errors (the client gets the
    message; a missing thing is "invalid params", as the protocol asks)."""
    try:
        return await service.light.run(fn, *args)
    except (NotFound, InputError) as exc:
        field = getattr(exc, "field", None) or getattr(exc, "source", None)
        raise ResourceNotFoundError(f"{field}: {exc.message}" if field else exc.message) from None
    except Unavailable as exc:
        raise ResourceError(exc.message) from None


def register_resources(server: MCPServer, service: Service) -> None:
    """Add the resources to ``server``."""

    @server.resource("terravl://indexes", name="indexes", mime_type="application/json",
                     description="The served indexes: tiles, sources, model, extent (WGS84 bbox) and acquisition "
                                 "span of each.")
    async def indexes() -> str:
        return json.dumps(await _read(service, index_summaries, service), indent=1)

    @server.resource("terravl://kbs", name="kbs", mime_type="application/json",
                     description="The served knowledge bases (by name, for kb_query and ask_kb): items, images, "
                                 "passages and the model of each; an empty list when none is served.")
    async def kbs() -> str:
        return json.dumps(await _read(service, service.kbs), indent=1)

    @server.resource("terravl://indexes/{index}/tiles/{tile_id}", name="tile", mime_type="image/png",
                     description="An indexed tile as PNG (up to 1024 px), by index name and tile id (search hits "
                                 "give this URI as 'tile').")
    async def tile(index: str, tile_id: str) -> bytes:
        number = await _read(service, check_int, tile_id, "tile_id", 1, MAX_ID)
        await _read(service, service.index_name, index)
        return await _read(service, service.thumbnail, index, number, TILE_SIZE)

    @server.resource("terravl://heatmaps/{heatmap_id}", name="heatmap", mime_type="image/tiff",
                     description="A heat map GeoTIFF written by localize (the last 50 are kept).")
    async def heatmap(heatmap_id: str) -> bytes:
        path = await _read(service, service.heatmap_file, heatmap_id)
        return path.read_bytes()

    for name, mime in CHANGE_FILES.items():
        _run_file(server, service, "changes", "change", name, mime)
    for name, mime in GROUND_FILES.items():
        _run_file(server, service, "groundings", "ground", name, mime)


def _run_file(server: MCPServer, service: Service, kind: str, tool: str, name: str, mime: str) -> None:
    """One file of change or grounding runs as a resource template of its own, so each carries its own MIME
    type."""

    async def read(run_id: str) -> str | bytes:
        path, _ = await _read(service, service.run_file, kind, run_id, name)
        return path.read_text(encoding="utf-8") if name.endswith(".geojson") else path.read_bytes()

    server.resource(f"terravl://{kind}/{{run_id}}/{name}", name=f"{tool} {name}", mime_type=mime,
                    description=f"The {name} of a {tool} run, by the {tool}_id that {tool} returned (the last "
                                f"50 runs are kept).")(read)
