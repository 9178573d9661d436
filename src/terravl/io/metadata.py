"""Acquisition dates from raster tags or file names, so that searches can filter by date."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

_TAG_KEYS = ("ACQUISITIONDATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED", "TIFFTAG_DATETIME", "DATETIME")
_ISO = re.compile(r"(?<!\d)((?:19|20)\d\d)[-_:]?(0[1-9]|1[0-2])[-_:]?(0[1-9]|[12]\d|3[01])(?!\d)")


def acquisition_date(path: str | Path, tags: dict[str, str]) -> str | None:
    """ISO date (YYYY-MM-DD) from the first date-like tag, else from a YYYYMMDD/YYYY-MM-DD in the file name."""
    for key in _TAG_KEYS:
        for tag, value in tags.items():
            if tag.upper() == key:
                found = _parse(str(value))
                if found:
                    return found
    return _parse(Path(path).name)


def _parse(text: str) -> str | None:
    match = _ISO.search(text)
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3])).isoformat()
    except ValueError:
        return None
