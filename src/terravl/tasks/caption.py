"""Captioning: one sentence per image, or per tile of a large raster (each with its footprint).

The method is a captioner from :func:`terravl.models.load_captioner` (the shipped ``terravl-captioner``, or a
bridge over a user's language model), or the retrieval baseline (:class:`~terravl.models.retrieval_captioner.
RetrievalCaptioner`, the caption of the nearest image of a caption bank).
"""

from __future__ import annotations

from terravl.models.bridge import CAPTION_PROMPT
from terravl.results import Answers, Caption
from terravl.tasks.inputs import answer_each, encoded
from terravl.validation import check_beams, check_max_tokens


def caption(images: list, captioner=None, beams: int | None = None, max_tokens: int | None = None,
            batch_size: int = 32, tile_size: int = 256, whole_below: int | None = None,
            progress: bool | None = None, bands="auto") -> Answers[Caption]:
    """One :class:`~terravl.results.Caption` per image (or tile, with its window and footprint), or a
    :class:`~terravl.results.Problem`, in input order. Decoding is deterministic: greedy for ``beams=1``, else
    beam search."""
    captioner = _default(captioner)
    beams, max_tokens = check_beams(beams), check_max_tokens(max_tokens)

    def answer(units, vectors):
        texts = captioner.generate(vectors, CAPTION_PROMPT, beams=beams, max_tokens=max_tokens)
        return [Caption(**unit.where, caption=text) for unit, text in zip(units, texts)]

    chunks = encoded(captioner.encoder, images, tile_size, whole_below, batch_size, bands=bands)
    return Answers(tuple(answer_each(chunks, answer, progress)))


def _default(captioner):
    if captioner is None or isinstance(captioner, str):
        from terravl.models import load_captioner

        return load_captioner(captioner or "terravl-captioner")
    return captioner
