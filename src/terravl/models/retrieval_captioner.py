"""The retrieval captioning baseline: the caption of the nearest training image by encoder similarity.

Cheap and strong in remote sensing, where captions of one scene type are much alike. Among the nearest image's
captions (or those of the ``k`` nearest) the consensus caption is chosen: the one that shares the most words and
word pairs with the others, weighted by each neighbour's similarity (Devlin et al., 2015). It has the same
``generate(features, prompts)`` interface as :class:`~terravl.models.bridge.Captioner`, for captions only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from terravl.errors import InputError
from terravl.models.bridge import CAPTION_PROMPT
from terravl.models.feature_cache import image_features


def _grams(text: str) -> set:
    words = text.lower().replace(".", " ").replace(",", " ").split()
    return set(words) | set(zip(words, words[1:]))


class RetrievalCaptioner:
    """Nearest-neighbour captions from a bank of (image embedding, captions)."""

    def __init__(self, encoder, features: np.ndarray, captions: list[list[str]], k: int = 1, name: str = "retrieval"):
        if len(features) != len(captions) or not len(features):
            raise InputError("caption bank", "needs one list of captions per bank image, and at least one image")
        self._encoder, self.features, self.captions, self.k = encoder, np.asarray(features, np.float32), captions, k
        self.name = name
        self.settings = {"method": "retrieval", "k": k, "bank_images": len(captions)}

    @property
    def encoder(self):
        return self._encoder

    @classmethod
    def from_dataset(cls, encoder, dataset: str | Path, split: str = "train", k: int = 1,
                     cache_dir: Path | None = None) -> "RetrievalCaptioner":
        """A bank from the ``split`` images of a caption dataset (never the split being scored)."""
        from terravl.datasets import open_dataset
        from terravl.datasets.records import CaptionRecord

        records = [r for r in open_dataset(dataset) if isinstance(r, CaptionRecord) and r.split == split and r.path
                   and r.captions]
        if not records:
            raise InputError(dataset, f"no captioned images with files in split {split!r} for the caption bank")
        features, kept, _ = image_features(encoder, [r.path for r in records], "identity", cache_dir, progress=None)
        records = [records[i] for i in kept]  # unreadable bank images drop out with their captions
        return cls(encoder, features, [list(r.captions) for r in records], k, name=f"retrieval (k={k})")

    def generate(self, features, prompts=CAPTION_PROMPT, **_: object) -> list[str]:
        if not (prompts == CAPTION_PROMPT or (not isinstance(prompts, str) and set(prompts) <= {CAPTION_PROMPT})):
            raise InputError("method", "the retrieval baseline only captions; it cannot answer questions")
        features = np.asarray(features, np.float32)
        sims = features @ self.features.T
        k = min(self.k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return [self._consensus([(float(sims[row, j]), c) for j in top[row] for c in self.captions[j]])
                for row in range(len(features))]

    @staticmethod
    def _consensus(candidates: list[tuple[float, str]]) -> str:
        grams = [_grams(c) for _, c in candidates]
        best, best_score = candidates[0][1], -1.0
        for i, (_, text) in enumerate(candidates):
            score = 0.0
            for j, (weight, _) in enumerate(candidates):
                if i != j and grams[i] and grams[j]:
                    shared = len(grams[i] & grams[j])
                    score += weight * 2 * shared / (len(grams[i]) + len(grams[j]))
            if score > best_score:
                best, best_score = text, score
        return best
