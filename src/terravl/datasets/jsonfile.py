"""Shared helpers for JSON-described datasets: loading with clear errors, and finding the images on disk."""

from __future__ import annotations

import json
from pathlib import Path

from terravl.errors import DatasetFormatError


def load_json(path: Path) -> object:
    """Parse a JSON file; a syntax error becomes a :class:`DatasetFormatError` naming file, line and column."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(path, f"not UTF-8 text ({exc.reason})") from exc
    except RecursionError:
        raise DatasetFormatError(path, "JSON nested too deeply to be a dataset") from None
    except OSError as exc:
        raise DatasetFormatError(path, f"cannot read ({exc.strerror or exc})") from exc


def peek_json_images(path: Path) -> dict | None:
    """First element of ``images`` in a JSON file that looks like Karpathy caption JSON, else None."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(4096)
        if '"images"' not in head:
            return None
        data = load_json(path)
    except (DatasetFormatError, OSError, UnicodeDecodeError):  # not this format: detection goes on
        return None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images or not isinstance(images[0], dict):
        return None
    return images[0]


class ImageLocator:
    """Finds an image file named in a dataset file: tries ``filepath``/``filename`` under the file's folder, its
    parent and an explicit image root; remembers which base worked so lookups stay cheap."""

    def __init__(self, dataset_file: Path, image_root: Path | None = None, subdirs: tuple[str, ...] = ("", "images")):
        folder = dataset_file.parent
        bases = [image_root] if image_root else []
        bases += [folder, folder.parent]
        self.candidates = [b / s if s else b for b in bases for s in subdirs]
        self._hit: Path | None = None

    def find(self, filename: str, filepath: str = "") -> Path | None:
        order = ([self._hit] if self._hit else []) + self.candidates
        for base in order:
            path = base / filepath / filename if filepath else base / filename
            if path.is_file():
                self._hit = base
                return path
            if filepath and (base / filename).is_file():
                self._hit = base
                return base / filename
        return None
