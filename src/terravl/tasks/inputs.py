"""From what a user names (files, folders, large rasters, in-memory images) to vectors, for every task that takes
images: the single path from inputs to encoder output.

Small images go whole; rasters larger than ``whole_below`` pixels a side go tile by tile, each tile keeping its
window and footprint; folders are walked. Work streams in chunks, so a raster of any size is answered at constant
memory. Every input is accounted for, in input order: a :class:`Unit` with its vector, or a
:class:`~terravl.results.Problem` naming the file and what is wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from terravl.errors import InputError
from terravl.io import BAND_PROFILES
from terravl.results import Problem
from terravl.validation import check_bands

CHUNK_BATCHES = 16
"""Batches encoded per chunk: memory holds one chunk of tiles at a time (a multiple of the batch size, so batch
boundaries — and so every vector — are the same as in one call over everything)."""


@dataclass(frozen=True)
class Unit:
    """One thing a task answers: a whole image or one tile of a large raster. ``item`` is what the encoder reads
    (a path, decoded in its worker threads, or a tile's pixels); ``where`` names it (``path``, and ``window`` and
    ``footprint`` for a tile); ``index`` is the position of the input it came from."""

    item: Any
    where: dict
    index: int


def iter_units(images: Iterable, tile_size: int, whole_below: int, bands="auto") -> Iterator[Unit | Problem]:
    """Each input as units (one, or one per tile) or a problem, in input order; directories walked recursively
    (their unreadable files, broken links and link loops included, so they are reported rather than skipped)."""
    from terravl.index.build import expand_sources

    found = False
    for position, image in enumerate(images):
        if not isinstance(image, (str, Path)):
            found = True
            yield Unit(image, {"path": f"image #{position}"}, position)
            continue
        for path in expand_sources([image]):
            found = True
            yield from _units_of(path, position, tile_size, whole_below, bands)
    if not found:
        raise InputError("images", "no image files found")


def _units_of(path: Path | str, position: int, tile_size: int, whole_below: int, bands
              ) -> Iterator[Unit | Problem]:
    from terravl.io import iter_tiles, raster_info
    from terravl.io.remote import is_remote

    try:
        info = raster_info(path)
        shown = _bands_shown(info, bands)
        if info.width <= whole_below and info.height <= whole_below:
            # a plain path is decoded by the encoder's image loader; an s3:// object goes through terravl.io
            plain = bands == "auto" and not is_remote(path)
            yield Unit(path if plain else _WithBands(path, bands), {"path": str(path), **shown}, position)
            return
        tiles = 0
        for tile in iter_tiles(path, tile_size, 0, bands=bands):
            if not tile.has_data:  # outside the scene: nothing to describe
                continue
            tiles += 1
            yield Unit(np.ascontiguousarray(tile.array), {"path": str(path), "window": tile.window.to_dict(),
                                                          "footprint": tile.footprint, **shown}, position)
        if not tiles:
            yield Problem(str(path), "no valid pixels (every tile is nodata)", position)
    except InputError as exc:
        yield Problem(str(path), exc.message, position)


def _bands_shown(info, bands) -> dict:
    """``{"bands": {bands, reason}}`` for a multispectral file or an explicit band choice (which bands a result
    looked at, and why); nothing for a plain RGB image, whose answer needs no such note."""
    from terravl.io.bands import choose_bands

    if bands == "auto" and info.count <= 4:
        return {}
    choice = choose_bands(bands, info.count, info.path, info.colorinterp, info.descriptions)
    return {"bands": choice.to_dict()}


class _WithBands:
    """A whole image read with chosen bands, decoded in the encoder's worker threads like a plain path."""

    def __init__(self, path: Path | str, bands):
        self.path, self.bands = path, bands

    def __call__(self):
        from terravl.io import read_image

        return read_image(self.path, bands=self.bands).with_data().array

    def __str__(self) -> str:
        return str(self.path)


def encoded(encoder, images: Iterable, tile_size: int = 256, whole_below: int | None = None, batch_size: int = 32,
            views: int = 1, bands="auto") -> Iterator[list[tuple[Unit, np.ndarray] | Problem]]:
    """Chunks of ``(unit, vector)`` pairs and problems, in input order, at most ``CHUNK_BATCHES × batch_size``
    units a chunk; an input the encoder cannot read becomes a problem in its place. ``bands`` says which bands
    of multispectral files to show as RGB (see :func:`terravl.validation.check_bands`)."""
    whole_below = whole_below or 2 * tile_size
    bands = check_bands(bands, BAND_PROFILES)
    chunk: list[Unit | Problem] = []
    units = 0
    for entry in iter_units(images, tile_size, whole_below, bands):
        chunk.append(entry)
        units += isinstance(entry, Unit)
        if units >= CHUNK_BATCHES * batch_size:
            yield _encode_chunk(encoder, chunk, batch_size, views)
            chunk, units = [], 0
    if chunk:
        yield _encode_chunk(encoder, chunk, batch_size, views)


def _encode_chunk(encoder, chunk: list[Unit | Problem], batch_size: int, views: int
                  ) -> list[tuple[Unit, np.ndarray] | Problem]:
    units = [e for e in chunk if isinstance(e, Unit)]
    result = encoder.encode_batch([u.item for u in units], batch_size=batch_size, views=views, progress=False) \
        if units else None
    vectors = {k: result.vectors[row] for row, k in enumerate(result.kept)} if result else {}
    failed = {p.index: p.error for p in result.problems} if result else {}
    out: list[tuple[Unit, np.ndarray] | Problem] = []
    position = 0
    for entry in chunk:
        if isinstance(entry, Problem):
            out.append(entry)
            continue
        if position in vectors:
            out.append((entry, vectors[position]))
        else:
            out.append(Problem(entry.where["path"], failed[position], entry.index))
        position += 1
    return out


def answer_each(chunks: Iterable[list[tuple[Unit, np.ndarray] | Problem]],
                answer: Callable[[list[Unit], np.ndarray], list[Any]], progress: bool | None = None) -> list[Any]:
    """Apply ``answer(units, vectors) → results`` chunk by chunk and put each result in its unit's place: the
    answers of a batch task, problems included, in input order."""
    import sys

    from tqdm import tqdm

    out: list[Any] = []
    bar = None
    try:
        for chunk in chunks:
            if bar is None and out and progress is not False:  # a second chunk: a long run, show how far it is
                bar = tqdm(desc="answering", unit="img", file=sys.stderr, initial=len(out),
                           disable=None if progress is None else False)
            pairs = [e for e in chunk if not isinstance(e, Problem)]
            results = iter(answer([u for u, _ in pairs], np.stack([v for _, v in pairs])) if pairs else [])
            out += [e if isinstance(e, Problem) else next(results) for e in chunk]
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return out
