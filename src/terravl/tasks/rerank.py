"""Second-stage ranking: the captioner re-reads a dual encoder's best candidates.

A dual encoder compares one vector per image with one per text. That is fast enough for millions of tiles, but a
single vector keeps little of the detail a caption names. The captioner
(:class:`~terravl.models.bridge.Captioner`) reads a text word by word given the image, so how likely it finds the
text is a second, finer opinion. It is asked only about each query's top candidates, as BLIP and ALBEF re-rank
theirs, and the candidates are ordered by ``z(cosine) + weight · z(log-likelihood)``, both standardised over the
query's candidates so that neither score's scale matters. Everything outside the candidates keeps its place below
them.

Ranking texts for one image needs one more step: short, common captions are likely for any image. Each text's
log-likelihood is therefore taken relative to its prior, the log of its mean likelihood over reference images
(pointwise mutual information). The references are a fixed sample of the training images in the encoder's caption
memory, never the images being searched. A captioner whose encoder has no caption memory ranks texts by their
plain log-likelihood.

The defaults (20 images per text, 50 texts per image, weight 1, 32 references) were fixed before any test-split
score was seen; the model card gives the scores and what else was tried.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from terravl.errors import InputError
from terravl.results import SearchHit

log = logging.getLogger(__name__)


def _standardise(x: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (a constant row becomes zeros)."""
    x = np.asarray(x, dtype=np.float64)
    spread = x.std(axis=1, keepdims=True)
    return np.where(spread > 1e-12, (x - x.mean(axis=1, keepdims=True)) / np.maximum(spread, 1e-12), 0.0)


def _lift(scores: np.ndarray, candidates: np.ndarray, combined: np.ndarray) -> None:
    """In place, per row: the candidates take their combined scores, shifted above every other entry of the row."""
    top = scores.max(axis=1, keepdims=True)
    rows = np.arange(len(scores))[:, None]
    scores[rows, candidates] = top + 1.0 + combined - combined.min(axis=1, keepdims=True)


@dataclass(frozen=True)
class Reranker:
    """A captioner and how far down each ranking it reads. Holds no per-call state: one serves many threads."""

    captioner: Any
    images_per_text: int = 20
    texts_per_image: int = 50
    weight: float = 1.0
    references: int = 32
    seed: int = field(default=0, repr=False)

    def __post_init__(self):
        for name in ("images_per_text", "texts_per_image", "references"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
                raise InputError(name, f"must be a whole number from 1 to 1000, got {value!r}")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight < 0:
            raise InputError("weight", f"must be a finite number ≥ 0, got {self.weight!r}")

    def settings(self) -> dict:
        """What a result records about how it was re-ranked."""
        return {"captioner": getattr(self.captioner, "name", "captioner"), "images_per_text": self.images_per_text,
                "texts_per_image": self.texts_per_image, "weight": float(self.weight),
                "references": len(self._references) if self._references is not None else 0}

    # -- features and priors --------------------------------------------------------------------------
    def image_features(self, images: Sequence, batch_size: int = 64, progress: bool | None = None) -> np.ndarray:
        """The captioner's own image features (its encoder, without the caption memory) of ``images``."""
        return self.captioner.encoder.encode_images(list(images), batch_size=batch_size, progress=progress)

    @cached_property
    def _references(self) -> np.ndarray | None:
        memory = getattr(self.captioner.encoder, "memory_images", None)
        keys = memory() if memory is not None else None
        if keys is None or len(keys) == 0:
            return None
        pick = np.random.default_rng(self.seed).choice(len(keys), min(self.references, len(keys)), replace=False)
        return keys[pick]

    def text_priors(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """log mean_r p(text | reference image r) per text: how likely the captioner finds it for any training
        image. Zeros when there are no references."""
        refs = self._references
        if refs is None or not len(texts):
            return np.zeros(len(texts))
        n, r = len(texts), len(refs)
        ll = self.captioner.text_logprobs(refs, [t for t in texts for _ in range(r)], rows=np.tile(np.arange(r), n),
                                          progress=progress).reshape(n, r)
        top = ll.max(axis=1)
        return top + np.log(np.exp(ll - top[:, None]).mean(axis=1))

    def _combine(self, cosines: np.ndarray, loglik: np.ndarray) -> np.ndarray:
        return _standardise(cosines) + float(self.weight) * _standardise(loglik)

    # -- rankings --------------------------------------------------------------------------------------
    def rerank_matrix(self, similarity: np.ndarray, features: np.ndarray, texts: Sequence[str],
                      progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Re-ranked copies of an (images, texts) ``similarity`` matrix: one to rank texts for each image (row by
        row), one to rank images for each text (column by column). ``features`` are :meth:`image_features` of the
        matrix's images. Only the order within each query's candidates changes; the values placed there are
        ranking keys, not cosines."""
        sim = np.asarray(similarity, dtype=np.float64)
        n_img, n_txt = sim.shape
        if len(features) != n_img or len(texts) != n_txt:
            raise InputError("similarity", f"is {n_img} × {n_txt}, for {len(features)} images and {len(texts)} "
                                           f"texts")
        texts = list(texts)
        return (self._texts_for_images(sim, features, texts, progress),
                self._images_for_texts(sim, features, texts, progress))

    def _images_for_texts(self, sim: np.ndarray, features, texts: list[str], progress) -> np.ndarray:
        """``sim`` with each text's best images (a column's top entries) in their re-ranked order."""
        k = min(self.images_per_text, sim.shape[0])
        by_text = sim.T.copy()
        top = np.argsort(-by_text, axis=1, kind="stable")[:, :k]
        ll = self.captioner.text_logprobs(features, [t for t in texts for _ in range(k)], rows=top.ravel(),
                                          progress=progress).reshape(len(texts), k)
        _lift(by_text, top, self._combine(np.take_along_axis(sim.T, top, axis=1), ll))
        return by_text.T

    def _texts_for_images(self, sim: np.ndarray, features, texts: list[str], progress) -> np.ndarray:
        """``sim`` with each image's best texts (a row's top entries) in their re-ranked order, each text's
        log-likelihood taken against its prior."""
        n_img, n_txt = sim.shape
        k = min(self.texts_per_image, n_txt)
        by_image = sim.copy()
        top = np.argsort(-by_image, axis=1, kind="stable")[:, :k]
        ll = self.captioner.text_logprobs(features, [texts[j] for j in top.ravel()],
                                          rows=np.repeat(np.arange(n_img), k), progress=progress).reshape(n_img, k)
        prior = np.zeros(n_txt)
        used = np.unique(top)
        prior[used] = self.text_priors([texts[j] for j in used], progress)
        _lift(by_image, top, self._combine(np.take_along_axis(sim, top, axis=1), ll - prior[top]))
        return by_image

    def rank_texts(self, image, texts: Sequence[str], cosines: np.ndarray) -> np.ndarray:
        """The order (indices into ``texts``, best first) of the texts a dual encoder scored for one ``image``
        with ``cosines``; only the top :attr:`texts_per_image` are re-read."""
        cosines = np.asarray(cosines, dtype=np.float64).reshape(1, -1)
        if cosines.shape[1] != len(texts):
            raise InputError("cosines", f"{cosines.shape[1]} scores for {len(texts)} texts")
        by_image = self._texts_for_images(cosines, self.image_features([image]), list(texts), None)
        return np.argsort(-by_image[0], kind="stable")

    def rank_hits(self, text: str, hits: list[SearchHit]) -> list[SearchHit]:
        """``hits`` of a text search in their new order: the first :attr:`images_per_text` are read from their
        source files and re-ranked; the rest keep their order below them. A hit whose source cannot be read has no
        second opinion: it goes below the re-ranked ones, and a warning names it. Scores stay the encoder's
        cosines."""
        head, tail = list(hits[: self.images_per_text]), list(hits[self.images_per_text:])
        pixels, readable, unread = [], [], []
        for hit in head:
            try:
                pixels.append(_hit_pixels(hit))
                readable.append(hit)
            except (InputError, OSError) as exc:
                log.warning("re-ranking: tile %s (%s) not read, placed below the re-ranked tiles: %s", hit.id,
                            hit.path, exc)
                unread.append(hit)
        if len(readable) >= 2:
            ll = self.captioner.text_logprobs(self.image_features(pixels), [text] * len(readable))
            combined = self._combine(np.array([[h.score for h in readable]]), ll[None])[0]
            readable = [readable[i] for i in np.argsort(-combined, kind="stable")]
        return readable + unread + tail


def _hit_pixels(hit: SearchHit) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an indexed tile, read from its source by the index's own record."""
    from terravl.io import PixelWindow, open_raster

    window = PixelWindow(**hit.window) if hit.window else None
    with open_raster(hit.path) as src:
        array, _ = src.read_rgb(window)
    return array.copy()
