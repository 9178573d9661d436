"""Saying why a path names no readable file, the same way everywhere (readers, tasks, index builds)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def missing_reason(path: str | Path) -> str:
    """Why ``path`` is not a readable file: a symbolic-link loop, a broken link, a folder, or simply absent."""
    path = Path(path)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic-link loop"
        if path.is_symlink():
            return f"broken symbolic link (to {os.readlink(path)})"
        return "no such file"
    return "is a folder, not an image file" if path.is_dir() else "not a regular file"


def shown(path: str | Path) -> str:
    """``path`` as printable UTF-8 text: bytes of a file name that are not UTF-8 (which Python carries as lone
    surrogates) become ``\\xNN`` escapes, so a name can always be reported, logged or stored as text."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(path: str | Path) -> bool:
    """Whether the file name is valid UTF-8 (so it can be stored in an index and opened again by that name)."""
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
