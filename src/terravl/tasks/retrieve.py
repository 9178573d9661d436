"""Search an index by text or by example image, with bounding-box and date filters; and image → caption search
over a caption collection. Every hit of a georeferenced raster carries its footprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from terravl.errors import InputError
from terravl.index.shards import ShardSet, global_id, open_index
from terravl.index.store import IndexStore
from terravl.results import CaptionMatch, SearchHit
from terravl.validation import check_bbox, check_date_range, check_k, check_text
from terravl.index.vectors import ANN_THRESHOLD, TUNING_PROMPTS, IVFIndex, exact_search


def _encoder_for(store: IndexStore | ShardSet, encoder=None, text_only: bool = False):
    """The given encoder, checked against the index; else the index's model — for a text query its PyTorch-free
    text side when it can serve (:func:`terravl.models.light_text.open_text_encoder`: a cold process answers in
    about a second instead of paying for PyTorch), else the full model."""
    first = store.stores[0] if isinstance(store, ShardSet) else store  # shards share model and weights
    if encoder is not None:
        first.check_encoder(encoder)
        return encoder
    from terravl.models.light_text import query_encoder

    encoder = query_encoder(store.model, text_only)
    if text_only:
        first.check_encoder(encoder)  # the recorded weights must be the index's
    return encoder


def _check_reranker(rerank) -> None:
    """:func:`terravl.tasks.rerank.check_reranker`, imported only when a re-ranker is given: a cold text search
    must not pay for the raster stack that re-ranking reads tiles with."""
    if rerank is not None:
        from terravl.tasks.rerank import check_reranker

        check_reranker(rerank)


def search(index: str | Path | IndexStore | ShardSet, text: str | None = None, image=None, k: int = 10,
           bbox: str | tuple[float, float, float, float] | None = None, date_from: str | None = None,
           date_to: str | None = None, encoder=None, approximate: bool | None = None,
           rerank=None) -> list[SearchHit]:
    """Top-``k`` tiles for a text or an example image, best first, each a :class:`~terravl.results.SearchHit`
    (id, source path, window, footprint, CRS, acquisition date, score).

    Exact search below :data:`ANN_THRESHOLD` vectors or when filters are given; FAISS IVF above (``approximate``
    forces either). An index given by path is opened and closed here; an open :class:`IndexStore` stays open.

    A sharded index (:mod:`terravl.index.shards`, by path or as an open :class:`ShardSet`) is searched shard by
    shard, each exactly or approximately by its own size as above, and the shards' top ``k`` merged by score:
    the same hits as one index over the same tiles, with ids that name shard and tile
    (:func:`~terravl.index.shards.global_id`).

    ``rerank`` (a :class:`~terravl.tasks.rerank.Reranker`, text queries only) has a captioner re-read the best
    ``rerank.images_per_text`` tiles from their source files and re-order them; scores stay the cosines. It costs
    reading and encoding those tiles and one language-model pass each (tens of milliseconds on a CPU)."""
    _check_reranker(rerank)
    if (text is None) == (image is None):
        raise InputError("query", "give exactly one of a text or an image")
    if text is not None:
        text = check_text(text, "query")
    elif rerank is not None:
        raise InputError("rerank", "re-ranking reads a text query; an image query cannot be re-ranked")
    k = check_k(k)
    bbox = check_bbox(bbox)
    date_from, date_to = check_date_range(date_from, date_to)
    wanted = k if rerank is None else max(k, rerank.images_per_text)
    if isinstance(index, (IndexStore, ShardSet)):
        hits = _search(index, text, image, wanted, bbox, date_from, date_to, encoder, approximate)
    else:
        with open_index(index, readonly=None) as store:
            hits = _search(store, text, image, wanted, bbox, date_from, date_to, encoder, approximate)
    return hits if rerank is None else rerank.rank_hits(text, hits)[:k]


def _search(store: IndexStore | ShardSet, text, image, k, bbox, date_from, date_to, encoder,
            approximate) -> list[SearchHit]:
    if not isinstance(store, ShardSet) and _use_ann(store, bbox, date_from, date_to, approximate):
        IVFIndex.load(store.path, store.version)  # first: a cold CLI process reads the saved approximate index
        # while the text tower still loads in its background thread (terravl.cli.warm); kept per process
    encoder = _encoder_for(store, encoder, text_only=text is not None)
    query = encoder.encode_texts([text])[0] if text is not None else encoder.encode_images([image])[0]
    # text queries sit farther from image vectors than images do: tune IVF's nprobe on a sample of them too
    sample = lambda: encoder.encode_texts(list(TUNING_PROMPTS))  # noqa: E731 - called only when a cache is built
    if isinstance(store, ShardSet):
        return _search_shards(store, query, k, bbox, date_from, date_to, approximate, sample)
    hit_ids, scores = _nearest(store, query, k, bbox, date_from, date_to, approximate, sample)
    rows = store.rows(hit_ids)  # a tile removed since the search (another process): left out, not an error
    return [SearchHit(**rows[int(i)].to_dict(), score=float(s)) for i, s in zip(hit_ids, scores) if int(i) in rows]


def _nearest(store: IndexStore, query: np.ndarray, k: int, bbox, date_from, date_to, approximate,
             sample=None) -> tuple[np.ndarray, np.ndarray]:
    """(tile ids, scores) of the ``k`` best tiles of one index, best first.

    The approximate path reads only the FAISS cache when it holds the vectors it needs (IVF-fp16, IVF-flat), so a
    search of a large index neither reads every vector from SQLite nor holds them twice; the vectors are read when the
    cache must be built (its ``nprobe`` tuned on a sample of text queries, ``sample``) or an IVF-PQ index
    re-ranks with them."""
    allowed = store.filter_ids(bbox, date_from, date_to)
    if allowed is None and _use_ann(store, bbox, date_from, date_to, approximate):
        ann = IVFIndex.load(store.path, store.version)  # the process's copy after the first search
        if ann is None or ann.kind == "pq":
            ids, vectors = store.vectors()
            ann = IVFIndex.cached(store.path, store.version, vectors, ids, persist=not store.readonly,
                                  query_sample=sample)
        if ann.nprobe <= ann.nlist // 2:  # else the vectors have no cluster structure IVF could use: go exact
            pos, scores = ann.search(query, k)
            return ann.ids[pos], scores
    ids, vectors = store.vectors()
    if allowed is not None:
        mask = np.isin(ids, allowed)
        ids, vectors = ids[mask], vectors[mask]
    pos, scores = exact_search(vectors, query, k)
    return ids[pos], scores


def _use_ann(store: IndexStore, bbox, date_from, date_to, approximate) -> bool:
    """Whether a search of ``store`` goes to the approximate index: no filter, and ``approximate`` asked for it or
    the store holds at least :data:`ANN_THRESHOLD` vectors."""
    if bbox is not None or date_from is not None or date_to is not None:
        return False
    return approximate if approximate is not None else store.count() >= ANN_THRESHOLD


def _search_shards(shards: ShardSet, query: np.ndarray, k: int, bbox, date_from, date_to,
                   approximate, sample=None) -> list[SearchHit]:
    """Every shard's top ``want`` merged by score (ties by global id, so the order never depends on the shards'
    timing), keeping the first hit of each content hash: identical pixels in files of two shards are indexed in
    both, but one index holds them once. Should that leave fewer than ``k`` while a shard may hold more, each
    shard is asked again for twice as many."""
    want = k
    while True:
        candidates: list[tuple[float, int]] = []
        more = False
        for no, store in enumerate(shards.stores):
            ids, scores = _nearest(store, query, want, bbox, date_from, date_to, approximate, sample)
            more |= len(ids) == want
            candidates += [(-float(s), global_id(no, int(i))) for i, s in zip(ids, scores)]
        candidates.sort()
        rows = shards.rows(gid for _, gid in candidates)
        hits, seen = [], set()
        for negative, gid in candidates:
            row = rows[gid]
            if row.content_hash in seen:
                continue
            seen.add(row.content_hash)
            hits.append(SearchHit(**row.to_dict(), score=-negative))
            if len(hits) == k:
                return hits
        if not more:
            return hits
        want *= 2


def search_captions(image, captions: list[str], encoder, k: int = 5, rerank=None) -> list[CaptionMatch]:
    """The ``k`` captions of a collection that best describe ``image`` (image → text retrieval). ``rerank`` (a
    :class:`~terravl.tasks.rerank.Reranker`) has a captioner re-order the best ``rerank.texts_per_image``; scores
    stay the cosines."""
    k = check_k(k)
    _check_reranker(rerank)
    if rerank is not None:  # decoded once, for the encoder and the captioner
        from terravl.models.images import to_pil

        image = to_pil(image)
    image_emb = encoder.encode_images([image])[0]
    text_emb = encoder.encode_texts(captions)
    if rerank is not None:
        cosines = text_emb @ image_emb
        pos = rerank.rank_texts(image, captions, cosines)[:k]
        scores = cosines[pos]
    else:
        pos, scores = exact_search(text_emb, image_emb, k)
    return [CaptionMatch(caption=captions[int(p)], score=float(s), rank=r + 1)
            for r, (p, s) in enumerate(zip(pos, scores))]
