"""Image features of a fixed list of files, computed once and cached on disk: what training a bridge on a frozen
encoder and building a retrieval caption bank both need. The cache key covers the encoder (its ``source`` and
caption-memory switch), a fingerprint of its weights (so retrained weights under the same name never reuse stale
features), the augmentation view and the exact list of paths, so a change to any of them recomputes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

VIEWS = ("identity", "hflip", "vflip", "rot180")


def image_features(encoder, paths: list[Path], view: str, cache_dir: Path | None = None,
                   progress: bool | None = True) -> tuple[np.ndarray, list[int], list[dict]]:
    """(features, kept row indices, failures) of ``paths`` under one view (``VIEWS``). Unreadable files are left
    out and reported, never fatal; ``cache_dir=None`` computes without caching."""
    from PIL import ImageOps

    from terravl.models.images import to_pil

    key = hashlib.sha256(f"{encoder.source}|{weights_fingerprint(encoder)}|{view}|"
                         f"{getattr(encoder, 'use_memory', '')}|".encode()
                         + "\n".join(map(str, paths)).encode()).hexdigest()[:16]
    cache = cache_dir / f"features_{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        saved = np.load(cache, allow_pickle=False)
        return saved["features"], saved["kept"].tolist(), json.loads(str(saved["failed"]))
    if view == "identity":
        items = list(paths)
    else:
        transform = {"hflip": ImageOps.mirror, "vflip": ImageOps.flip, "rot180": lambda im: im.rotate(180)}[view]
        items = [_Lazy(p, transform, to_pil) for p in paths]
    encoded = encoder.encode_batch(items, batch_size=64, progress=progress)
    feats, kept = encoded.vectors, list(encoded.kept)
    failed = [{"index": p.index, "path": p.path, "error": p.error} for p in encoded.problems]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, features=feats, kept=np.array(kept, dtype=np.int64), failed=json.dumps(failed))
        tmp.replace(cache)
    return feats, kept, failed


def weights_fingerprint(encoder) -> str:
    """sha256 (16 hex digits) over the encoder's parameters and buffers; empty when it has no torch model."""
    import torch

    model = getattr(encoder, "model", None)
    if not isinstance(model, torch.nn.Module):
        return ""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def encoder_fingerprint(encoder) -> str:
    """:func:`weights_fingerprint`, computed once per encoder object ('' for one that cannot be fingerprinted,
    which is then simply not checked): indexes and knowledge bases record it to refuse other weights later. A
    wrapper (the server's per-request text cache) answers for the encoder it wraps, so the hash is made once."""
    encoder = getattr(encoder, "wrapped", encoder)
    cached = getattr(encoder, "_terravl_weights_fingerprint", None)
    if cached is None:
        try:
            cached = weights_fingerprint(encoder)
        except Exception:  # noqa: BLE001 - a model that cannot be fingerprinted is simply not checked
            cached = ""
        try:
            encoder._terravl_weights_fingerprint = cached
        except AttributeError:
            pass
    return cached


class _Lazy:
    """An image decoded and transformed in the encoder's worker threads (keeps memory flat)."""

    def __init__(self, path, transform, loader):
        self.path, self.transform, self.loader = path, transform, loader

    def __call__(self):
        return self.transform(self.loader(self.path))

    def __str__(self) -> str:
        return str(self.path)
