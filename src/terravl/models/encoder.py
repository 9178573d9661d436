"""The dual-encoder interface every task uses, and the batch pipeline behind ``encode_images``.

Decoding and preprocessing run in worker threads (Pillow and torchvision release the GIL) ahead of the forward
pass, so on a 2-core machine the model rarely waits for input. Embeddings come back as L2-normalised float32
numpy arrays.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from terravl.errors import InputError
from terravl.models.images import ImageInput, describe, to_pil
from terravl.models.progress import progress_bar
from terravl.results import Problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedImages:
    """What one lenient encoding call returns: the vectors of the inputs that could be read (row ``i`` is input
    ``kept[i]``) and a :class:`~terravl.results.Problem` for each input that could not (with its ``index``).
    Nothing is kept on the encoder, so one encoder serves many threads at once."""

    vectors: np.ndarray
    kept: list[int]
    problems: list[Problem] = field(default_factory=list)


class Encoder:
    """A CLIP-style dual encoder. Subclasses implement ``_forward_images``/``_forward_texts`` and set
    ``preprocess`` (PIL → CHW float tensor) and ``tokenize`` (list of str → model input)."""

    name: str = "encoder"
    embed_dim: int = 0
    source: str | None = None
    """What :func:`terravl.models.load` was given (a registry name or an absolute path): enough to load it again."""

    def __init__(self, device: str | torch.device | None = None, precision: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = precision or ("fp16" if self.device.type == "cuda" else "fp32")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {self.precision!r}")
        self.preprocess: Callable = lambda img: img

    # -- to implement --------------------------------------------------------------------------------
    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _forward_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        """The model's learned similarity scale (1 / temperature): zero-shot probabilities are a softmax of
        ``logit_scale × cosine``. 100 (CLIP's value) when the model does not carry one."""
        scale = getattr(getattr(self, "model", None), "logit_scale", None)
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            return float(scale.detach().float().exp().clamp(max=100))
        return 100.0

    # -- public -------------------------------------------------------------------------------------
    def encode_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, D) L2-normalised float32 embeddings of ``texts``."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        out = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), batch_size):
                out.append(_normalise(self._forward_texts(texts[start:start + batch_size])))
        return torch.cat(out).numpy()

    def encode_images(self, images: ImageInput | Iterable[ImageInput], batch_size: int = 32,
                      workers: int | None = None, progress: bool | None = None, views: int = 1) -> np.ndarray:
        """(N, D) L2-normalised float32 embeddings of ``images`` (paths, PIL images, arrays, tiles); the first
        unreadable input raises its typed error. :meth:`encode_batch` skips bad inputs instead.

        ``progress`` shows a bar on stderr (default: for more than 256 images on a terminal). ``views`` > 1
        averages the embeddings of that many flips and 90° rotations of each image (test-time augmentation, see
        :data:`DIHEDRAL_VIEWS`): overhead imagery has no "up", so the average is steadier than any single view,
        at ``views`` times the cost.
        """
        return self._encode(images, batch_size, workers, progress, views, strict=True).vectors

    def encode_batch(self, images: ImageInput | Iterable[ImageInput], batch_size: int = 32,
                     workers: int | None = None, progress: bool | None = None, views: int = 1) -> EncodedImages:
        """Like :meth:`encode_images`, but an unreadable input becomes a :class:`~terravl.results.Problem` and the
        rest go on: the result says which inputs each row belongs to. A pure call (safe from many threads)."""
        return self._encode(images, batch_size, workers, progress, views, strict=False)

    def _encode(self, images, batch_size: int, workers: int | None, progress: bool | None, views: int,
                strict: bool) -> EncodedImages:
        if views not in DIHEDRAL_VIEWS:
            raise ValueError(f"views must be one of {sorted(DIHEDRAL_VIEWS)}, got {views!r}")
        items = [images] if not isinstance(images, (list, tuple)) and not _is_iterable(images) else list(images)
        done = EncodedImages(np.zeros((0, self.embed_dim), dtype=np.float32), [], [])
        if not items:
            return done
        workers = workers or max(1, min(4, (os.cpu_count() or 2) - 1))
        bar = progress_bar(len(items), progress, "encoding")
        out: list[torch.Tensor] = []
        try:
            # one input (a query, a request's image) decodes inline: a thread of its own would only add a start-up
            pool = ThreadPoolExecutor(workers, thread_name_prefix="terravl-decode") if len(items) > 1 else _Inline()
            with pool, torch.inference_mode(), self._autocast():
                for pixels in self._batches(items, batch_size, pool, done, strict):
                    if pixels is not None:
                        out.append(self._embed(pixels.to(self.device), views))
                        bar.update(pixels.shape[0])
        finally:
            bar.close()
        vectors = torch.cat(out).numpy() if out else done.vectors
        return EncodedImages(vectors, done.kept, done.problems)

    def _embed(self, pixels: torch.Tensor, views: int) -> torch.Tensor:
        if views == 1:
            return _normalise(self._forward_images(pixels))
        mean = sum(_normalise(self._forward_images(view(pixels))) for view in DIHEDRAL_VIEWS[views]) / views
        return _normalise(mean)

    def prepare(self, item: ImageInput) -> torch.Tensor:
        """One image as the model's input tensor (decoded, resized, normalised): the CPU work before the forward
        pass, which a caller may do in its own thread ahead of :meth:`encode_prepared`."""
        return self.preprocess(to_pil(item))

    def encode_prepared(self, pixels: list[torch.Tensor]) -> np.ndarray:
        """(N, D) L2-normalised float32 embeddings of images already made model input by :meth:`prepare`: the
        index build prepares tiles in its reading thread, so the forward pass never waits for them."""
        with torch.inference_mode(), self._autocast():
            return self._embed(torch.stack(pixels).to(self.device), 1).cpu().numpy()

    # -- pipeline -------------------------------------------------------------------------------------
    def _load_one(self, item: ImageInput):
        try:
            return self.prepare(item)
        except (InputError, ValueError, TypeError, OSError) as exc:
            return exc

    def _batches(self, items: list, batch_size: int, pool: "ThreadPoolExecutor | _Inline", done: EncodedImages, strict: bool):
        """Yield stacked pixel batches in order while the next two batches decode in the pool; record in ``done``
        (this call's own record) which inputs were kept and which failed."""
        starts = range(0, len(items), batch_size)
        pending: deque = deque()
        todo = iter(starts)

        def submit(start: int) -> None:
            pending.append((start, [pool.submit(self._load_one, item) for item in items[start:start + batch_size]]))

        for start in todo:
            submit(start)
            if len(pending) >= 3:
                break
        while pending:
            start, futures = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                submit(nxt)
            tensors = []
            for offset, future in enumerate(futures):
                result = future.result()
                index = start + offset
                if isinstance(result, Exception):
                    if strict:
                        for _, rest in pending:
                            for f in rest:
                                f.cancel()
                        raise result
                    done.problems.append(Problem.of(describe(items[index], index), result, index))
                    continue
                done.kept.append(index)
                tensors.append(result)
            yield torch.stack(tensors) if tensors else None

    def _autocast(self):
        if self.device.type == "cuda" and self.precision in ("fp16", "bf16"):
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.embed_dim}, device={self.device})"


class _Inline:
    """The executor interface, running each call at once in the caller's thread (for a single input)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future, as a pool would
            future.set_exception(exc)
        return future

    def __enter__(self) -> "_Inline":
        return self

    def __exit__(self, *exc) -> None:
        return None


def _rot(k: int, flip: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def view(pixels: torch.Tensor) -> torch.Tensor:
        out = torch.rot90(pixels, k, dims=(-2, -1)) if k else pixels
        return out.flip(-1) if flip else out
    return view


DIHEDRAL_VIEWS: dict[int, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    1: (_rot(0, False),),
    2: (_rot(0, False), _rot(0, True)),
    4: tuple(_rot(k, False) for k in range(4)),
    8: tuple(_rot(k, f) for k in range(4) for f in (False, True)),
}
"""Test-time views of a (…, H, W) pixel batch: 2 = identity and mirror, 4 = the four 90° rotations, 8 = all
eight flips and rotations (the dihedral group the training augmentations draw from). Not to be confused with
``feature_cache.VIEWS``: named PIL transforms of a training image, whose features a captioner is trained on."""


def _normalise(features: torch.Tensor) -> torch.Tensor:
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu()


def _is_iterable(obj) -> bool:
    if isinstance(obj, (str, bytes, np.ndarray)) or hasattr(obj, "array"):
        return False
    from PIL import Image

    if isinstance(obj, Image.Image):
        return False
    try:
        iter(obj)
        return True
    except TypeError:
        return False
