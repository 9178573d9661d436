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
