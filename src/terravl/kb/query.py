"""Hybrid retrieval over a knowledge base: BM25, dense text and cross-modal image similarity, fused by reciprocal
rank fusion, then re-ranked.

- ``bm25``: SQLite FTS5's BM25 over titles and passages, for the content words of the question (and of the query
  image's description, when the caller gives one).
- ``dense``: cosine of the query text's vector with every passage's (and caption's) text vector.
- ``image``: cosine of every image item's vector with the query image's vector (image → image) or, without a query
  image, with the query text's (text → image, cross-modal).

Reciprocal rank fusion (Cormack et al., 2009): each item scores Σ 1 / (60 + rank) over the lists it is in, so
retrievers whose scores are not comparable combine by rank alone. Re-ranking then re-scores the fused top
:data:`CANDIDATES` with what rank fusion throws away: each candidate's fusion score (divided by the best) plus its
*relevance* (below: its own best cosine with the query) plus :data:`FEEDBACK_WEIGHT` × its cosine with a
pseudo-relevance feedback vector (Rocchio: the fusion-weighted mean of the top :data:`FEEDBACK` candidates'
vectors, each candidate's text and image vectors averaged). A passage that matches the question closely rises
above one that several retrievers found only loosely; evidence that agrees with the best evidence rises, isolated
matches of one retriever sink.

Every item also gets a *relevance*: its best cosine with the query (text → passage, or query image → image), on one
scale across queries, which is what "nothing relevant was found" is judged on (see :data:`MIN_RELEVANCE`).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from terravl.errors import InputError
from terravl.index.vectors import top_k
from terravl.kb.store import KBStore
from terravl.kb.text import content_words
from terravl.kb.results import Evidence, Retrieval
from terravl.validation import check_bbox, check_date_range, check_k, check_text

RETRIEVERS = ("bm25", "dense", "image")
RRF_K = 60
CANDIDATES = 50
"""Items each retriever contributes to the fusion, and how many fused items the re-ranker re-scores."""
IMAGE_QUERY_WEIGHT = 2.0
"""Weight of the image list in the fusion when a query image is given: BM25 and the dense retriever then read a
generated description of that same image (noisier evidence of the same thing), so the image's own list counts
double."""
FEEDBACK = 5
FEEDBACK_WEIGHT = 0.25
MIN_RELEVANCE = {"text": 0.5, "image": 0.6}
"""Below these best cosines the knowledge base holds nothing relevant: ``text`` for a question alone (question ↔
passage), ``image`` when a query image is given (query image ↔ stored image). Calibrated on terravl-default: an
unrelated question ("what was the GDP of France in 1850?") scores at most ≈0.3 against scene descriptions, a
related one ≥0.6."""


def check_retrievers(names: str | Sequence[str] | None) -> tuple[str, ...]:
    if names is None:
        return RETRIEVERS
    items = names.split(",") if isinstance(names, str) else list(names)
    out = tuple(dict.fromkeys(n.strip().lower() for n in items if n.strip()))
    bad = [n for n in out if n not in RETRIEVERS]
    if bad or not out:
        raise InputError("retrievers", f"choose among {', '.join(RETRIEVERS)} (comma-separated), got "
                                       f"{names!r}")
    return out


def retrieve(store: KBStore, encoder, text: str | None = None, image=None, k: int = 10, bbox=None,
             date_from: str | None = None, date_to: str | None = None, retrievers=None, rerank: bool = True,
             expansion: str | None = None, text_vector: np.ndarray | None = None,
             image_vector: np.ndarray | None = None, min_relevance: float | None = None,
             exclude: frozenset[int] | set[int] | None = None) -> Retrieval:
    """Ranked evidence for a question ``text`` and/or a query ``image`` (a path, PIL image or array).

    ``expansion`` is more query text for BM25 and the dense query (the query image's description);
    ``text_vector``/``image_vector`` are query embeddings the caller already has (they skip the encoder);
    ``min_relevance`` replaces :data:`MIN_RELEVANCE` (for another encoder, whose cosines sit elsewhere);
    ``exclude`` holds item ids left out before fusion (leave-one-out calibration: an image's own item must not
    shape the ranking of the rest)."""
    t0 = time.perf_counter()
    if text is None and image is None and image_vector is None:
        raise InputError("query", "give a question, an image, or both")
    if text is not None:
        text = check_text(text, "query")
    k, bbox = check_k(k), check_bbox(bbox)
    date_from, date_to = check_date_range(date_from, date_to)
    names = check_retrievers(retrievers)
    if encoder is not None:
        store.check_encoder(encoder)
    query_text = " ".join(t for t in (text, expansion) if t) or None
    timings: dict[str, float] = {}
    qt = text_vector
    if qt is None and query_text is not None:
        qt = encoder.encode_texts([query_text])[0]
    qi = image_vector
    if qi is None and image is not None:
        qi = encoder.encode_images([image])[0]
    timings["encode"] = _ms(t0)

    t1 = time.perf_counter()
    allowed = store.filter_ids(bbox, date_from, date_to)
    lists: dict[str, list[tuple[int, float]]] = {}
    text_vectors, image_vectors = store.vectors("text"), store.vectors("image")
    if "bm25" in names and query_text is not None:
        lists["bm25"] = store.bm25(content_words(query_text)[:32], CANDIDATES, allowed)
    if "dense" in names and qt is not None:
        lists["dense"] = _dense(text_vectors, qt, allowed)
    if "image" in names and (qi is not None or qt is not None):
        lists["image"] = _dense(image_vectors, qi if qi is not None else qt, allowed)
    if exclude:
        lists = {name: [(i, v) for i, v in ranked if i not in exclude] for name, ranked in lists.items()}
    timings["retrieve"] = _ms(t1)

    t2 = time.perf_counter()
    fused: dict[int, float] = {}
    found_by: dict[int, dict[str, dict[str, float]]] = {}
    for name, ranked in lists.items():
        weight = IMAGE_QUERY_WEIGHT if name == "image" and qi is not None else 1.0
        for rank, (item_id, score) in enumerate(ranked, start=1):
            fused[item_id] = fused.get(item_id, 0.0) + weight / (RRF_K + rank)
            found_by.setdefault(item_id, {})[name] = {"rank": rank, "score": round(score, 4)}
    order = sorted(fused, key=lambda i: (-fused[i], i))[:CANDIDATES]
    tv, iv = _rows(order, text_vectors), _rows(order, image_vectors)
    relevance = _relevance(tv, iv, qt if text is not None else None, qi)
    final = {i: fused[i] for i in order}
    if rerank and len(order) > 1:
        final = _rerank(order, fused, relevance, tv, iv)
    ranked_ids = sorted(final, key=lambda i: (-final[i], i))[:k]
    timings["fuse_rerank"] = _ms(t2)
    rows = store.items(ranked_ids)
    relevance = {i: float(r) for i, r in zip(order, relevance)}
    evidence = [Evidence(rank=n + 1, id=i, kind=rows[i].kind, score=round(final[i], 6),
                         relevance=round(relevance[i], 4), retrievers=found_by[i],
                         **{f: getattr(rows[i], f) or None for f in ("source", "ref", "title", "text", "url", "lon",
                                                                     "lat", "footprint", "date", "label")})
                for n, i in enumerate(ranked_ids)]
    best = max(relevance.values(), default=0.0)
    threshold = relevance_threshold(qi is not None, min_relevance)
    timings["total"] = _ms(t0)
    return Retrieval(query=text, evidence=evidence, best_relevance=round(best, 4), found=best >= threshold,
                     retrievers=list(lists), reranked=bool(rerank), timings_ms=timings)


def relevance_threshold(with_image: bool, given: float | None = None) -> float:
    """The best relevance below which nothing relevant was found: ``given``, else :data:`MIN_RELEVANCE`."""
    if given is None:
        return MIN_RELEVANCE["image" if with_image else "text"]
    value = float(given)
    if not -1.0 <= value <= 1.0:
        raise InputError("min_relevance", f"must be a cosine between -1 and 1, got {given!r}")
    return value


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _dense(vectors, query: np.ndarray, allowed: np.ndarray | None) -> list[tuple[int, float]]:
    ids, matrix = vectors.ids, vectors.matrix
    if not len(ids):
        return []
    scores = matrix @ query.astype(np.float32)
    if allowed is not None:
        scores = np.where(np.isin(ids, allowed), scores, -np.inf)
    best = top_k(scores, CANDIDATES)
    return [(int(ids[b]), float(scores[b])) for b in best if np.isfinite(scores[b])]


def _rows(order: list[int], vectors) -> tuple[np.ndarray, np.ndarray]:
    """(vectors of the ``order`` items, zero rows where an item has none; which items have one)."""
    rows = np.array([vectors.position.get(i, -1) for i in order], dtype=np.int64)
    has = rows >= 0
    out = np.zeros((len(order), vectors.matrix.shape[1]), dtype=np.float32)
    if has.any():
        out[has] = vectors.matrix[rows[has]]
    return out, has


def _relevance(tv, iv, qt, qi) -> np.ndarray:
    """Each candidate's best cosine with the question (its text vector) or with the query image (its image
    vector); 0 where neither applies. Returned by position in the candidate order."""
    best = np.zeros(len(tv[0]), dtype=np.float32)
    if qt is not None:
        best = np.maximum(best, np.where(tv[1], tv[0] @ qt.astype(np.float32), 0.0))
    if qi is not None:
        best = np.maximum(best, np.where(iv[1], iv[0] @ qi.astype(np.float32), 0.0))
    return best


def _rerank(order: list[int], fused: dict[int, float], relevance: np.ndarray, tv, iv) -> dict[int, float]:
    """Fusion score + relevance + Rocchio feedback agreement (see the module docstring)."""
    joint = tv[0] + iv[0]
    norms = np.linalg.norm(joint, axis=1, keepdims=True)
    joint = np.divide(joint, norms, out=np.zeros_like(joint), where=norms > 0)
    scores = np.array([fused[i] for i in order])
    top = slice(0, min(FEEDBACK, len(order)))
    centroid = (scores[top, None] * joint[top]).sum(0)
    centroid /= np.linalg.norm(centroid) or 1.0
    final = scores / scores[0] + relevance + FEEDBACK_WEIGHT * (joint @ centroid)
    return {i: float(f) for i, f in zip(order, final)}


def evidence_dicts(retrieval: Retrieval) -> list[dict[str, Any]]:
    return [e.to_dict() for e in retrieval.evidence]
