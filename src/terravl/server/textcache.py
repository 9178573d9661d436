"""A bounded LRU cache of text embeddings, so zero-shot label lists (a built-in class list, or the same custom
labels sent again) are encoded once per model instead of on every request: 200 labels × 8 prompt templates is
1,600 text-tower passes, the bulk of a classify request's cost."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np


class TextCache:
    """``(model, texts) → (N, D) embeddings``, least recently used first out, bounded by the total rows kept."""

    def __init__(self, max_rows: int = 32_768):
        self.max_rows = int(max_rows)
        self._entries: OrderedDict[tuple[str, tuple[str, ...]], np.ndarray] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, model: str, texts: Sequence[str], compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached embeddings of ``texts`` under ``model``, computing (outside the lock) on a miss."""
        key = (model, tuple(texts))
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        value = np.array(compute(), copy=True)
        value.setflags(write=False)  # shared between requests: nobody may change it in place
        if len(value) > self.max_rows:
            return value
        with self._lock:
            if key not in self._entries:
                self._entries[key] = value
                self._rows += len(value)
            while self._rows > self.max_rows:
                _, old = self._entries.popitem(last=False)
                self._rows -= len(old)
        return value


class CachedTextEncoder:
    """An encoder whose ``encode_texts`` goes through a :class:`TextCache`; everything else is the wrapped
    encoder's (image encoding, ``logit_scale``, names), so a task cannot tell the difference."""

    def __init__(self, encoder: Any, cache: TextCache, model: str):
        self._encoder, self._cache, self._model = encoder, cache, model

    @property
    def wrapped(self) -> Any:
        """The encoder itself (what per-model facts, such as its weights fingerprint, are cached on)."""
        return self._encoder

    def encode_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._cache.get(self._model, texts, lambda: self._encoder.encode_texts(texts, batch_size=batch_size))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)
