"""Typed errors. Every error that comes from user input names the file or field it is about, so a batch can
report it on one line and carry on."""

from __future__ import annotations

from pathlib import Path


class TerraVLError(Exception):
    """Base class of every error TerraVL raises on purpose."""


class InputError(TerraVLError):
    """Bad user input (a file, a field, an argument). Front ends map it to exit code 2."""

    def __init__(self, source: str | Path, message: str):
        self.source = str(source)
        self.message = message
        super().__init__(f"{self.source}: {message}")


class RasterReadError(InputError):
    """A raster that cannot be opened or decoded: missing, corrupt, truncated, or not an image at all."""


class ImageTooLargeError(InputError):
    """An image whose pixel count exceeds the configured limit (a guard against decompression bombs)."""


class BandError(InputError):
    """The raster's band count or band selection does not fit the requested band profile."""


class DatasetFormatError(InputError):
    """A dataset folder or file whose layout TerraVL does not recognise or cannot parse at all."""


class UnsupportedFormatError(InputError):
    """Bytes that are not one of the image formats TerraVL decodes from untrusted sources (uploads): the HTTP
    service answers 415. Formats that can reference other files (GDAL VRT, …) are never decoded from them."""


class WorkBudgetError(ImageTooLargeError):
    """A request for more work (windows, tiles) than the caller's budget allows, refused before any pixel is read.
    The HTTP service answers 413, as for any input too large for it."""


class OutputError(TerraVLError):
    """An output that cannot be written (a read-only or full folder): not the input's fault, so front ends exit 1.
    Names the file or folder; nothing half-written is reported as done."""

    def __init__(self, target: str | Path, message: str):
        self.source = str(target)
        self.message = message
        super().__init__(f"{self.source}: {message}")


class AlignmentError(InputError):
    """Two rasters that cannot be compared pixel for pixel (change detection): they do not overlap, overlap too
    little, differ in size with no georeference to place them, or one's footprint cannot be transformed into the
    other's CRS. ``source`` names both files ("BEFORE and AFTER"), so the message is clear on one line."""

    def __init__(self, before: str | Path, after: str | Path, message: str):
        self.before = str(before)
        self.after = str(after)
        super().__init__(f"{self.before} and {self.after}", message)
