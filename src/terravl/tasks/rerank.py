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

The defaults (20 images per text, 50 texts per image, weight 1, 32 references, the log of the mean likelihood as
the prior) are the choices without a free parameter, not the best of the grid that was printed on the test splits
(no split was held out from both the encoder and the captioner); the model card gives that grid.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Sequence

import numpy as np

from terravl.errors import InputError
from terravl.results import SearchHit

log = logging.getLogger(__name__)

PRIOR_CACHE = 200_000
"""Texts whose prior a :class:`Reranker` keeps (about 100 bytes each)."""

REFERENCE_SEED = 0
"""Draws the reference images from the caption memory: fixed, so priors are the same in every process."""

PENDING_BYTES = 64 << 20
"""Pixels of read tiles held before they are encoded: tiles of an index built with large tiles are encoded in
several batches rather than all held at once."""


def _standardise(x: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (a constant row becomes zeros)."""
    x = np.asarray(x, dtype=np.float64)
    spread = x.std(axis=1, keepdims=True)
    return np.where(spread > 1e-12, (x - x.mean(axis=1, keepdims=True)) / np.maximum(spread, 1e-12), 0.0)


def _lift(scores: np.ndarray, candidates: np.ndarray, combined: np.ndarray) -> None:
    """In place, per row: the candidates (given best first) take their combined scores, shifted above every other
    entry of the row; equal combined scores keep the candidates' first order."""
    if not scores.size or not candidates.shape[1]:
        return
    combined = combined - 1e-9 * np.arange(combined.shape[1])[None, :]
    top = scores.max(axis=1, keepdims=True)
    rows = np.arange(len(scores))[:, None]
    scores[rows, candidates] = top + 1.0 + combined - combined.min(axis=1, keepdims=True)


def read_hit(hit: SearchHit) -> np.ndarray:
    """A search hit's pixels, read from its source file by its window (the default ``read_tile``)."""
    from terravl.io import read_window_rgb  # here: importing the raster stack is not free

    return read_window_rgb(hit.path, hit.window)


def check_reranker(rerank) -> None:
    """A clear error for a ``rerank`` argument that is neither None nor a :class:`Reranker`."""
    if rerank is not None and not isinstance(rerank, Reranker):
        raise InputError("rerank", f"must be a terravl.tasks.Reranker (or None), got {type(rerank).__name__}")


@dataclass(frozen=True)
class Reranker:
    """A captioner and how far down each ranking it reads. It keeps no per-call state (only a cache of text
    priors, behind a lock), so one serves many threads. ``read_tile`` reads a search hit's pixels (default:
    :func:`read_hit`); a server passes one that reads only what it serves."""

    captioner: Any
    images_per_text: int = 20
    texts_per_image: int = 50
    weight: float = 1.0
    references: int = 32
    read_tile: Callable[[SearchHit], np.ndarray] | None = field(default=None, repr=False, compare=False)
    _priors: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("images_per_text", "texts_per_image", "references"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
                raise InputError(name, f"must be a whole number from 1 to 1000, got {value!r}")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight < 0:
            raise InputError("weight", f"must be a finite number ≥ 0, got {self.weight!r}")

    @classmethod
    def load(cls, captioner: str | None = None, **settings) -> "Reranker":
        """A re-ranker over a captioner loaded by name or folder (default: the shipped one), its image encoder
        loaded now rather than by the first of several threads."""
        import terravl.models as models

        loaded = models.load_captioner(captioner) if captioner is not None else models.load_captioner()
        loaded.encoder  # noqa: B018
        return cls(loaded, **settings)

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
        pick = np.random.default_rng(REFERENCE_SEED).choice(len(keys), min(self.references, len(keys)), replace=False)
        return keys[pick]

    def text_priors(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """log mean_r p(text | reference image r) per text: how likely the captioner finds it for any training
        image. Zeros when there are no references. Kept per text (up to :data:`PRIOR_CACHE` texts), as it depends
        on nothing else."""
        refs = self._references
        if refs is None or not len(texts):
            return np.zeros(len(texts))
        with self._lock:
            known = {t: self._priors[t] for t in texts if t in self._priors}
        todo = list(dict.fromkeys(t for t in texts if t not in known))
        if todo:
            n, r = len(todo), len(refs)
            ll = self.captioner.text_logprobs(refs, [t for t in todo for _ in range(r)],
                                              rows=np.tile(np.arange(r), n), progress=progress).reshape(n, r)
            top = ll.max(axis=1)
            new = dict(zip(todo, (top + np.log(np.exp(ll - top[:, None]).mean(axis=1))).tolist()))
            known.update(new)
            with self._lock:  # a collection searched again costs its candidates only; bounded
                if len(self._priors) + len(new) > PRIOR_CACHE:
                    self._priors.clear()
                self._priors.update(new)
        return np.array([known[t] for t in texts])

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
        if k < 2 or not len(texts):  # one candidate: nothing to re-order
            return sim.copy()
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
        if k < 2 or not n_img:
            return sim.copy()
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
        if not len(texts):
            return np.zeros(0, dtype=np.int64)
        by_image = self._texts_for_images(cosines, self.image_features([image]), list(texts), None)
        return np.argsort(-by_image[0], kind="stable")

    def rank_hits(self, text: str, hits: list[SearchHit]) -> list[SearchHit]:
        """``hits`` of a text search in their new order: the first :attr:`images_per_text` are read from their
        source files and re-ranked; the rest keep their order below them. A hit whose source cannot be read has no
        second opinion: it keeps its place, and a warning names it. Scores stay the encoder's cosines. (Tiles are
        read with the bands their file names; a STAC asset indexed with chosen bands is re-read with the file's.)"""
        head = list(hits[: self.images_per_text])
        pending, features, readable = [], [], []
        for slot, hit in enumerate(head):
            try:
                pending.append((self.read_tile or read_hit)(hit))
                readable.append(slot)
            except (InputError, OSError) as exc:
                log.warning("re-ranking: tile %s (%s) not read, left in its place: %s", hit.id, hit.path, exc)
            if pending and (slot == len(head) - 1 or sum(p.nbytes for p in pending) > PENDING_BYTES):
                features.append(self.image_features(pending))
                pending = []
        if len(readable) >= 2:
            ll = self.captioner.text_logprobs(np.concatenate(features), [text] * len(readable))
            combined = self._combine(np.array([[head[i].score for i in readable]]), ll[None])[0]
            moved = [head[readable[i]] for i in np.argsort(-combined, kind="stable")]
            for slot, hit in zip(readable, moved):
                head[slot] = hit
        return head + list(hits[self.images_per_text:])
