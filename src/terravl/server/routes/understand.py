"""Understanding one image (an upload or an indexed tile): classify, caption, describe, ask, localize, and the heat maps
that localize writes. Image-model work runs in the service's heavy pool."""

from __future__ import annotations

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from terravl.server.deps import MAX_ID, ServiceDep
from terravl.server.routes.kb import KBAskResult
from terravl.server.schemas import AskResult, CaptionResult, ClassifyResult, DescribeResult, LocalizeResult, shaped
from terravl.io import BAND_PROFILES
from terravl.server.service import ImageSource
from terravl.validation import (MAX_LABEL_CHARS, MAX_LABELS, MAX_QUERY_CHARS, check_bands, check_beams,
                                check_int, check_max_tokens, check_scales, check_text)

router = APIRouter(tags=["understand"])
MAX_TOP = 50
IMAGE = File(None, description="An image (JPEG, PNG, GeoTIFF or WebP, recognised by content); or give id.")
TILE_ID = Form(None, ge=1, le=MAX_ID, description="Id of an indexed tile; or upload an image.")
BANDS = Form(None, max_length=40, description="Bands of a multispectral image to show as RGB: a profile (sentinel2, "
                                              "landsat8, …) or 1-based indexes like 4,3,2. Default: what the file says.")


def _source(id: int | None, index: str | None, bands: str | None) -> ImageSource:
    return ImageSource(tile_id=id, index=index, bands=check_bands(bands, BAND_PROFILES))


@router.post("/api/v1/classify", response_model=ClassifyResult)
async def classify(request: Request, service: ServiceDep, image: UploadFile | None = IMAGE, id: int | None = TILE_ID,
                   index: str | None = Form(None),
                   labels: str | None = Form(None, max_length=MAX_LABELS * (MAX_LABEL_CHARS + 1),
                                             description=f"Comma-separated, at most {MAX_LABELS} of at most "
                                                         f"{MAX_LABEL_CHARS} characters."),
                   classes: str | None = Form(None, max_length=40), k: int = Form(5), bands: str | None = BANDS):
    """Zero-shot scene classification of an upload or an indexed tile (``labels`` comma-separated, or a
    built-in list in ``classes``: aid, ucm, resisc45, eurosat, whu-rs19, patternnet)."""
    names, k = service.labels(labels, classes), check_int(k, "k", 1, MAX_TOP)
    result = await service.on_image(_source(id, index, bands), image,
                                    lambda src: service.classify(src, names, k), request)
    return shaped(ClassifyResult, result)


@router.post("/api/v1/caption", response_model=CaptionResult)
async def caption(request: Request, service: ServiceDep, image: UploadFile | None = IMAGE, id: int | None = TILE_ID,
                  index: str | None = Form(None), beams: int = Form(3), max_tokens: int = Form(40),
                  bands: str | None = BANDS):
    """A one-sentence description of an upload or an indexed tile."""
    beams, max_tokens = check_beams(beams), check_max_tokens(max_tokens)
    result = await service.on_image(_source(id, index, bands), image,
                                    lambda src: service.caption(src, beams, max_tokens), request)
    return shaped(CaptionResult, result)


@router.post("/api/v1/describe", response_model=DescribeResult)
async def describe(request: Request, service: ServiceDep, image: UploadFile | None = IMAGE,
                   id: int | None = TILE_ID, index: str | None = Form(None),
                   max_objects: int = Form(4, description="Most objects the text names, 0–20 (the parts list "
                                                          "every one found)."),
                   bands: str | None = BANDS):
    """A detailed description of an upload or an indexed tile, composed by small experts (the caption, the scene
    type, the objects present with where they are and how many), with the parts it rests on."""
    max_objects = check_int(max_objects, "max_objects", 0, 20)
    result = await service.on_image(_source(id, index, bands), image,
                                    lambda src: service.describe(src, max_objects), request)
    return shaped(DescribeResult, result)


@router.post("/api/v1/ask", response_model=AskResult | KBAskResult)
async def ask(request: Request, service: ServiceDep, question: str = Form(..., min_length=1, max_length=500),
              image: UploadFile | None = IMAGE, id: int | None = TILE_ID, index: str | None = Form(None),
              bands: str | None = BANDS,
              kb: str | None = Form(None, max_length=200,
                                    description="Answer from this served knowledge base (`terravl serve --kb`), "
                                                "with numbered citations; the image is then optional.")):
    """Answer a question about an upload or an indexed tile; with ``kb``, an answer grounded in a served knowledge
    base (about the image, if one is given) with its numbered evidence."""
    from terravl.models.bridge import question_prompt

    question_prompt(question)  # a clear 400 before any work
    check_text(question, "question")
    if kb is not None:
        service.kb_name(kb)  # an unknown knowledge base is a 404 before any work
        if image is None and id is None:
            result = await service.heavy.run(service.ask_kb, None, question, kb, request=request)
        else:
            result = await service.on_image(_source(id, index, bands), image,
                                            lambda src: service.ask_kb(src, question, kb), request)
        return shaped(KBAskResult, result)
    result = await service.on_image(_source(id, index, bands), image,
                                    lambda src: service.ask(src, question), request)
    return shaped(AskResult, result)


@router.post("/api/v1/localize", response_model=LocalizeResult)
async def localize(request: Request, service: ServiceDep,
                   query: str = Form(..., min_length=1, max_length=MAX_QUERY_CHARS),
                   image: UploadFile | None = IMAGE, id: int | None = TILE_ID, index: str | None = Form(None),
                   scales: str = Form("256", max_length=40, description="Window sizes in pixels, e.g. 128,256."),
                   top: int = Form(5), bands: str | None = BANDS):
    """Where in a scene is the text? For an indexed tile, the whole source raster it was cut from is
    searched. Returns the top regions (GeoJSON) and the URL of the heat map GeoTIFF."""
    text, sizes, top = check_text(query, "query"), check_scales(scales), check_int(top, "top", 1, MAX_TOP)
    result = await service.on_image(_source(id, index, bands), image,
                                    lambda src: service.localize(src, text, sizes, top), request)
    return shaped(LocalizeResult, result)


@router.get("/api/v1/heatmaps/{heatmap_id}", response_class=FileResponse)
async def heatmap(service: ServiceDep, heatmap_id: str):
    """A heat map GeoTIFF written by ``/api/v1/localize`` (the last 50 are kept)."""
    path = service.heatmap_file(heatmap_id)
    return FileResponse(path, media_type="image/tiff", filename=f"heatmap-{heatmap_id[:8]}.tif")
