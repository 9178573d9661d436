"""Search an index by text or by example image, with bounding-box and date filters; and image → caption search
over a caption collection. Every hit of a georeferenced raster carries its footprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from terravl.errors import InputError
from terravl.index.store import IndexStore
from terravl.results import CaptionMatch, SearchHit
from terravl.validation import check_bbox, check_date_range, check_k, check_text
from terravl.index.vectors import ANN_THRESHOLD, IVFIndex, exact_search


def _encoder_for(store: IndexStore, encoder=None):
    if encoder is not None:
        if (encoder.source or encoder.name) != store.model:
            raise InputError(store.path, f"index was built with {store.model!r}; the query encoder is "
                                         f"{encoder.source or encoder.name!r}")
        return encoder
    import terravl.models as m

    return m.load(store.model)


def search(index: str | Path | IndexStore, text: str | None = None, image=None, k: int = 10,
           bbox: str | tuple[float, float, float, float] | None = None, date_from: str | None = None,
           date_to: str | None = None, encoder=None, approximate: bool | None = None) -> list[SearchHit]:
    """Top-``k`` tiles for a text or an example image, best first, each a :class:`~terravl.results.SearchHit`
    (id, source path, window, footprint, CRS, acquisition date, score).

    Exact search below :data:`ANN_THRESHOLD` vectors or when filters are given; FAISS IVF above (``approximate``
    forces either). An index given by path is opened and closed here; an open :class:`IndexStore` stays open."""
    if (text is None) == (image is None):
        raise InputError("query", "give exactly one of a text or an image")
    if text is not None:
        text = check_text(text, "query")
    k = check_k(k)
    bbox = check_bbox(bbox)
    date_from, date_to = check_date_range(date_from, date_to)
    if isinstance(index, IndexStore):
        return _search(index, text, image, k, bbox, date_from, date_to, encoder, approximate)
    with IndexStore(index) as store:
        return _search(store, text, image, k, bbox, date_from, date_to, encoder, approximate)


def _search(store: IndexStore, text, image, k, bbox, date_from, date_to, encoder, approximate) -> list[SearchHit]:
    encoder = _encoder_for(store, encoder)
    query = encoder.encode_texts([text])[0] if text is not None else encoder.encode_images([image])[0]
    ids, vectors = store.vectors()
    allowed = store.filter_ids(bbox, date_from, date_to)
    if allowed is not None:
        mask = np.isin(ids, allowed)
        ids, vectors = ids[mask], vectors[mask]
        use_ann = False
    else:
        use_ann = approximate if approximate is not None else len(ids) >= ANN_THRESHOLD
    if use_ann:
        ann = IVFIndex.cached(store.path, store.version, vectors, ids, persist=not store.readonly)
        pos, scores = ann.search(query, k)
        hit_ids = ann.ids[pos]
    else:
        pos, scores = exact_search(vectors, query, k)
        hit_ids = ids[pos]
    rows = store.rows(hit_ids)
    return [SearchHit(**rows[int(i)].to_dict(), score=float(s)) for i, s in zip(hit_ids, scores)]


def search_captions(image, captions: list[str], encoder, k: int = 5) -> list[CaptionMatch]:
    """The ``k`` captions of a collection that best describe ``image`` (image → text retrieval)."""
    k = check_k(k)
    image_emb = encoder.encode_images([image])[0]
    text_emb = encoder.encode_texts(captions)
    pos, scores = exact_search(text_emb, image_emb, k)
    return [CaptionMatch(caption=captions[int(p)], score=float(s), rank=r + 1)
            for r, (p, s) in enumerate(zip(pos, scores))]
