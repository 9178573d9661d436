"""Zero-shot scene classification of images or tiles against free labels or a standard dataset's class list."""

from __future__ import annotations

import numpy as np

from terravl.datasets.class_names import BUILTIN_CLASSES
from terravl.eval.zeroshot import RS_TEMPLATES, class_embeddings, softmax
from terravl.results import Answers, Classification, LabelScore
from terravl.tasks.inputs import answer_each, encoded
from terravl.validation import check_k, check_labels


def resolve_labels(labels: list[str] | str | None = None, classes: str | None = None) -> list[str]:
    """The class names to score: ``labels`` (comma-separated or a list) or a built-in list named by ``classes``."""
    return check_labels(labels, classes, BUILTIN_CLASSES)


def classify(images: list, encoder, labels: list[str] | str | None = None, classes: str | None = None, k: int = 5,
             templates=RS_TEMPLATES, batch_size: int = 32, tile_size: int = 256,
             whole_below: int | None = None, views: int = 1, weights: np.ndarray | None = None,
             progress: bool | None = None, bands="auto") -> Answers[Classification]:
    """One :class:`~terravl.results.Classification` per image (or per tile of a large raster, with its window
    and footprint), or a :class:`~terravl.results.Problem`, in input order.

    Directories in ``images`` are walked recursively; rasters larger than ``whole_below`` pixels (default twice
    the tile size) are classified tile by tile. Probabilities are a softmax over the cosine similarities scaled by
    the model's own learned temperature (as CLIP's zero-shot classifier does with its scale of 100). ``views`` > 1
    averages each image's embedding over that many flips/rotations (8: all of them), N× the cost. ``weights``
    are the class embeddings of ``labels`` when the caller has them already (the service caches them). ``bands``
    chooses the bands of multispectral files (default: what the file says)."""
    names = resolve_labels(labels, classes)
    k = check_k(k)
    if weights is None:
        weights = class_embeddings(encoder, names, templates)
    scale = encoder.logit_scale

    def answer(units, vectors):
        probs = softmax(scale * vectors @ weights.T)
        results = []
        for unit, p in zip(units, probs):
            order = np.argsort(-p)[: max(1, k)]
            results.append(Classification(**unit.where, label=names[order[0]], score=float(p[order[0]]),
                                          top=[LabelScore(label=names[j], probability=float(p[j])) for j in order]))
        return results

    chunks = encoded(encoder, images, tile_size, whole_below, batch_size, views, bands)
    return Answers(tuple(answer_each(chunks, answer, progress)))
