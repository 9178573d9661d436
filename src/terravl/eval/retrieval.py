"""Cross-modal retrieval metrics with the remote-sensing protocol (RSICD, RSITMD, UCM-Captions).

Every image has its captions (5 in these sets). Image→text R@K counts an image as a hit if any of its captions is
ranked in the top K; text→image R@K counts a caption as a hit if its own image is in the top K. mR is the mean of
the six recalls. Values are percentages, as the papers print them.
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def retrieval_metrics(similarity: np.ndarray, caption_image: np.ndarray, ks: tuple[int, ...] = KS,
                      by_text: np.ndarray | None = None) -> dict[str, float]:
    """``similarity`` is (n_images, n_captions); ``caption_image[j]`` is the image index of caption j. Text→image
    ranks come from ``by_text`` (same shape) when given: a second stage that ranks each direction on its own
    (:mod:`terravl.tasks.rerank`) gives two matrices.

    Ranks are taken with a stable descending sort, so ties resolve in index order, as ``np.argsort(-s)`` does in
    the published evaluation code.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    by_text = similarity if by_text is None else np.asarray(by_text, dtype=np.float64)
    if by_text.shape != similarity.shape:
        raise ValueError(f"by_text must have the shape of similarity {similarity.shape}, got {by_text.shape}")
    caption_image = np.asarray(caption_image)
    n_img, n_cap = similarity.shape
    if caption_image.shape != (n_cap,):
        raise ValueError(f"caption_image must have one entry per caption ({n_cap}), got {caption_image.shape}")
    if caption_image.min(initial=0) < 0 or caption_image.max(initial=0) >= n_img:
        raise ValueError("caption_image holds an image index outside the similarity matrix")
    # image → text: best rank among the image's own captions
    order = np.argsort(-similarity, axis=1, kind="stable")
    rank_of = np.empty_like(order)
    rank_of[np.arange(n_img)[:, None], order] = np.arange(n_cap)[None, :]
    own = caption_image[None, :] == np.arange(n_img)[:, None]
    best_i2t = np.where(own, rank_of, n_cap).min(axis=1)
    # text → image: rank of the caption's own image
    order_t = np.argsort(-by_text.T, axis=1, kind="stable")
    rank_t = np.argmax(order_t == caption_image[:, None], axis=1)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = 100.0 * float(np.mean(best_i2t < k))
    for k in ks:
        out[f"t2i_R@{k}"] = 100.0 * float(np.mean(rank_t < k))
    out["mR"] = float(np.mean([out[f"i2t_R@{k}"] for k in ks] + [out[f"t2i_R@{k}"] for k in ks]))
    return out
