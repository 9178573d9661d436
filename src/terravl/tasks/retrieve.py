"""Search an index by text or by example image, with bounding-box and date filters; and image → caption search
over a caption collection. Every hit of a georeferenced raster carries its footprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from terravl.index.store import IndexStore
from terravl.index.vectors import ANN_THRESHOLD, IVFIndex, exact_search


def _encoder_for(store: IndexStore, encoder=None):
    if encoder is not None:
        if (encoder.source or encoder.name) != store.model:
            from terravl.errors import InputError

            raise InputError(store.path, f"index was built with {store.model!r}; the query encoder is "
                                         f"{encoder.source or encoder.name!r}")
        return encoder
    import terravl.models as m

    return m.load(store.model)


def search(index: str | Path | IndexStore, text: str | None = None, image=None, k: int = 10,
           bbox: tuple[float, float, float, float] | None = None, date_from: str | None = None,
           date_to: str | None = None, encoder=None, approximate: bool | None = None) -> list[dict]:
    """Top-``k`` tiles for a text or an example image: ``[{id, path, score, window, footprint, crs, acquired}]``.

    Exact search below :data:`ANN_THRESHOLD` vectors or when filters are given; FAISS IVF above (``approximate``
    forces either)."""
    from terravl.errors import InputError

    if (text is None) == (image is None):
        raise InputError("query", "give exactly one of a text or an image")
    store = index if isinstance(index, IndexStore) else IndexStore(index)
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
        ann = IVFIndex.load(store.path, store.version)
        if ann is None:
            ann = IVFIndex.build(vectors, ids)
            ann.save(store.path, store.version)
        pos, scores = ann.search(query, k)
        hit_ids = ann.ids[pos]
    else:
        pos, scores = exact_search(vectors, query, k)
        hit_ids = ids[pos]
    rows = store.rows(hit_ids)
    return [{**rows[int(i)].to_dict(), "score": float(s)} for i, s in zip(hit_ids, scores)]


def search_captions(image, captions: list[str], encoder, k: int = 5) -> list[dict]:
    """The ``k`` captions of a collection that best describe ``image`` (image → text retrieval)."""
    image_emb = encoder.encode_images([image])[0]
    text_emb = encoder.encode_texts(captions)
    pos, scores = exact_search(text_emb, image_emb, k)
    return [{"caption": captions[int(p)], "score": float(s), "rank": r + 1} for r, (p, s) in enumerate(zip(pos, scores))]
