"""Visual question answering: the question goes into the captioner's prompt and the answer is generated."""

from __future__ import annotations

from terravl.models.bridge import question_prompt
from terravl.results import Answer, Answers
from terravl.tasks.caption import _default
from terravl.tasks.inputs import answer_each, encoded
from terravl.validation import check_beams, check_max_tokens, check_text


def ask(images: list, question: str, captioner=None, beams: int = 1, max_tokens: int = 12, batch_size: int = 32,
        tile_size: int = 256, whole_below: int | None = None, progress: bool | None = None,
        bands="auto") -> Answers[Answer]:
    """One :class:`~terravl.results.Answer` per image (or tile of a large raster), or a
    :class:`~terravl.results.Problem`, in input order. A malformed or over-long question is an
    :class:`~terravl.errors.InputError` (field ``question``) before any image is read."""
    captioner = _default(captioner)
    asked = check_text(question, "question")
    beams, max_tokens = check_beams(beams), check_max_tokens(max_tokens)
    prompt = question_prompt(question)
    captioner.prompt_ids(prompt)  # checks the length in the model's own tokens

    def answer(units, vectors):
        texts = captioner.generate(vectors, prompt, beams=beams, max_tokens=max_tokens)
        return [Answer(**unit.where, question=asked, answer=text) for unit, text in zip(units, texts)]

    chunks = encoded(captioner.encoder, images, tile_size, whole_below, batch_size, bands=bands)
    return Answers(tuple(answer_each(chunks, answer, progress)))
