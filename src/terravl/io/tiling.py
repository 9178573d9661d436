"""Windowed tiling of rasters of any size at constant memory.

Tiles start at 0 and step by ``size - overlap``; the last tile of a row or column may run past the raster's edge,
in which case it is zero-padded to ``size`` and flagged ``partial``. Each tile's ``window`` and ``footprint`` cover
only its real pixels, so the footprints of all tiles cover the raster's footprint exactly.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from terravl.errors import InputError, OutputError
from terravl.io.bands import Stretch
from terravl.io.formats import describe_os_error
from terravl.io.georef import GeoReference, PixelWindow
from terravl.io.raster import MIN_VALID_FRACTION, all_valid, open_raster
from terravl.results import Problem

MAX_TILE_SIZE = 8192
"""Largest tile side :func:`iter_tiles` and :func:`write_tiles` accept: a padded tile is allocated whole (3 bytes
and a mask byte per pixel), so an unbounded size could ask for tens of GiB on a small raster."""


@dataclass
class Tile:
    """One chip of a raster: 8-bit RGB ``array`` (size, size, 3), ``valid`` mask, and where it lies.

    ``array`` and ``valid`` own their memory (or share a read-only all-valid mask): holding N tiles costs N
    tiles, never the image or the chunk they were read from."""

    source: str
    row: int
    col: int
    window: PixelWindow
    array: np.ndarray
    valid: np.ndarray
    partial: bool
    georef: GeoReference | None
    acquired: str | None = None

    @property
    def valid_fraction(self) -> float:
        """Share of the tile's real pixels (its window; edge padding left out) that are valid; below
        :data:`~terravl.io.raster.MIN_VALID_FRACTION` the tile has no valid pixels."""
        real = self.valid[: self.window.height, : self.window.width]
        return float(real.mean()) if real.size else 0.0

    @property
    def has_data(self) -> bool:
        """Whether the tile has enough valid pixels to answer about (:data:`MIN_VALID_FRACTION`)."""
        return self.valid_fraction >= MIN_VALID_FRACTION

    @property
    def footprint(self) -> dict | None:
        """WGS84 GeoJSON polygon of the tile's real pixels (None if the raster has no CRS)."""
        return self.georef.footprint(self.window) if self.georef else None

    @property
    def tile_georef(self) -> GeoReference | None:
        """Georeference whose transform starts at the tile's top-left pixel (for writing the chip)."""
        return self.georef.for_window(self.window) if self.georef else None

    def properties(self) -> dict:
        props = {"source": self.source, "row": self.row, "col": self.col, "window": self.window.to_dict(),
                 "partial": self.partial, "crs": self.georef.crs_name if self.georef else None}
        if self.georef:
            props["bounds"] = list(self.georef.window_bounds(self.window))
        if self.acquired:
            props["acquired"] = self.acquired
        return props


def tile_windows(width: int, height: int, size: int, overlap: int = 0) -> list[tuple[int, int, PixelWindow]]:
    """The (row, col, window) grid for a width × height raster. Windows are clipped to the raster."""
    if size <= 0:
        raise ValueError(f"tile size must be positive, got {size}")
    if overlap < 0 or overlap >= size:
        raise ValueError(f"overlap must be in [0, size), got {overlap} for size {size}")
    stride = size - overlap
    rows, cols = _starts(height, size, stride), _starts(width, size, stride)
    return [(r, c, PixelWindow(col, row, min(size, width - col), min(size, height - row)))
            for r, row in enumerate(rows) for c, col in enumerate(cols)]


def _starts(length: int, size: int, stride: int) -> list[int]:
    starts = [0]
    while starts[-1] + size < length:
        starts.append(starts[-1] + stride)
    return starts


def check_tile_size(size: int) -> None:
    """Refuse a tile side over :data:`MAX_TILE_SIZE` with an :class:`InputError` naming ``size``."""
    if int(size) > MAX_TILE_SIZE:
        raise InputError("size", f"tile size {size} is larger than the maximum of {MAX_TILE_SIZE} pixels")


def iter_tiles(path: str | Path, size: int = 256, overlap: int = 0, bands="auto",
               stretch: str | Stretch = "auto", workers: int | None = None, chunk: int = 4,
               trusted: bool = True) -> Iterator[Tile]:
    """Yield the tiles of ``path`` in row-major order, reading a few windows at a time.

    Up to ``chunk`` neighbouring tiles of a row are read in one call (fewer, larger reads), and ``workers``
    threads (default: one per core, at most 2) read and convert chunks ahead of the consumer, each with its own
    GDAL handle. At most ``2 × workers`` chunks are in flight, and each tile is cut out of its chunk as its own
    small array, so memory stays constant whatever the raster's size and however many tiles the caller keeps
    costs only those tiles. ``size`` is at most :data:`MAX_TILE_SIZE`; ``trusted=False`` reads an untrusted file
    (an upload) as :func:`~terravl.io.raster.open_raster` does.
    """
    check_tile_size(size)
    workers = workers or min(2, os.cpu_count() or 1)
    with open_raster(path, bands=bands, stretch=stretch, trusted=trusted) as src:
        info = src.info
        chunks = _chunks(tile_windows(info.width, info.height, size, overlap), max(1, chunk))

        def load(cells: list[tuple[int, int, PixelWindow]]) -> list[Tile]:
            first, last = cells[0][2], cells[-1][2]
            span = PixelWindow(first.col_off, first.row_off, last.col_off + last.width - first.col_off, first.height)
            planar, valid = src.read_planar(span)
            tiles = []
            for row, col, window in cells:
                x0 = window.col_off - span.col_off
                array, mask = _cut(planar, valid, x0, window, size)
                partial = window.width < size or window.height < size
                tiles.append(Tile(str(path), row, col, window, array, mask, partial, info.georef, info.acquired))
            return tiles

        if workers <= 1 or len(chunks) <= 1:
            src.stretch  # noqa: B018 - computed once, before the first tile
            for cells in chunks:
                yield from load(cells)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="terravl-tiles") as pool:
            src.prepare_stretch(pool.map)  # its sample windows read by the workers, before any tile
            todo = iter(chunks)
            pending: deque = deque(pool.submit(load, c) for c in islice(todo, 2 * workers))
            try:
                while pending:
                    done = pending.popleft().result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending.append(pool.submit(load, nxt))
                    yield from done
            finally:
                for future in pending:
                    future.cancel()


def _chunks(grid: list[tuple[int, int, PixelWindow]], chunk: int) -> list[list[tuple[int, int, PixelWindow]]]:
    """Group neighbouring tiles of the same row, ``chunk`` at a time."""
    out: list[list] = []
    for cell in grid:
        if out and len(out[-1]) < chunk and out[-1][-1][0] == cell[0]:
            out[-1].append(cell)
        else:
            out.append([cell])
    return out


def _cut(planar: np.ndarray, valid: np.ndarray, x0: int, window: PixelWindow, size: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """One tile, channels-last, in memory of its own: a tile that viewed its chunk would keep the whole chunk
    (or, before, the whole image) alive for as long as the caller holds the tile. Zero-padded at the edges."""
    full = window.width == size and window.height == size
    if full and planar.shape[2] == size and planar.base is None:
        tile = planar  # the chunk is this one tile and owns its memory: nothing to cut
    elif full:
        tile = np.ascontiguousarray(planar[:, :, x0:x0 + size])
    else:
        tile = np.zeros((3, size, size), dtype=np.uint8)
        tile[:, : window.height, : window.width] = planar[:, :, x0:x0 + window.width]
    if full and valid.all():
        mask = all_valid((size, size))
    else:
        mask = np.zeros((size, size), dtype=bool)
        mask[: window.height, : window.width] = valid[:, x0:x0 + window.width]
    return tile.transpose(1, 2, 0), mask


@dataclass(frozen=True)
class TilingProblem(Problem):
    """A source :func:`write_tiles` could not (fully) tile, with how many of its tiles were written before the
    error (they stay in the index: their pixels were read and are correct)."""

    tiles_written: int = 0

    def to_dict(self) -> dict:
        return {**super().to_dict(), "tiles_written": self.tiles_written}


@dataclass
class TilingResult:
    """What :func:`write_tiles` did: tiles written per source, the GeoJSON index, and the files it skipped
    (:class:`~terravl.results.Problem` objects, as every capability reports them)."""

    out_dir: str
    geojson: str
    tiles: int = 0
    partial: int = 0
    sources: list[dict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "geojson": self.geojson, "tiles": self.tiles, "partial": self.partial,
                "sources": self.sources, "problems": [p.to_dict() for p in self.problems]}


def write_tiles(sources: str | Path | list[str | Path], out_dir: str | Path, size: int = 256, overlap: int = 0,
                fmt: str = "png", bands="auto", stretch: str | Stretch = "auto", progress=None) -> TilingResult:
    """Write the tiles of each source as PNG or GeoTIFF chips into ``out_dir``, indexed by ``tiles.geojson``.

    A source that cannot be read is recorded in ``problems`` (with the file name and reason) and the others go
    on. The GeoJSON is streamed to a temporary file and renamed when complete, so a killed run never leaves a
    half-written index. An output that cannot be written (a read-only or full folder) ends the run with
    :class:`~terravl.errors.OutputError` naming it, and no index is claimed. ``progress`` is an optional callable
    called once per tile written.
    """
    if fmt not in ("png", "tif"):
        raise ValueError(f"chip format must be 'png' or 'tif', got {fmt!r}")
    tile_windows(1, 1, size, overlap)  # validate size/overlap before touching the disk
    check_tile_size(size)
    if isinstance(sources, (str, Path)):
        sources = [sources]
    out = Path(out_dir)
    result = TilingResult(str(out), str(out / "tiles.geojson"))
    tmp = out / "tiles.geojson.part"
    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = open(tmp, "w", encoding="utf-8")
    except OSError as exc:
        raise OutputError(out, f"cannot write the tiles here ({describe_os_error(exc, out, 'write')})") from None
    try:
        with fh:
            fh.write('{"type": "FeatureCollection", "features": [\n')
            for source in sources:
                _tile_one(source, out, fh, result, size, overlap, fmt, bands, stretch, progress)
            fh.write("\n]}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out / "tiles.geojson")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        target = getattr(exc, "filename", None) or out
        raise OutputError(target, f"cannot write ({describe_os_error(exc, target, 'write')}); no tiles.geojson "
                                  f"was written") from None
    return result


def _tile_one(source: str | Path, out: Path, fh, result: TilingResult, size: int, overlap: int, fmt: str, bands,
              stretch, progress) -> None:
    """Write one source's chips and features; an unreadable source becomes a problem, a write error propagates."""
    stem = _unique_stem(Path(source), result.sources)
    written = 0
    try:
        for tile in iter_tiles(source, size, overlap, bands, stretch):
            chip = out / f"{stem}_r{tile.row:04d}_c{tile.col:04d}.{fmt}"
            _write_chip(tile, chip, fmt)
            props = tile.properties()
            props["file"] = chip.name
            feature = {"type": "Feature", "geometry": tile.footprint, "properties": props}
            fh.write((",\n" if result.tiles else "") + json.dumps(feature))
            result.tiles += 1
            result.partial += tile.partial
            written += 1
            if progress is not None:
                progress(1)
    except InputError as exc:
        result.problems.append(TilingProblem(str(source), exc.message, tiles_written=written))
        return
    result.sources.append({"path": str(source), "stem": stem, "tiles": written})


def _unique_stem(path: Path, done: list[dict]) -> str:
    taken = {d["stem"] for d in done}
    stem, n = path.stem, 1
    while stem in taken:
        n += 1
        stem = f"{path.stem}_{n}"
    return stem


def _write_chip(tile: Tile, chip: Path, fmt: str) -> None:
    if fmt == "png":
        from PIL import Image

        try:
            Image.fromarray(tile.array, "RGB").save(chip, compress_level=1)
        except OSError as exc:
            if exc.filename is None:
                exc.filename = str(chip)
            raise
        return
    import rasterio

    georef = tile.tile_georef
    profile = {"driver": "GTiff", "width": tile.array.shape[1], "height": tile.array.shape[0], "count": 3,
               "dtype": "uint8", "compress": "deflate"}
    if georef is not None:
        profile.update(crs=georef.crs_wkt, transform=georef.transform)
    with rasterio.open(chip, "w", **profile) as dst:
        dst.write(np.moveaxis(tile.array, -1, 0))
        dst.write_mask(tile.valid.astype(np.uint8) * 255)
