"""Text handling for the knowledge base: reading text files safely, cutting them into passages, checking a record's
location and date fields, and turning a question into an FTS5 query.

Passages are short (at most :data:`CHUNK_CHARS` characters, cut at paragraph then sentence boundaries) because the
encoder's text tower reads about 128 tokens and an answer cites a passage, not a whole document.
"""

from __future__ import annotations

import datetime as _dt
import math
import re

from terravl.errors import InputError

CHUNK_CHARS = 600
MAX_TEXT_BYTES = 20 << 20
"""Largest text source read (20 MiB): a bigger 'text' file is almost always a log or a data dump."""
TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".csv", ".jsonl", ".ndjson"}

STOPWORDS = frozenset("""a about above after again all also am an and any are as at be been before being below between
both but by can could did do does doing done down during each else few for from further had has have having he her
here hers him his how i if in into is it its itself just kind me more most my no nor not now of off on once only or
other our out over own please same she should show shown so some such tell than that the their them then there these
they this those through to too type under until up very was we were what when where which while who whom why will
with would you your image images picture photo scene place area""".split())
"""Words that say nothing about the content (question words, articles, "image", "area"): left out of the BM25 query,
so "what kind of area is this?" matches nothing by itself rather than everything."""

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


def decode_text(data: bytes, where: str) -> str:
    """File bytes as text: empty, binary (NUL bytes) and undecodable files are :class:`InputError` naming ``where``.
    UTF-8 (with or without BOM) and UTF-16 with a BOM are read; anything else must be converted first."""
    if len(data) > MAX_TEXT_BYTES:
        raise InputError(where, f"text file of {len(data):,} bytes is too large (at most {MAX_TEXT_BYTES:,}); "
                                f"split it into smaller files")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise InputError(where, f"undecodable UTF-16 text ({exc.reason} at byte {exc.start})") from None
    else:
        if b"\x00" in data[:8192]:
            raise InputError(where, "binary file (NUL bytes), not text")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(where, f"not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                                    f"convert it to UTF-8") from None
    if not text.strip():
        raise InputError(where, "empty text file")
    return text


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry meaning (no stop words), in order, each once."""
    return list(dict.fromkeys(w for w in words(text) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(" ".join(text.split())) if s.strip()]


def chunk(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """Paragraphs of ``text`` merged up to ``limit`` characters; a longer paragraph is cut at sentence ends (a
    sentence longer than the limit is cut at a space)."""
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para) <= limit:
            pieces.append(para)
            continue
        for sent in sentences(para):
            while len(sent) > limit:
                cut = sent.rfind(" ", 0, limit)
                cut = cut if cut > limit // 2 else limit
                pieces.append(sent[:cut].strip())
                sent = sent[cut:].strip()
            if sent:
                pieces.append(sent)
    out: list[str] = []
    for piece in pieces:
        if out and len(out[-1]) + 1 + len(piece) <= limit:
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def markdown_sections(text: str) -> list[tuple[str | None, int, str]]:
    """(heading path, heading level (0 before any heading), body) of each section of a Markdown document (``#``
    headings), in order."""
    sections: list[tuple[str | None, int, str]] = []
    trail: list[str] = []
    body: list[str] = []
    level = 0

    def flush() -> None:
        if "".join(body).strip():
            sections.append((" › ".join(t for t in trail if t) or None, level, "\n".join(body)))
        body.clear()

    for line in text.splitlines():
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            flush()
            level = len(m.group(1))
            trail[:] = (trail + [""] * level)[:level - 1] + [m.group(2).strip()]
        else:
            body.append(line)
    flush()
    return sections


def check_lon_lat(lon, lat, where: str) -> tuple[float | None, float | None]:
    """Both or neither of longitude and latitude, finite, in range (WGS84 degrees)."""
    if _blank(lon) and _blank(lat):
        return None, None
    if _blank(lon) or _blank(lat):
        raise InputError(where, "give both lon and lat, or neither")
    try:
        x, y = float(lon), float(lat)
    except (TypeError, ValueError):
        raise InputError(where, f"invalid coordinates lon={lon!r}, lat={lat!r} (numbers in degrees)") from None
    if not (math.isfinite(x) and math.isfinite(y) and -180 <= x <= 180 and -90 <= y <= 90):
        raise InputError(where, f"invalid coordinates lon={lon!r}, lat={lat!r} (longitude −180…180, latitude "
                                f"−90…90)")
    return x, y


def check_record_bbox(value, where: str) -> tuple[float, float, float, float] | None:
    if _blank(value):
        return None
    from terravl.validation import check_bbox

    try:
        return check_bbox(value if isinstance(value, str) else list(value))
    except (InputError, TypeError) as exc:
        raise InputError(where, f"invalid bbox {str(value)[:60]!r}: {getattr(exc, 'message', exc)}") from None


def check_record_date(value, where: str) -> str | None:
    """An ISO date (``YYYY-MM-DD``, or a date-time whose first ten characters are one), kept as ``YYYY-MM-DD``."""
    if _blank(value):
        return None
    text = str(value).strip()
    try:
        _dt.date.fromisoformat(text[:10])
        if len(text) > 10:
            _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(where, f"invalid date {text[:40]!r} (use YYYY-MM-DD)") from None
    return text[:10]


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())
