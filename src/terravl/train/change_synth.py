"""Synthetic before/after pairs from single-date scenes, for training a change detector without change labels.

The single-temporal supervised recipe (Zheng et al., "Change is Everywhere", ICCV 2021), sized for a CPU: a base
scene is cut, regions of it are replaced on one date — by another scene's content, by a building-like roof with
its shadow, or by the scene's own texture from elsewhere (a removal) — and the mask of those regions is the label.
Between the dates every pair gets what must *not* count as change: per-date brightness, contrast, gamma, colour
casts and saturation, soft illumination gradients, blur, noise, JPEG, a 1–3 px mis-registration, and sometimes the
same paste on both dates. LEVIR-CD's changes are mostly new buildings, so small clusters of building-like
rectangles are frequent.

Decoded scenes are kept as one uint8 array (:func:`load_image_cache`), so the CPU spends its time on the network,
not on JPEG decoding.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from terravl.errors import InputError

ROOF_COLOURS = np.array([[0.80, 0.80, 0.78], [0.62, 0.62, 0.62], [0.45, 0.45, 0.47], [0.30, 0.30, 0.32],
                         [0.70, 0.60, 0.50], [0.55, 0.40, 0.32], [0.85, 0.85, 0.88], [0.50, 0.52, 0.58],
                         [0.40, 0.30, 0.25], [0.72, 0.68, 0.60]], np.float32)
"""Typical roof colours (grey, white, tan, brown, dark) in [0, 1] RGB; each roof draws one and jitters it."""


def load_image_cache(paths: Sequence[Path], size: int, cache_file: Path | None = None,
                     log: Callable[[str], None] = print) -> np.ndarray:
    """(N, size, size, 3) uint8: each image decoded once and resized (area filter) to ``size``; stored in
    ``cache_file`` (.npy) when given so a resumed run does not decode again. Unreadable files are an error naming
    them (training data must be complete)."""
    if cache_file is not None and cache_file.is_file():
        cached = np.load(cache_file, mmap_mode=None)
        if cached.shape == (len(paths), size, size, 3):
            return cached
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BOX if im.width > size else Image.BILINEAR)
                out[i] = np.asarray(im)
        except OSError as exc:
            raise InputError(p, f"cannot decode training image: {exc}") from None
        if (i + 1) % 2000 == 0:
            log(f"decoded {i + 1}/{len(paths)} images")
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(cache_file)
    return out


@dataclass
class SynthSettings:
    """How pairs are made (every field is also a training setting of ``terravl train change-detector``)."""

    crop: int = 128                 # pair size
    scale_min: float = 0.75         # base crop side as a fraction of the cached image, before resizing to `crop`
    scale_max: float = 1.0          # (a side below the working size is never used: no upsampling)
    p_no_change: float = 0.1        # pairs with no change at all (only the nuisances)
    max_changes: int = 4            # change operations per pair, 1..max
    p_buildings: float = 0.45       # each operation: a cluster of building-like roofs (else a region, see below)
    p_remove: float = 0.25          # a region refilled with the scene's own texture from elsewhere
    p_after: float = 0.7            # the change appears on the after date (else on the before date: a removal)
    p_same_paste: float = 0.25      # a distractor pasted identically on both dates (not change)
    p_landcover: float = 0.0        # an unlabelled land-cover change (another natural scene's ground) on one date:
    p_whole_scene: float = 0.0      #   sometimes all of it; LEVIR-CD labels new buildings, not cleared land or lawns
    p_large_building: float = 0.0   # a building op is one large roof (commercial) instead of a cluster of houses
    max_shift: int = 2              # mis-registration between dates, pixels
    photometric: float = 1.0        # strength of per-date photometric jitter (0 = none)
    p_jpeg: float = 0.2
    p_blur: float = 0.2
    min_region: int = 10            # smallest region side (pixels of the pair)


class PairSynthesizer:
    """Draws (before, after, mask) from a cache of scenes: uint8 (crop, crop, 3) ×2 and a {0, 1} uint8 mask."""

    def __init__(self, images: np.ndarray, settings: SynthSettings | None = None,
                 weights: np.ndarray | None = None, landcover: np.ndarray | None = None):
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) < 2:
            raise InputError("images", "need at least two (H, W, 3) scenes to synthesise pairs")
        self.images = images
        self.s = settings or SynthSettings()
        self.p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        self.landcover = None if landcover is None or not len(landcover) else np.asarray(landcover)  # donor scenes
        self.margin = self.s.max_shift + 1
        self.size = self.s.crop + 2 * self.margin
        if min(images.shape[1:3]) < self.size:
            raise InputError("crop", f"scenes of {images.shape[2]}x{images.shape[1]} px are smaller than a pair "
                                     f"({self.size} px with the shift margin)")

    # -- scenes -------------------------------------------------------------------------------------------------

    def scene(self, rng: np.random.Generator, index: int | None = None) -> np.ndarray:
        """A random crop of a random (or given) scene, rescaled to the working size, flipped/rotated; float32."""
        if index is None:
            index = int(rng.choice(len(self.images), p=self.p))
        img = self.images[index]
        h, w = img.shape[:2]
        lo = max(self.s.scale_min, self.size / min(h, w))
        side = int(rng.uniform(lo, max(lo, min(1.0, self.s.scale_max))) * min(h, w))
        side = max(side, self.size)
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[y:y + side, x:x + side]
        if side != self.size:
            crop = np.asarray(Image.fromarray(crop).resize((self.size, self.size), Image.BILINEAR))
        crop = np.rot90(crop, int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return crop.astype(np.float32) / 255.0

    # -- regions ------------------------------------------------------------------------------------------------

    def _grid(self):
        n = self.size
        return np.mgrid[0:n, 0:n].astype(np.float32)

    def region(self, rng: np.random.Generator, kind: str) -> np.ndarray:
        """A boolean region of the working size: ``rect``, ``rotated``, ``blob`` or ``buildings``."""
        n, lo = self.size, self.s.min_region
        yy, xx = self._grid()
        cy, cx = rng.uniform(0, n, 2)
        if kind == "large":  # a land-cover patch: a third of the canvas up to all of it
            if rng.random() < 0.5:
                hh, ww = rng.uniform(n * 0.3, n * 1.2, 2)
                return (np.abs(yy - cy) < hh / 2) & (np.abs(xx - cx) < ww / 2)
            return _rotated_rect(yy, xx, cy, cx, *rng.uniform(n * 0.3, n, 2), rng.uniform(0, np.pi))
        if kind == "rect":
            hh, ww = rng.uniform(lo, n * 0.5, 2)
            return (np.abs(yy - cy) < hh / 2) & (np.abs(xx - cx) < ww / 2)
        if kind == "rotated":
            return _rotated_rect(yy, xx, cy, cx, *rng.uniform(lo, n * 0.5, 2), rng.uniform(0, np.pi))
        if kind == "blob":
            out = np.zeros((n, n), bool)
            for _ in range(int(rng.integers(2, 6))):
                ey, ex = cy + rng.normal(0, n * 0.08), cx + rng.normal(0, n * 0.08)
                ry, rx = rng.uniform(lo / 2, n * 0.2, 2)
                out |= ((yy - ey) / ry) ** 2 + ((xx - ex) / rx) ** 2 < 1
            return out
        # buildings: several roofs of one orientation in a neighbourhood (a new block of houses)
        out = np.zeros((n, n), bool)
        angle = rng.choice([0.0, rng.uniform(0, np.pi)])
        if self.s.p_large_building > 0 and rng.random() < self.s.p_large_building:
            return _rotated_rect(yy, xx, cy, cx, *rng.uniform(n * 0.2, n * 0.6, 2), angle)
        spread = rng.uniform(n * 0.1, n * 0.35)
        for _ in range(int(rng.integers(1, 7))):
            by, bx = cy + rng.uniform(-spread, spread), cx + rng.uniform(-spread, spread)
            out |= _rotated_rect(yy, xx, by, bx, *rng.uniform(max(6, lo * 0.7), max(lo + 1, n * 0.22), 2), angle)
        return out

    def fill(self, rng: np.random.Generator, base: np.ndarray, region: np.ndarray, roof: bool) -> np.ndarray:
        """What the region shows on the changed date: a roof with its shadow, another scene, or this scene's own
        texture moved from elsewhere (a removal)."""
        if roof:
            donor = self.scene(rng)
            colour = ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))] * rng.uniform(0.85, 1.15, 3)
            detail = donor - donor.mean(axis=(0, 1))
            content = np.clip(colour + rng.uniform(0.05, 0.4) * detail, 0, 1)
            out = base.copy()
            dy, dx = rng.integers(-4, 5, 2)  # the roof's shadow, outside the roof and not labelled
            shadow = _shift(region, int(dy), int(dx)) & ~region
            out[shadow] *= rng.uniform(0.35, 0.7)
            out[region] = content[region]
            return out
        if rng.random() < self.s.p_remove:
            dy, dx = rng.integers(self.size // 4, self.size - self.size // 4, 2)
            content = np.roll(base, (int(dy), int(dx)), axis=(0, 1))
        else:
            content = self.scene(rng)
            content = content * rng.uniform(0.8, 1.2) + rng.uniform(-0.08, 0.08)
        out = base.copy()
        out[region] = content[region]
        return out

    # -- nuisances ----------------------------------------------------------------------------------------------

    def photometric(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        """One date's radiometry: gamma, contrast, brightness, colour cast, saturation, illumination gradient,
        blur, noise."""
        k = self.s.photometric
        if k <= 0:
            return img
        img = np.power(np.clip(img, 0, 1), np.float32(np.exp(rng.normal(0, 0.2 * k))))
        mean = img.mean()
        img = (img - mean) * np.float32(np.exp(rng.normal(0, 0.15 * k))) + np.float32(mean + rng.normal(0, 0.06 * k))
        img = img * np.exp(rng.normal(0, 0.07 * k, 3)).astype(np.float32)
        grey = img.mean(axis=2, keepdims=True)
        img = grey + (img - grey) * np.float32(np.exp(rng.normal(0, 0.25 * k)))
        if rng.random() < 0.3:
            yy, xx = self._grid()
            a = rng.uniform(0, 2 * np.pi)
            ramp = (np.cos(a) * yy + np.sin(a) * xx) / self.size
            img = img * (1 + np.float32(rng.uniform(-0.2, 0.2) * k) * (ramp - ramp.mean()))[..., None]
        if rng.random() < self.s.p_blur:
            img = _box_blur(img)
        if rng.random() < 0.5:
            img = img + np.float32(rng.uniform(0, 0.03 * k)) * rng.standard_normal(img.shape, dtype=np.float32)
        return np.clip(img, 0, 1)

    # -- pairs --------------------------------------------------------------------------------------------------

    def pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One synthetic pair: (before, after) uint8 (crop, crop, 3) and the change mask, uint8 {0, 1}."""
        s = self.s
        base = self.scene(rng)
        before, after = base.copy(), base.copy()
        changed = np.zeros((self.size, self.size), bool)
        if rng.random() < s.p_same_paste:  # a distractor on both dates: content that did not change
            region = self.region(rng, str(rng.choice(["rect", "rotated", "blob", "buildings"])))
            both = self.fill(rng, base, region, roof=rng.random() < 0.5)
            before, after = both.copy(), both.copy()
        if s.p_landcover > 0 and rng.random() < s.p_landcover:  # unlabelled: the ground changed, no building appeared
            region = np.ones_like(changed) if rng.random() < s.p_whole_scene else self.region(rng, "large")
            donor = None if self.landcover is None else int(rng.choice(self.landcover))
            content = self.scene(rng, donor) * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
            target = after if rng.random() < s.p_after else before
            target[region] = content[region]
        if rng.random() >= s.p_no_change:
            for _ in range(int(rng.integers(1, s.max_changes + 1))):
                roof = rng.random() < s.p_buildings
                kind = "buildings" if roof else str(rng.choice(["rect", "rotated", "blob", "buildings"]))
                region = self.region(rng, kind)
                if rng.random() < s.p_after:
                    after = self.fill(rng, after, region, roof)
                else:
                    before = self.fill(rng, before, region, roof)
                changed |= region
        before, after = self.photometric(rng, before), self.photometric(rng, after)
        m, c = self.margin, s.crop
        dy, dx = rng.integers(-s.max_shift, s.max_shift + 1, 2) if s.max_shift else (0, 0)
        b = _to_uint8(before[m:m + c, m:m + c])
        a = _to_uint8(after[m + dy:m + dy + c, m + dx:m + dx + c])
        b, a = (_jpeg(rng, x) if rng.random() < s.p_jpeg else x for x in (b, a))
        return b, a, changed[m:m + c, m:m + c].astype(np.uint8)

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` pairs stacked: (n, crop, crop, 3) uint8 ×2 and (n, crop, crop) uint8 masks."""
        pairs = [self.pair(rng) for _ in range(n)]
        return tuple(np.stack(x) for x in zip(*pairs))  # type: ignore[return-value]


def _rotated_rect(yy, xx, cy, cx, h, w, angle) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (np.abs(u) < w / 2) & (np.abs(v) < h / 2)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy, dx) with nothing wrapping round the edges (a shadow never appears on the far side)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0),
                                                                     max(-dx, 0):w - max(dx, 0)]
    return out


def _box_blur(img: np.ndarray) -> np.ndarray:
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return (p[:-2, :-2] + p[:-2, 1:-1] + p[:-2, 2:] + p[1:-1, :-2] + p[1:-1, 1:-1] + p[1:-1, 2:]
            + p[2:, :-2] + p[2:, 1:-1] + p[2:, 2:]) / 9.0


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8))


def _jpeg(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(40, 95)))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()
