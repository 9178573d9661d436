"""The one place where shared request parameters are checked, for the library, the CLI and the HTTP service alike.

Each ``check_*`` function takes what a user typed (a string or a number), returns the parsed value, and raises
:class:`~terravl.errors.InputError` naming the *field* (``bbox``, ``labels``…), never a CLI flag or a form name:
the CLI prints it and exits 2, the service answers 400/422 with ``{"error": {"field", "message"}}``. The limits are
constants here, so the CLI and the API cannot disagree about them.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Sequence

from terravl.errors import InputError

MAX_K = 1000
"""Most hits or top classes one call returns."""
MAX_QUERY_CHARS = 500
"""Longest text query (a caption-length sentence is ~100 characters)."""
MAX_LABELS = 200
"""Most labels one zero-shot call scores (the largest built-in list, PatternNet, has 38)."""
MAX_LABEL_CHARS = 100
"""Longest single label."""
MIN_SCALE, MAX_SCALE, MAX_SCALES = 16, 4096, 4
"""Window sizes (pixels) and how many of them one localisation may use."""
MAX_BEAMS = 8
"""Widest beam search (memory and time grow with the beam)."""
MAX_TOKENS = 256
"""Longest generated text, in tokens."""
MAX_CONSENSUS_K = 50
"""Most neighbours whose captions vote in the retrieval captioner (the vote is quadratic in them)."""


def check_text(value: str | bytes | None, field: str = "query", max_chars: int = MAX_QUERY_CHARS) -> str:
    """A non-empty text of printable characters, whitespace folded; bytes must be UTF-8."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(field, "is not valid UTF-8 text") from None
    if value is None:
        raise InputError(field, "is required")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: how Python passes undecodable command-line bytes
        raise InputError(field, "is not valid UTF-8 text") from None
    text = " ".join(value.split())
    if not text:
        raise InputError(field, "must not be empty")
    if len(text) > max_chars:
        raise InputError(field, f"is {len(text)} characters long; at most {max_chars} are accepted")
    if any(not ch.isprintable() for ch in text):
        raise InputError(field, "contains control characters")
    return text


def check_k(value: int, field: str = "k", maximum: int = MAX_K) -> int:
    return check_int(value, field, 1, maximum)


def check_int(value: int | str, field: str, minimum: int, maximum: int) -> int:
    """An integer in [minimum, maximum]."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(field, f"must be a whole number, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise InputError(field, f"must be a whole number, got {value!r}")
    if not minimum <= number <= maximum:
        raise InputError(field, f"must be between {minimum} and {maximum}, got {number}")
    return number


def check_beams(value: int | None) -> int | None:
    return None if value is None else check_int(value, "beams", 1, MAX_BEAMS)


def check_max_tokens(value: int | None) -> int | None:
    return None if value is None else check_int(value, "max_tokens", 1, MAX_TOKENS)


def check_bbox(value: str | Sequence[float] | None, field: str = "bbox") -> tuple[float, float, float, float] | None:
    """``min_lon,min_lat,max_lon,max_lat`` in WGS84 degrees (a string or four numbers), finite, in range, min ≤ max."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        parts = tuple(float(x) for x in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise InputError(field, "must be four numbers: min_lon,min_lat,max_lon,max_lat") from None
    if len(parts) != 4 or not all(math.isfinite(p) for p in parts):
        raise InputError(field, "must be four finite numbers: min_lon,min_lat,max_lon,max_lat")
    min_lon, min_lat, max_lon, max_lat = parts
    if not (-180 <= min_lon <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
        raise InputError(field, "must be min_lon,min_lat,max_lon,max_lat in degrees (longitude −180…180, latitude "
                                "−90…90), with min ≤ max")
    return parts  # type: ignore[return-value]


def check_date(value: str | None, field: str) -> str | None:
    """An ISO date ``YYYY-MM-DD`` (returned as given), or None."""
    if value is None or value == "":
        return None
    try:
        _dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InputError(field, f"must be a date YYYY-MM-DD, got {value!r}") from None
    if len(value) != 10:
        raise InputError(field, f"must be a date YYYY-MM-DD, got {value!r}")
    return value


def check_date_range(date_from: str | None, date_to: str | None) -> tuple[str | None, str | None]:
    date_from, date_to = check_date(date_from, "date_from"), check_date(date_to, "date_to")
    if date_from and date_to and date_from > date_to:
        raise InputError("date_from", f"{date_from} is after date_to {date_to}")
    return date_from, date_to


def check_scales(value: str | Sequence[int], field: str = "scales") -> tuple[int, ...]:
    """Window sizes in pixels (``"256"``, ``"128,256"`` or a sequence), each in [16, 4096], at most four."""
    try:
        sizes = tuple(int(s) for s in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise InputError(field, "must be window sizes in pixels, comma-separated (e.g. 128,256)") from None
    if not sizes or len(sizes) > MAX_SCALES:
        raise InputError(field, f"give between 1 and {MAX_SCALES} window sizes")
    if any(not MIN_SCALE <= s <= MAX_SCALE for s in sizes):
        raise InputError(field, f"window sizes must be between {MIN_SCALE} and {MAX_SCALE} pixels")
    return sizes


def check_labels(labels: str | Sequence[str] | None, classes: str | None = None,
                 builtin: dict[str, list[str]] | None = None) -> list[str]:
    """Class names for zero-shot classification: ``labels`` (comma-separated or a list) or the name of a built-in
    list in ``classes``; at least two, distinct, at most :data:`MAX_LABELS` of at most :data:`MAX_LABEL_CHARS`."""
    if labels and classes:
        raise InputError("labels", "give labels or a class list name (classes), not both")
    if classes:
        key = classes.strip().lower()
        if not builtin or key not in builtin:
            raise InputError("classes", f"unknown class list {classes[:40]!r}; choose one of "
                                        f"{', '.join(builtin or {})}")
        return list(builtin[key])
    if isinstance(labels, str):
        labels = labels.split(",")
    names = [" ".join(str(x).split()) for x in (labels or [])]
    names = [x for x in names if x]
    if len(names) > MAX_LABELS:
        raise InputError("labels", f"{len(names)} labels given; at most {MAX_LABELS} are accepted")
    for name in names:
        check_text(name, "labels", MAX_LABEL_CHARS)
    if len(names) < 2:
        raise InputError("labels", "give at least two labels (comma-separated) or a built-in class list")
    if len(set(names)) != len(names):
        raise InputError("labels", "labels must be distinct")
    return names


def check_bands(value: str | Sequence[int] | None, profiles: Sequence[str],
                field: str = "bands") -> str | tuple[int, ...]:
    """Which bands to show as RGB: ``auto`` (what the file says), one of the band ``profiles``
    (:data:`terravl.io.BAND_PROFILES`: ``sentinel2``…) or 1-based band indexes (``4,3,2``; one index is grey)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "auto"
    if isinstance(value, str):
        name = value.strip().lower()
        if name in profiles:
            return name
        parts = value.split(",")
    else:
        parts = list(value)
    try:
        indexes = tuple(int(v) for v in parts)
    except (TypeError, ValueError):
        raise InputError(field, f"{str(value)[:40]!r} is neither a band profile ({', '.join(profiles)}) nor "
                                "1-based band indexes like 4,3,2") from None
    if len(indexes) not in (1, 3) or any(not 1 <= i <= 65535 for i in indexes):
        raise InputError(field, "give one (grey) or three (R,G,B) 1-based band indexes, e.g. 4,3,2")
    return indexes
