"""Per-tile change detection methods: the trained detector and two baselines, behind one small interface.

A scene is processed tile by tile (each tile with ``context`` pixels of overlap), so every method splits its work
in three steps that a tiled caller can run without holding the scene in memory:

1. :meth:`ChangeMethod.scores` — a raw per-pixel change score of one tile (higher = more change, NaN where either
   date is invalid); pure, safe from many threads.
2. :meth:`ChangeMethod.threshold` — one global threshold from a histogram of all tiles' scores over the fixed
   ``score_range`` (:data:`HIST_BINS` bins; :func:`score_histogram` builds it): Otsu for the baselines, 0.5 for the
   trained detector, whose score already is a probability.
3. :meth:`ChangeMethod.probability` — scores → change probability with ``score == threshold`` ↦ 0.5, so the
   change mask is always ``probability > 0.5`` whatever the method.

:func:`detect_arrays` runs the three steps on one in-memory pair (the histogram over that pair only), which is what
the LEVIR-CD evaluation (:mod:`terravl.eval.change_detection`) calls.

The baselines:

* ``cva`` — change vector analysis on radiometrically normalised pixels (:class:`CVAMethod`).
* ``embedding`` — cosine distance of the dual encoder's embeddings of sliding windows (:class:`EmbeddingMethod`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from terravl.errors import InputError

METHODS = ("trained", "cva", "embedding")
HIST_BINS = 256
"""Bins of the score histogram over ``score_range``; Otsu's threshold is a bin centre, so this is its resolution."""


@runtime_checkable
class ChangeMethod(Protocol):
    """What the scene task needs from a change method (see the module docstring for the three steps)."""

    name: str
    context: int
    """Pixels of overlap the caller should give each tile on every side (scores near a tile's edge need them)."""
    tile_size: int
    """Preferred tile size (without context)."""
    score_range: tuple[float, float]
    """Fixed range of :meth:`scores` (values outside are clipped into it when histogrammed)."""

    def scores(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 each on one grid + (H, W) bool (both dates valid) → (H, W) float32 raw change score,
        higher = more change; invalid pixels get NaN. Stateless (threads)."""
        ...

    def threshold(self, hist: np.ndarray, edges: np.ndarray) -> float:
        """Global threshold from a histogram of scores over the whole scene (bins over ``score_range``)."""
        ...

    def probability(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        """Scores → change probability in [0, 1], with ``score == threshold`` ↦ 0.5 (NaN stays NaN)."""
        ...


# -- shared helpers ----------------------------------------------------------------------------------------------

def score_histogram(scores: np.ndarray, score_range: tuple[float, float], bins: int = HIST_BINS,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(counts int64, edges float64) of the finite ``scores`` over ``score_range``; values outside the range are
    counted in the first or last bin, so a tiled caller can simply add the counts of its tiles."""
    lo, hi = score_range
    finite = scores[np.isfinite(scores)]
    counts, edges = np.histogram(np.clip(finite, lo, hi), bins=bins, range=(lo, hi))
    return counts.astype(np.int64), edges


def otsu_threshold(hist: np.ndarray, edges: np.ndarray, floor: float = -np.inf) -> float:
    """Otsu's threshold (scikit-image) of a histogram, never below ``floor``.

    Otsu always splits a histogram in two, so a pair with no change at all would see its noise flagged: the floor is
    the smallest score that can count as change whatever the histogram says. A histogram with fewer than two
    occupied bins (no pixel, or all alike) has nothing to split: the answer is the top of the range (no change)."""
    from skimage.filters import threshold_otsu

    hist = np.asarray(hist, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if hist.ndim != 1 or edges.shape != (hist.size + 1,):
        raise ValueError(f"a histogram needs len(edges) == len(hist) + 1; got {hist.shape} and {edges.shape}")
    if np.count_nonzero(hist) < 2:
        return float(max(edges[-1], floor))
    centres = (edges[:-1] + edges[1:]) / 2
    return float(max(threshold_otsu(hist=(hist, centres)), floor))


def piecewise_probability(scores: np.ndarray, threshold: float, score_range: tuple[float, float]) -> np.ndarray:
    """Linear from the bottom of ``score_range`` (0) to ``threshold`` (0.5) and on to the top (1): monotone, with the
    threshold exactly at 0.5, and readable (a probability of 0.75 is halfway between the threshold and the top)."""
    lo, hi = score_range
    s = np.clip(np.asarray(scores, dtype=np.float32), lo, hi)
    t = float(np.clip(threshold, lo, hi))
    below = 0.5 * (s - lo) / (t - lo) if t > lo else np.full_like(s, 0.5)
    above = 0.5 + 0.5 * (s - t) / (hi - t) if t < hi else np.full_like(s, 0.5)
    out = np.where(s <= t, below, above).astype(np.float32)
    return np.where(np.isnan(s), np.float32(np.nan), out).astype(np.float32)


def _check_pair(before: np.ndarray, after: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray,
                                                                                           np.ndarray]:
    """Both dates as (H, W, 3) uint8 on one grid and the (H, W) bool mask of pixels valid in both; grey (H, W)
    images are repeated to three bands."""
    arrays = []
    for field, image in (("before", before), ("after", after)):
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise InputError(field, f"expected an (H, W, 3) image, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise InputError(field, f"expected uint8 pixels (stretch other types with terravl.io), got {image.dtype}")
        arrays.append(image[..., :3])
    before, after = arrays
    if before.shape != after.shape:
        raise InputError("after", f"shape {after.shape[:2]} differs from the before image's {before.shape[:2]}; put "
                                  "both dates on one grid first")
    if before.shape[0] == 0 or before.shape[1] == 0:
        raise InputError("before", "empty image")
    if valid is None:
        valid = np.ones(before.shape[:2], dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != before.shape[:2]:
        raise InputError("valid", f"shape {valid.shape} differs from the images' {before.shape[:2]}")
    return before, after, valid


MIN_SCALE = 2.0
"""Smallest spread (digital numbers) a band is standardised by: a flat band (water, cloud) is not blown up."""


def robust_stats(band: np.ndarray, valid: np.ndarray, min_scale: float = MIN_SCALE) -> tuple[float, float]:
    """(centre, scale) of one band over the valid pixels: the median and the interquartile range / 1.349 (the
    standard deviation of a normal distribution), so a change covering a good part of the tile hardly moves them;
    the standard deviation when the quartiles coincide (a near-flat band), and never under ``min_scale``."""
    values = band[valid].astype(np.float32)
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    scale = (q75 - q25) / 1.349
    if scale < min_scale:
        scale = max(float(values.std()), min_scale)
    return float(median), float(scale)


def match_radiometry(before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``after`` (uint8) with each band's robust centre and spread moved to ``before``'s over the pixels valid in
    both: a global brightness, contrast or colour-balance change between the dates disappears."""
    out = np.empty_like(after)
    for band in range(after.shape[-1]):
        b_centre, b_scale = robust_stats(before[..., band], valid)
        a_centre, a_scale = robust_stats(after[..., band], valid)
        mapped = (after[..., band].astype(np.float32) - a_centre) * (b_scale / a_scale) + b_centre
        out[..., band] = np.clip(np.rint(mapped), 0, 255).astype(np.uint8)
    return out


def _same_where_invalid(before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``after`` with ``before``'s pixels where either date is invalid: nodata then looks unchanged to a method
    that reads neighbourhoods (a window, a receptive field), instead of a fake edge of change."""
    if valid.all():
        return after
    return np.where(valid[..., None], after, before)


# -- trained ------------------------------------------------------------------------------------------------------

class TrainedMethod:
    """The trained siamese detector (:mod:`terravl.models.change_detector`): its output already is a probability,
    so the threshold is a fixed 0.5 and :meth:`probability` is the identity."""

    name = "trained"
    score_range = (0.0, 1.0)

    def __init__(self, detector):
        self.detector = detector
        self.tile_size = int(getattr(detector, "tile_size", 256))
        self.context = int(getattr(detector, "context", 32))

    def scores(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        before, after, valid = _check_pair(before, after, valid)
        prob = np.asarray(self.detector.predict(before, _same_where_invalid(before, after, valid)), dtype=np.float32)
        return np.where(valid, prob, np.float32(np.nan)).astype(np.float32)

    def threshold(self, hist: np.ndarray, edges: np.ndarray) -> float:
        return 0.5

    def probability(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        return np.asarray(scores, dtype=np.float32)


# -- change vector analysis ---------------------------------------------------------------------------------------

class CVAMethod:
    """Change vector analysis (Malila 1980) on radiometrically normalised pixels.

    Per tile (with its context), each band of each date is standardised over the pixels valid in both dates with a
    robust centre and scale (median, and the interquartile range / 1.349 — a change covering a good part of the
    tile shifts the mean and the standard deviation, hardly the median and the quartiles). Matching the two dates'
    statistics removes a global brightness, contrast or colour-balance change (illumination, sensor, season's
    overall tone), which is not change. The standardised difference is then smoothed with a Gaussian of ``sigma``
    pixels (normalised convolution over valid pixels) to damp noise, JPEG blocks and a pixel or so of mis-registration. The score is
    the root-mean-square over bands of the standardised difference, divided by ``max_magnitude`` and clipped to
    [0, 1]: 0 = identical after normalisation, 1 = ``max_magnitude`` standard deviations or more.

    The threshold is Otsu's on the scene's histogram, never below ``min_threshold`` (a no-change scene has only
    noise to split). Tiles are standardised on their own, so a scene whose illumination varies across it is
    normalised locally; ``context`` gives the statistics and the blur room beyond the tile's edge.

    Defaults chosen on synthetic pairs, never on LEVIR-CD: 40 UCM train scenes with 1–3 rectangles of other scenes
    pasted (20 % without change) and per-band gain/offset/gamma jitter, ≤ 1 px shift and noise between the dates.
    Pooled F1 there: σ 0 / 1 / 1.5 / 2 / 2.5 → 0.50 / 0.63 / 0.68 / 0.68 / 0.69 (floor 0.15); floor 0 / 0.1 / 0.15 /
    0.2 / 0.25 → 0.39 / 0.68 / 0.68 / 0.67 / 0.64 (σ 2): without the floor Otsu splits the noise of unchanged pairs.
    """

    name = "cva"
    score_range = (0.0, 1.0)

    def __init__(self, sigma: float = 2.0, max_magnitude: float = 4.0, min_threshold: float = 0.15,
                 tile_size: int = 512, context: int = 32, min_scale: float = MIN_SCALE):
        self.sigma = float(sigma)
        self.max_magnitude = float(max_magnitude)
        self.min_threshold = float(min_threshold)
        self.tile_size = int(tile_size)
        self.context = int(context)
        self.min_scale = float(min_scale)

    def scores(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        before, after, valid = _check_pair(before, after, valid)
        if not valid.any():
            return np.full(valid.shape, np.nan, dtype=np.float32)
        weight = valid.astype(np.float32)
        smooth_weight = self._blur(weight)
        total = np.zeros(valid.shape, dtype=np.float32)
        for band in range(before.shape[-1]):
            z = [self._standardise(image[..., band].astype(np.float32), valid) for image in (before, after)]
            diff = z[1] - z[0]
            if self.sigma > 0:
                diff = self._blur(np.where(valid, diff, 0).astype(np.float32)) / np.maximum(smooth_weight, 1e-6)
            total += diff * diff
        magnitude = np.sqrt(total / before.shape[-1])
        score = np.clip(magnitude / self.max_magnitude, 0.0, 1.0).astype(np.float32)
        return np.where(valid, score, np.float32(np.nan)).astype(np.float32)

    def _standardise(self, band: np.ndarray, valid: np.ndarray) -> np.ndarray:
        centre, scale = robust_stats(band, valid, self.min_scale)
        return (band - np.float32(centre)) / np.float32(scale)

    def _blur(self, data: np.ndarray) -> np.ndarray:
        if self.sigma <= 0:
            return data
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(data, self.sigma, mode="nearest")

    def threshold(self, hist: np.ndarray, edges: np.ndarray) -> float:
        return otsu_threshold(hist, edges, self.min_threshold)

    def probability(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        return piecewise_probability(scores, threshold, self.score_range)


# -- embedding distance -------------------------------------------------------------------------------------------

class EmbeddingMethod:
    """Embedding distance of sliding windows: the dual encoder embeds ``window``-pixel squares every ``stride``
    pixels on both dates; a window's change is the cosine distance ``1 − cos`` of its two embeddings (clipped to
    [0, 1]) and a pixel's score is the mean over the windows that cover it. It sees change of *content* (a field
    became houses) and ignores what the encoder is invariant to (colour balance, small shifts), at the cost of
    coarse edges (about a window). All windows of a tile go through the encoder in one batched call.

    With ``normalise`` the after image's bands are first matched to the before image's (robust centre and spread over
    the pixels valid in both, :func:`match_radiometry`): the encoder is not blind to colour, and a global change of
    illumination would otherwise raise every window's distance alike.

    Pixels invalid in either date are filled with the before image in both (so they look unchanged) and get NaN;
    windows without a valid pixel are not encoded. Threshold: Otsu on the scene's histogram, never below
    ``min_threshold``.

    Defaults chosen on the synthetic UCM pairs described under :class:`CVAMethod` (16 of them), never on LEVIR-CD,
    with ``terravl-default``: pooled F1 0.22 without ``normalise`` → 0.40 with it (no floor); window 32 vs 64 px
    (stride 16): 0.46 vs 0.60 (floor 0.15); floor 0 / 0.05 / 0.1 / 0.15 / 0.25 / 0.3 → 0.40 / 0.44 / 0.56 / 0.60 /
    0.61 / 0.61 (the plateau starts at 0.15).
    """

    name = "embedding"
    score_range = (0.0, 1.0)

    def __init__(self, encoder, window: int = 64, stride: int = 16, min_threshold: float = 0.15,
                 tile_size: int = 512, batch_size: int = 128, normalise: bool = True):
        if window < 8 or stride < 1:
            raise InputError("window", f"window must be ≥ 8 and stride ≥ 1 pixels; got {window} and {stride}")
        self.encoder = encoder
        self.window = int(window)
        self.stride = int(stride)
        self.min_threshold = float(min_threshold)
        self.tile_size = int(tile_size)
        self.context = self.window // 2
        self.batch_size = int(batch_size)
        self.normalise = bool(normalise)

    def scores(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        before, after, valid = _check_pair(before, after, valid)
        height, width = valid.shape
        if not valid.any():
            return np.full(valid.shape, np.nan, dtype=np.float32)
        after = _same_where_invalid(before, after, valid)
        if self.normalise:
            after = match_radiometry(before, after, valid)
        size = min(self.window, height, width)
        boxes = [(r, c) for r in _starts(height, size, self.stride) for c in _starts(width, size, self.stride)
                 if valid[r:r + size, c:c + size].any()]
        crops = [image[r:r + size, c:c + size] for image in (before, after) for r, c in boxes]
        vectors = self.encoder.encode_images(crops, batch_size=self.batch_size, progress=False)
        first, second = vectors[:len(boxes)], vectors[len(boxes):]
        distance = np.clip(1.0 - np.sum(first * second, axis=1), 0.0, 1.0)
        total = np.zeros((height, width), dtype=np.float64)
        count = np.zeros((height, width), dtype=np.float64)
        for (r, c), d in zip(boxes, distance):
            total[r:r + size, c:c + size] += d
            count[r:r + size, c:c + size] += 1
        score = np.divide(total, count, out=np.zeros_like(total), where=count > 0).astype(np.float32)
        return np.where(valid, score, np.float32(np.nan)).astype(np.float32)

    def threshold(self, hist: np.ndarray, edges: np.ndarray) -> float:
        return otsu_threshold(hist, edges, self.min_threshold)

    def probability(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        return piecewise_probability(scores, threshold, self.score_range)


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Window offsets every ``stride`` pixels, plus one flush with the end, so every pixel is covered."""
    starts = list(range(0, max(length - size, 0) + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


# -- public ------------------------------------------------------------------------------------------------------

EMBEDDING_MODEL = "terravl-default-v2"
"""The encoder the embedding baseline was calibrated and measured with (README: change detection)."""


def make_method(name: str = "trained", encoder=None, detector=None, **options) -> ChangeMethod:
    """The change method ``name`` (one of :data:`METHODS`).

    ``trained`` uses ``detector`` or loads the shipped one (:func:`terravl.models.change_detector.
    load_change_detector`); ``embedding`` uses ``encoder`` or loads :data:`EMBEDDING_MODEL`; other
    keyword ``options`` go to the method's constructor (e.g. ``sigma`` for ``cva``, ``window`` for ``embedding``)."""
    if name == "trained":
        if detector is None:
            from terravl.models.change_detector import load_change_detector

            detector = load_change_detector()
        return TrainedMethod(detector)
    if name == "cva":
        return CVAMethod(**options)
    if name == "embedding":
        if encoder is None:
            import terravl.models as m

            encoder = m.load(EMBEDDING_MODEL)
        return EmbeddingMethod(encoder, **options)
    raise InputError("method", f"unknown change method {name!r}; choose one of {', '.join(METHODS)}")


def detect_arrays(before: np.ndarray, after: np.ndarray, valid: np.ndarray | None = None,
                  method: str | ChangeMethod = "trained", **kw) -> tuple[np.ndarray, np.ndarray]:
    """One in-memory pair → (change probability float32 (H, W), change mask bool (H, W)).

    The same scores → histogram → threshold → probability path as the tiled scene task, with the histogram over
    this pair only. ``method`` is a name (``kw`` go to :func:`make_method`) or a method already made (reuse it over
    many pairs: loading a model is the slow part). Pixels invalid in either date (``valid`` False) have NaN
    probability and are never in the mask."""
    before, after, valid = _check_pair(before, after, valid)
    chosen = make_method(method, **kw) if isinstance(method, str) else method
    scores = chosen.scores(before, after, valid)
    hist, edges = score_histogram(scores, chosen.score_range)
    threshold = chosen.threshold(hist, edges)
    probability = np.asarray(chosen.probability(scores, threshold), dtype=np.float32)
    probability = np.where(valid, probability, np.float32(np.nan)).astype(np.float32)
    mask = np.nan_to_num(probability, nan=0.0) > 0.5
    return probability, mask
