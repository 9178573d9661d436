"""Captioning: one sentence per image, or per tile of a large raster (each with its footprint).

The method is a captioner from :func:`terravl.models.load_captioner` (the shipped ``terravl-captioner``, or a
bridge over a user's language model), or the retrieval baseline (:class:`~terravl.models.retrieval_captioner.
RetrievalCaptioner`, the caption of the nearest image of a caption bank).
"""

from __future__ import annotations

from terravl.models.bridge import CAPTION_PROMPT
from terravl.tasks.inputs import encode_inputs


def caption(images: list, captioner=None, beams: int | None = None, max_tokens: int | None = None,
            batch_size: int = 32, tile_size: int = 256, whole_below: int | None = None) -> list[dict]:
    """Per image (or tile): ``{path, caption}`` (+ ``window``, ``footprint`` for tiles); unreadable inputs get
    ``error`` instead and the rest go on. Decoding is deterministic: greedy for ``beams=1``, else beam search."""
    captioner = _default(captioner)
    features, rows, errors = encode_inputs(captioner.encoder, images, tile_size, whole_below, batch_size)
    texts = captioner.generate(features, CAPTION_PROMPT, beams=beams, max_tokens=max_tokens) if rows else []
    return [{**row, "caption": text} for row, text in zip(rows, texts)] + errors


def _default(captioner):
    if captioner is None or isinstance(captioner, str):
        from terravl.models import load_captioner

        return load_captioner(captioner or "terravl-captioner")
    return captioner
