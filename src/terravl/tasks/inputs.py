"""Turning what a user names (files, folders, large rasters, in-memory images) into encoder inputs, shared by the
tasks that take images: small images go whole, rasters larger than ``whole_below`` pixels a side go as tiles that
keep their window and footprint, folders are walked, and unreadable files become error entries."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from terravl.errors import InputError


def expand_images(images: list, tile_size: int, whole_below: int) -> tuple[list, list[dict], list[dict]]:
    """Inputs → encoder items: small images by path (decoded in the encoder's worker threads), large rasters as
    tiles with their window and footprint; directories walked recursively."""
    from terravl.index.build import expand_sources, items_of
    from terravl.io import raster_info

    items, extra, failed = [], [], []
    for image in images:
        if not isinstance(image, (str, Path)):
            items.append(image)
            extra.append({"path": f"image #{len(items) - 1}"})
            continue
        for path in expand_sources([image]):
            try:
                info = raster_info(path)
                if info.width <= whole_below and info.height <= whole_below:
                    items.append(path)
                    extra.append({"path": str(path)})
                    continue
                for item in items_of(path, tile_size, 0, whole_below):
                    items.append(item.array)
                    extra.append({"path": str(path), "window": item.row.window, "footprint": item.row.footprint})
            except InputError as exc:
                failed.append({"path": str(path), "error": exc.message})
    return items, extra, failed


def encode_inputs(encoder, images: list, tile_size: int = 256, whole_below: int | None = None,
                  batch_size: int = 32) -> tuple[np.ndarray, list[dict], list[dict]]:
    """Embeddings of every readable input (rows in order), the descriptor of each row (``path``, and ``window``/
    ``footprint`` for tiles), and one ``{path, error}`` entry per input that could not be read."""
    items, extra, failed = expand_images(images, tile_size, whole_below or 2 * tile_size)
    if not items and not failed:
        raise InputError("images", "no image files found")
    emb = encoder.encode_images(items, batch_size=batch_size, skip_errors=True) if items else None
    rows = [extra[i] for i in encoder.report.kept] if items else []
    errors = [{**extra[f["index"]], "error": f["error"]} for f in encoder.report.failed] if items else []
    return (emb if emb is not None else np.zeros((0, 0), np.float32)), rows, errors + failed
