"""One MCP tool per capability: search, classify, caption, describe, ask, localize, ground, change and ask_change;
and, when the server was started with knowledge bases (``--kb``), kb_query and ask_kb.

Each tool is as thin as the HTTP route it mirrors (:mod:`terravl.server.routes`): it runs the same ``check_*``
functions and calls the same :class:`~terravl.server.service.Service` method, which is the only place that calls
:mod:`terravl.tasks`. Results are structured content validated against the HTTP API's result types (each tool
publishes that type as its output schema), with the JSON repeated as text for clients that read only text, and
thumbnails of search hits (and the preview of a change) as image content. Files the web API links to by URL are
``terravl://`` resources here (see :mod:`.resources`).

No ``from __future__ import annotations`` here: the SDK reads each tool's signature to build its JSON schema, and
the image and index types are made per server (their limits and choices come from its configuration).
"""

import base64
import json
import logging
from collections.abc import Sequence
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, ContentBlock, ImageContent, ResourceLink, TextContent, ToolAnnotations
from pydantic import BaseModel

from terravl.errors import InputError
from terravl.io import BAND_PROFILES
from terravl.mcp import params as p
from terravl.results import ChangeResult, SearchHit
from terravl.server.errors import Unavailable
from terravl.server.routes.kb import MAX_EVIDENCE, KBAskResult, KBQueryResult
from terravl.server.schemas import (AskChangeResult, AskResult, CaptionResult, ClassifyResult, DescribeResult,
                                    shaped)
from terravl.server.service import GROUND_LINKS, ChangeOptions, ChangeSide, ImageSource, Service
from terravl.tasks.ground import GroundResult, check_expression
from terravl.validation import (check_bands, check_bbox, check_beams, check_date_range, check_int, check_k,
                                check_max_tokens, check_scales, check_text)

log = logging.getLogger("terravl.mcp")
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


def tile_uri(index: str, tile_id: int) -> str:
    return f"terravl://indexes/{index}/tiles/{tile_id}"


class Hit(SearchHit):
    """A search hit, with the index it came from and the resource URI of its tile image (PNG)."""

    index: str
    tile: str


class SearchResult(BaseModel):
    """The best tiles, best first; ``geojson`` has their footprints as a FeatureCollection (WGS84; tiles of
    images without a georeference have a null geometry)."""

    index: str
    query: str
    hits: list[Hit]
    geojson: dict


class LocalizeResult(BaseModel):
    """The top regions of the query as GeoJSON, and the heat map GeoTIFF as a resource URI."""

    query: str
    path: str
    windows: int
    regions: dict
    heatmap: str


class GroundFiles(BaseModel):
    """Resource URIs of a grounding run's files (the last 50 runs are kept)."""

    mask: str
    score: str
    regions: str
    preview: str


class GroundResponse(GroundResult):
    """Where the expression is (the CLI's ``terravl ground`` JSON), with the run's id and its files as resources;
    ``outputs`` (server paths in the CLI) is always null here."""

    ground_id: str
    files: GroundFiles


class ChangeFiles(BaseModel):
    """Resource URIs of a change run's files (the last 50 runs are kept)."""

    preview: str
    mask: str
    change: str
    regions: str


class ChangeResponse(ChangeResult):
    """What changed between two dates (the CLI's ``terravl change`` JSON), with the run's id and its files as
    resources; ``outputs`` (server paths in the CLI) is always null here."""

    change_id: str
    files: ChangeFiles


class KBEvidence(KBQueryResult):
    """Ranked evidence from the knowledge base ``kb`` (sources by file name only); ``geojson`` has the footprints
    of the evidence that has one, as a FeatureCollection (WGS84)."""

    geojson: dict


class KBAnswerResult(KBAskResult):
    """An answer grounded in the knowledge base ``kb``: ``citations`` are ranks into ``evidence`` (the answer text
    cites them as [1], [2], …); ``geojson`` has the footprints of the evidence that has one (WGS84)."""

    geojson: dict


def evidence_geojson(evidence: list[dict]) -> dict:
    """The footprints of the evidence items that have one, as a FeatureCollection."""
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": e["footprint"], "properties": {
            "rank": e["rank"], "id": e["id"], "score": e["score"], "source": e["source"], "date": e.get("date")}}
        for e in evidence if e.get("footprint")]}


def answer(model: type[BaseModel], data: dict, extra: Sequence[ContentBlock] = ()) -> CallToolResult:
    """``data`` as ``model`` in structured content, the same JSON as text first, then ``extra`` content."""
    structured = shaped(model, data).model_dump(mode="json")
    return CallToolResult(content=[TextContent(text=json.dumps(structured)), *extra], structured_content=structured)


def register_tools(server: MCPServer, service: Service, max_bytes: int) -> None:
    """Add the tools to ``server``; images sent as data may be at most ``max_bytes`` bytes."""
    Image = p.image_type(max_bytes)
    Before = p.image_type(max_bytes, "The earlier image")
    After = p.image_type(max_bytes, "The later image of the same place")
    Index = p.index_type(list(service.paths))

    def upload(data: str | None, field: str = "image") -> p.Upload | None:
        return p.upload_of(data, max_bytes, field)

    def source(id: int | None, index: str | None, bands: str | None) -> ImageSource:
        return ImageSource(tile_id=id, index=index, bands=check_bands(bands, BAND_PROFILES))

    async def thumbs(index: str, hits: list[dict]) -> list[ContentBlock]:
        blocks: list[ContentBlock] = []
        for hit in hits:
            try:
                png = await service.light.run(service.thumbnail, index, hit["id"], p.THUMBNAIL_SIZE)
            except Unavailable:  # its source file has gone: the hit stays, without a picture
                continue
            blocks.append(ImageContent(data=base64.b64encode(png).decode(), mime_type="image/png"))
            blocks.append(ResourceLink(uri=hit["tile"], name=f"tile {hit['id']}", mime_type="image/png",
                                       description=f"{hit['path']} (score {hit['score']:.3f})"))
        return blocks

    @server.tool(annotations=READ_ONLY)
    async def search(text: p.Text | None = None, image: Image = None, index: Index = None, k: p.K = 10,
                     bbox: p.Bbox = None, date_from: p.Date = None, date_to: p.Date = None,
                     thumbnails: p.Thumbnails = 3, rerank: p.Rerank = False
                     ) -> Annotated[CallToolResult, SearchResult]:
        """Find the tiles of a served satellite/aerial imagery index that best match a text query (or an example
        image sent as base64), optionally within a bounding box and a date range. Returns hits best first, each
        with its score, source, pixel window, footprint (GeoJSON, WGS84) and acquisition date, a GeoJSON
        FeatureCollection of the footprints, and PNG thumbnails of the first hits. With rerank (text queries), a
        captioner re-reads the 20 best tiles and re-orders them: better order, about 20× slower."""
        if (text is None) == (image is None):
            raise InputError("text/image", "give exactly one of a text query (text) or an example image "
                                            "(image, base64 data)")
        if rerank and image is not None:
            raise InputError("rerank", "re-ranking reads a text query; an image query cannot be re-ranked")
        k, box = check_k(k, maximum=p.MAX_HITS), check_bbox(bbox)
        date_from, date_to = check_date_range(date_from, date_to)
        name = service.index_name(index)
        if text is not None:
            query = check_text(text, "text")
            hits = await service.search_pool(bool(rerank)).run(service.search_text, name, query, k, box, date_from, date_to, bool(rerank))
        else:
            query = "image"
            hits = await service.on_image(ImageSource(index=name), upload(image),
                                          lambda src: service.search_image(src, k, box, date_from, date_to))
        hits = [{**{key: v for key, v in h.items() if key != "thumbnail"}, "tile": tile_uri(name, h["id"])}
                for h in hits]
        geojson = {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": h["footprint"], "properties": {
                "rank": i + 1, "id": h["id"], "score": h["score"], "acquired": h["acquired"], "tile": h["tile"]}}
            for i, h in enumerate(hits)]}
        return answer(SearchResult, {"index": name, "query": query, "hits": hits, "geojson": geojson},
                      await thumbs(name, hits[:thumbnails]))

    @server.tool(annotations=READ_ONLY)
    async def classify(image: Image = None, id: p.TileId = None, index: Index = None, labels: p.Labels = None,
                       classes: p.Classes = None, k: p.Top = 5,
                       bands: p.Bands = None) -> Annotated[CallToolResult, ClassifyResult]:
        """Zero-shot scene classification of an image (base64 data) or an indexed tile (id): the best label, its
        probability and the top k, against your labels or a built-in class list (aid, ucm, resisc45, eurosat,
        whu-rs19, patternnet)."""
        names, k = service.labels(labels, classes), check_int(k, "k", 1, p.MAX_TOP)
        result = await service.on_image(source(id, index, bands), upload(image),
                                        lambda src: service.classify(src, names, k))
        return answer(ClassifyResult, result)

    @server.tool(annotations=READ_ONLY)
    async def caption(image: Image = None, id: p.TileId = None, index: Index = None, beams: p.Beams = 3,
                      max_tokens: p.MaxTokens = 40,
                      bands: p.Bands = None) -> Annotated[CallToolResult, CaptionResult]:
        """A one-sentence description of an image (base64 data) or an indexed tile (id)."""
        beams, max_tokens = check_beams(beams), check_max_tokens(max_tokens)
        result = await service.on_image(source(id, index, bands), upload(image),
                                        lambda src: service.caption(src, beams, max_tokens))
        return answer(CaptionResult, result)

    @server.tool(annotations=READ_ONLY)
    async def describe(image: Image = None, id: p.TileId = None, index: Index = None, max_objects: p.MaxObjects = 4,
                       bands: p.Bands = None) -> Annotated[CallToolResult, DescribeResult]:
        """A detailed description (2–4 sentences) of an image (base64 data) or an indexed tile (id), composed by
        small experts: the caption, the scene type with its probability, the objects present with where they are
        and how many; the parts it rests on come with it (scene, objects with scores and positions, labels)."""
        max_objects = check_int(max_objects, "max_objects", 0, 20)
        result = await service.on_image(source(id, index, bands), upload(image),
                                        lambda src: service.describe(src, max_objects))
        return answer(DescribeResult, result)

    @server.tool(annotations=READ_ONLY)
    async def ask(question: p.Question, image: Image = None, id: p.TileId = None, index: Index = None,
                  bands: p.Bands = None) -> Annotated[CallToolResult, AskResult]:
        """Answer a short question about an image (base64 data) or an indexed tile (id), e.g. 'is there a
        bridge?', 'how many buildings?'. Answers are short (a word or a number)."""
        from terravl.models.bridge import question_prompt

        asked = check_text(question, "question")
        question_prompt(asked)  # a clear error before any work
        result = await service.on_image(source(id, index, bands), upload(image),
                                        lambda src: service.ask(src, asked))
        return answer(AskResult, result)

    if service.kb_paths:
        _register_kb_tools(server, service, Image, Index, upload, source)

    @server.tool(annotations=READ_ONLY)
    async def localize(query: p.Text, image: Image = None, id: p.TileId = None, index: Index = None,
                       scales: p.Scales = [256], top: p.Top = 5,  # noqa: B006 - never mutated
                       bands: p.Bands = None) -> Annotated[CallToolResult, LocalizeResult]:
        """Where in a large scene is the text? Scores windows of an image (base64 data) or, for an indexed tile
        (id), of the whole raster it was cut from. Returns the top regions as GeoJSON polygons (WGS84 when the
        raster is georeferenced) and the heat map GeoTIFF as a resource."""
        text, sizes, top = check_text(query, "query"), check_scales(scales), check_int(top, "top", 1, p.MAX_TOP)
        result = await service.on_image(source(id, index, bands), upload(image),
                                        lambda src: service.localize(src, text, sizes, top))
        result["heatmap"] = "terravl://heatmaps/" + result["heatmap"].rsplit("/", 1)[-1]
        return answer(LocalizeResult, result)

    @server.tool(annotations=READ_ONLY)
    async def ground(expression: p.Text, image: Image = None, id: p.TileId = None, index: Index = None,
                     all: p.AllInstances = False, method: p.GroundMethod = "auto",
                     bands: p.Bands = None) -> Annotated[CallToolResult, GroundResponse]:
        """Find what an expression refers to ('the storage tanks next to the river', 'the beach in the top
        right') in an image (base64 data) or an indexed tile (id): the best matching region (every one with all),
        each with its score, box (pixel window, and a WGS84 polygon when the image is georeferenced), area and
        outline (GeoJSON). When nothing matches, found is false and best_score says how close the best region
        came. The mask and probability GeoTIFFs are resources; a preview image (the image | the answer in red)
        comes as image content."""
        text = check_expression(expression)
        result = await service.on_image(source(id, index, bands), upload(image),
                                        lambda src: service.ground(src, text, bool(all), method))
        run = result.pop("ground_id")
        result.pop("links", None)
        result.update(ground_id=run, files={key: f"terravl://groundings/{run}/{name}"
                                            for key, name in GROUND_LINKS.items()})
        preview, _ = service.run_file("groundings", run, "preview.png")
        image_block = ImageContent(data=base64.b64encode(preview.read_bytes()).decode(), mime_type="image/png")
        return answer(GroundResponse, result, [image_block])

    def pair(before: str | None, after: str | None, before_id: int | None, after_id: int | None):
        sides = (ChangeSide("before", "before_id", tile_id=before_id),
                 ChangeSide("after", "after_id", tile_id=after_id))
        return sides, (upload(before, "before"), upload(after, "after"))

    def options(method: str, min_region_pixels: int, bands: str | None, describe: bool) -> ChangeOptions:
        return ChangeOptions(method, check_int(min_region_pixels, "min_region_pixels", 1, p.MAX_REGION_PIXELS),
                             check_bands(bands, BAND_PROFILES), bool(describe))

    @server.tool(annotations=READ_ONLY)
    async def change(before: Before = None, after: After = None, before_id: p.TileId = None,
                     after_id: p.TileId = None, index: Index = None, method: p.Method = "trained",
                     min_region_pixels: p.MinRegion = 16, bands: p.Bands = None,
                     describe: p.Describe = True) -> Annotated[CallToolResult, ChangeResponse]:
        """What changed between two dates of one place: two images (base64 data; GeoTIFFs are aligned by their
        georeference, others must have the same size) or two indexed tiles (before_id, after_id). Returns how much
        changed, the changed regions as GeoJSON (WGS84, largest first, with their scene class on each date when
        describe), a caption of the change, the run's files as resources, and a preview image (before | after |
        changes in red)."""
        opts = options(method, min_region_pixels, bands, describe)
        sides, uploads = pair(before, after, before_id, after_id)
        result = await service.on_pair(*sides, uploads, index, opts.bands,
                                       lambda b, a, labels, trusted: service.change(b, a, labels, trusted, opts))
        run = result["change_id"]
        result["files"] = {key: f"terravl://changes/{run}/{name}" for key, name in
                           (("preview", "preview.png"), ("mask", "mask.tif"), ("change", "change.tif"),
                            ("regions", "regions.geojson"))}
        preview, _ = service.change_file(run, "preview.png")
        image = ImageContent(data=base64.b64encode(preview.read_bytes()).decode(), mime_type="image/png")
        return answer(ChangeResponse, result, [image])

    @server.tool(annotations=READ_ONLY)
    async def ask_change(question: p.Question, before: Before = None, after: After = None,
                         before_id: p.TileId = None, after_id: p.TileId = None, index: Index = None,
                         method: p.Method = "trained", min_region_pixels: p.MinRegion = 16, bands: p.Bands = None,
                         describe: p.Describe = True) -> Annotated[CallToolResult, AskChangeResult]:
        """Answer a question about the change between two dates (the same inputs as change): whether, how much,
        how many regions, where and what was there before are answered from the measured change (based_on
        'measured change'); any other question is put to the VQA model on each date."""
        from terravl.models.bridge import question_prompt

        asked = check_text(question, "question")
        question_prompt(asked)
        opts = options(method, min_region_pixels, bands, describe)
        sides, uploads = pair(before, after, before_id, after_id)
        result = await service.on_pair(*sides, uploads, index, opts.bands,
                                       lambda b, a, labels, trusted: service.ask_change(b, a, labels, trusted,
                                                                                        asked, opts))
        return answer(AskChangeResult, result)



def _register_kb_tools(server: MCPServer, service: Service, Image, Index, upload, source) -> None:
    """kb_query and ask_kb, over the knowledge bases the server was started with (``--kb``), as
    ``GET /api/v1/kb/query`` and ``POST /api/v1/ask`` with ``kb`` do."""
    KB = p.kb_type(list(service.kb_paths))

    @server.tool(annotations=READ_ONLY)
    async def kb_query(question: p.KBQuestion, kb: KB = None, k: p.Evidence = 10, bbox: p.Bbox = None,
                       date_from: p.Date = None,
                       date_to: p.Date = None) -> Annotated[CallToolResult, KBEvidence]:
        """Ranked evidence for a question from a served knowledge base (captioned images, documents, tables,
        indexed tiles): hybrid retrieval (BM25, dense text and cross-modal image similarity, fused and
        re-ranked), optionally within a bounding box and a date range. Each item has its score, relevance,
        source (file name) and, where it has one, a footprint (also as a GeoJSON FeatureCollection). found is
        false when nothing is relevant enough."""
        text, k, box = check_text(question, "question"), check_k(k, maximum=MAX_EVIDENCE), check_bbox(bbox)
        date_from, date_to = check_date_range(date_from, date_to)
        name = service.kb_name(kb)
        result = await service.light.run(service.kb_query, name, text, k, box, date_from, date_to)
        return answer(KBEvidence, {**result, "geojson": evidence_geojson(result["evidence"])})

    @server.tool(annotations=READ_ONLY)
    async def ask_kb(question: p.Question, kb: KB = None, image: Image = None, id: p.TileId = None,
                     index: Index = None, bands: p.Bands = None) -> Annotated[CallToolResult, KBAnswerResult]:
        """Answer a question from a served knowledge base, with numbered citations ([1], [2], … into evidence),
        about an image (base64 data) or an indexed tile (id) when one is given (the VQA model's answer on the
        image is then combined with the evidence), else from the knowledge base alone. Says 'Not found in the
        knowledge base' (found false) rather than guess."""
        from terravl.models.bridge import question_prompt

        question_prompt(question)  # a clear error before any work
        asked = check_text(question, "question")
        name = service.kb_name(kb)
        if image is None and id is None:
            result = await service.heavy.run(service.ask_kb, None, asked, name)
        else:
            result = await service.on_image(source(id, index, bands), upload(image),
                                            lambda src: service.ask_kb(src, asked, name))
        return answer(KBAnswerResult, {**result, "geojson": evidence_geojson(result["evidence"])})
