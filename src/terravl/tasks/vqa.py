"""Visual question answering: the question goes into the captioner's prompt and the answer is generated."""

from __future__ import annotations

from terravl.models.bridge import question_prompt
from terravl.tasks.caption import _default
from terravl.tasks.inputs import encode_inputs


def ask(images: list, question: str, captioner=None, beams: int = 1, max_tokens: int = 12, batch_size: int = 32,
        tile_size: int = 256, whole_below: int | None = None) -> list[dict]:
    """Per image (or tile of a large raster): ``{path, question, answer}``. A malformed or over-long question is
    an :class:`~terravl.errors.InputError` before any image is read."""
    captioner = _default(captioner)
    prompt = question_prompt(question)
    captioner.prompt_ids(prompt)  # checks the length in the model's own tokens
    asked = " ".join(question.split())
    features, rows, errors = encode_inputs(captioner.encoder, images, tile_size, whole_below, batch_size)
    answers = captioner.generate(features, prompt, beams=beams, max_tokens=max_tokens) if rows else []
    return [{**row, "question": asked, "answer": a} for row, a in zip(rows, answers)] + \
        [{**e, "question": asked} for e in errors]
