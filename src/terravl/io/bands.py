"""Band selection and conversion to 8-bit RGB.

Vision-language models see 3-channel uint8 images. Remote-sensing rasters come with 1 to 13+ bands, in 8, 16 or
32 bits, with nodata and NaNs. This module picks three bands by a named *band profile* and maps values to uint8
with a per-band percentile stretch whose limits are computed once per raster, so that every tile of a raster is
stretched the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from terravl.errors import BandError

BAND_PROFILES: dict[str, tuple[int, int, int] | None] = {
    "auto": None,
    "rgb": (1, 2, 3),
    "bgr": (3, 2, 1),
    "naip": (1, 2, 3),
    "naip-cir": (4, 1, 2),
    "sentinel2": (4, 3, 2),
    "sentinel2-cir": (8, 4, 3),
    "landsat8": (4, 3, 2),
    "landsat7": (3, 2, 1),
    "landsat-swir-nir-red": (1, 2, 3),
}
"""Named band profiles: 1-based band indexes read as (R, G, B). ``sentinel2`` is the 13-band L1C/L2A order
(B1…B8, B8A, B9…B12), ``landsat8`` the OLI order, ``landsat7`` the ETM+ order. ``auto`` uses the file's colour
tags, else: 1 band → grey replicated, 3 or 4 bands → bands 1-3 (the 4th is taken as NIR or alpha)."""


def resolve_bands(profile: str | tuple[int, ...] | list[int], count: int, source: str,
                  colorinterp: tuple[str, ...] = ()) -> tuple[int, int, int]:
    """Return the three 1-based band indexes to read for ``profile`` from a raster with ``count`` bands.

    ``profile`` is a name from :data:`BAND_PROFILES` or explicit indexes (one index is replicated to grey).
    Raises :class:`BandError` naming ``source`` when the raster has too few bands or ``auto`` cannot decide.
    """
    if isinstance(profile, str):
        if profile not in BAND_PROFILES:
            raise BandError(source, f"unknown band profile {profile!r}; choose one of {', '.join(BAND_PROFILES)}")
        chosen = BAND_PROFILES[profile]
        if chosen is None:
            return _auto_bands(count, source, colorinterp)
    else:
        chosen = tuple(int(b) for b in profile)
        if len(chosen) == 1:
            chosen = chosen * 3
        if len(chosen) != 3:
            raise BandError(source, f"give 1 or 3 band indexes, got {len(chosen)}")
    bad = [b for b in chosen if b < 1 or b > count]
    if bad:
        raise BandError(source, f"band profile {profile!r} needs bands {list(chosen)} but the raster has {count} "
                                f"band(s)")
    return chosen  # type: ignore[return-value]


def _auto_bands(count: int, source: str, colorinterp: tuple[str, ...]) -> tuple[int, int, int]:
    names = [c.lower() for c in colorinterp]
    if all(c in names for c in ("red", "green", "blue")):
        return (names.index("red") + 1, names.index("green") + 1, names.index("blue") + 1)
    if count in (1, 2):
        return (1, 1, 1)
    if count in (3, 4):
        return (1, 2, 3)
    raise BandError(source, f"{count} bands and no RGB colour tags: choose a band profile "
                            f"({', '.join(p for p in BAND_PROFILES if p != 'auto')}) or give --bands R,G,B")


def alpha_band(colorinterp: tuple[str, ...]) -> int | None:
    """1-based index of an alpha band, if the file tags one."""
    names = [c.lower() for c in colorinterp]
    return names.index("alpha") + 1 if "alpha" in names else None


@dataclass(frozen=True)
class Stretch:
    """Per-band linear map ``[low, high] → [0, 255]``; ``identity`` keeps uint8 data unchanged."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    identity: bool = False

    @classmethod
    def none(cls, nbands: int = 3) -> "Stretch":
        return cls((0.0,) * nbands, (255.0,) * nbands, identity=True)

    def to_dict(self) -> dict:
        return {"low": list(self.low), "high": list(self.high), "identity": self.identity}


def percentile_stretch(samples: np.ndarray, valid: np.ndarray | None, percentiles: tuple[float, float] = (2, 98)
                       ) -> Stretch:
    """Compute stretch limits from ``samples`` shaped (bands, H, W), ignoring invalid pixels and NaNs."""
    lows, highs = [], []
    for band in range(samples.shape[0]):
        values = samples[band].astype(np.float64, copy=False)
        keep = np.isfinite(values)
        if valid is not None:
            keep &= valid
        values = values[keep]
        if values.size > 1_000_000:  # percentiles of an even subsample: same limits, a fraction of the time
            values = values[:: values.size // 1_000_000]
        if values.size == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        lo, hi = np.percentile(values, percentiles)
        if hi <= lo:
            hi = lo + 1.0
        lows.append(float(lo))
        highs.append(float(hi))
    return Stretch(tuple(lows), tuple(highs))


def to_uint8(data: np.ndarray, stretch: Stretch, valid: np.ndarray | None = None) -> np.ndarray:
    """Map (bands, H, W) data to planar (bands, H, W) uint8; invalid pixels become 0.

    uint8 input with an identity stretch is returned as is (no copy). 8/16-bit integers go through a cached
    lookup table, one gather per pixel that releases the GIL (so worker threads convert in parallel); floats are
    scaled arithmetically with NaN → 0.
    """
    if stretch.identity and data.dtype == np.uint8:
        out = data
    elif data.dtype in (np.uint8, np.uint16):
        out = np.empty(data.shape, dtype=np.uint8)
        for b in range(data.shape[0]):  # mode="wrap" skips the bounds check: a uint8/16 index is always in range
            np.take(_lut(stretch.low[b], stretch.high[b], data.dtype.itemsize), data[b], out=out[b], mode="wrap")
    else:
        out = np.empty(data.shape, dtype=np.uint8)
        for b in range(data.shape[0]):
            lo, hi = stretch.low[b], stretch.high[b]
            scaled = (data[b].astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
            np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
            np.clip(scaled, 0, 255, out=scaled)
            out[b] = np.rint(scaled)
    if valid is not None and not valid.all():
        if out is data:
            out = data.copy()
        out[:, ~valid] = 0
    return out


@lru_cache(maxsize=256)
def _lut(low: float, high: float, itemsize: int) -> np.ndarray:
    levels = np.arange(256 if itemsize == 1 else 65536, dtype=np.float32)
    return np.clip((levels - low) * (255.0 / (high - low)), 0, 255).round().astype(np.uint8)
