"""What an untrusted file really is, from its first bytes, before any decoder sees it.

GDAL opens dozens of formats by content, several of which are recipes that read *other* files (a VRT's
``SourceFilename``, ``/vsicurl/`` or ``/vsizip/`` paths, HDF subdatasets…). A file a client uploads must never be
such a recipe: :func:`sniff_format` accepts only formats that are self-contained pixels and refuses the rest with
:class:`~terravl.errors.UnsupportedFormatError`, whatever the file is called. Readers then open it with the one
decoder that format needs (:data:`DRIVERS`).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from terravl.errors import RasterReadError, UnsupportedFormatError
from terravl.paths import missing_reason

SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("jpeg", b"\xff\xd8\xff", 0),
    ("png", b"\x89PNG\r\n\x1a\n", 0),
    ("tiff", b"II*\x00", 0),
    ("tiff", b"MM\x00*", 0),
    ("tiff", b"II+\x00", 0),  # BigTIFF
    ("tiff", b"MM\x00+", 0),
    ("webp", b"WEBP", 8),  # RIFF....WEBP
)
"""(format, magic bytes, offset) of the formats accepted from untrusted sources."""

SUFFIX = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "webp": ".webp"}
"""The file suffix each accepted format is stored under, so readers pick the decoder by content, not by name."""

DRIVERS = {"jpeg": ("JPEG",), "png": ("PNG",), "tiff": ("GTiff",), "webp": ("WEBP",)}
"""The GDAL drivers allowed to open each format (a GeoTIFF is never handed to the VRT or any other driver)."""


PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
"""The sniffed formats decoded by Pillow, and the one Pillow plugin each may use (JPEG bytes named ``.tif`` are
decoded as JPEG; PNG bytes named ``.jpg`` as PNG). TIFF goes to GDAL's GTiff driver for its georeference."""


def check_file(path: str | Path, name: str | None = None, allow_dir: bool = False) -> None:
    """Raise :class:`RasterReadError` naming ``name`` (or the file) unless ``path`` is a regular file (or, with
    ``allow_dir``, a folder, which some GDAL formats are), saying what it is instead in the words every layer
    uses (:func:`terravl.paths.missing_reason`): no such file, a broken link, a symbolic-link loop, a folder."""
    name = name or str(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise RasterReadError(name, missing_reason(path)) from None
    if stat.S_ISREG(mode) or (allow_dir and stat.S_ISDIR(mode)):
        return
    raise RasterReadError(name, missing_reason(path))


def describe_os_error(exc: OSError, path: str | Path | None = None, action: str = "read") -> str:
    """What an OSError on opening ``path`` to ``action`` it means, in words a user can act on."""
    if exc.errno == errno.ELOOP:
        return "symbolic-link loop"
    if exc.errno == errno.ENOTDIR and action != "read":
        return "part of the path is a file, not a folder"
    if exc.errno == errno.ENOENT and action != "read":
        return "the folder cannot be created there"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        if path is not None and os.path.islink(path):
            return missing_reason(path)
        return "no such file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EISDIR:
        return "is a folder, not an image file"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return f"cannot {action} the file ({exc.strerror or exc})"


def sniff_format(path: str | Path, field: str | None = None) -> str:
    """``jpeg``, ``png``, ``tiff`` or ``webp`` from the file's first bytes; anything else (GDAL VRT or other XML,
    HDF, archives, text, an empty file) is an :class:`UnsupportedFormatError` naming ``field`` (or the file).
    A file that cannot be read at all is a :class:`RasterReadError` saying why (no such file, link loop…)."""
    name = field or str(path)
    check_file(path, name)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise RasterReadError(name, describe_os_error(exc, path)) from None
    for fmt, magic, offset in SIGNATURES:
        if head[offset:offset + len(magic)] == magic and (fmt != "webp" or head[:4] == b"RIFF"):
            return fmt
    if not head:
        raise UnsupportedFormatError(name, "empty file")
    raise UnsupportedFormatError(name, "not a JPEG, PNG, TIFF/GeoTIFF or WebP image (by its content, whatever its "
                                       "name); other formats, which can reference other files, are not accepted")
