"""``index build``: walk sources, cut large rasters into tiles, embed them and commit them batch by batch.

A producer thread walks the files, decodes and hashes tiles while the main thread embeds the previous batch, so
the build runs at nearly the encoder's own rate. Each batch is one SQLite transaction: a killed build keeps every
committed batch, and a re-run skips tiles whose content hash is already indexed.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from terravl.datasets.records import IMAGE_SUFFIXES
from terravl.errors import InputError
from terravl.index.store import IndexStore, IndexWriteError, TileRow, bbox_of
from terravl.io import iter_tiles, raster_info
from terravl.paths import is_utf8, shown
from terravl.results import Problem


@dataclass
class BuildReport:
    """What a build did. It adds up: every file found is indexed or a problem, and every
    tile seen is ``added`` or ``skipped_existing`` (already indexed, or identical pixels seen earlier in the run)."""

    files: int = 0
    tiles_seen: int = 0
    added: int = 0
    skipped_existing: int = 0
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"files": self.files, "tiles_seen": self.tiles_seen, "added": self.added,
                "skipped_existing": self.skipped_existing, "problems": [p.to_dict() for p in self.problems]}


@dataclass
class _Item:
    array: np.ndarray
    row: TileRow


def expand_sources(sources: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively for image files (sorted, so runs are repeatable). A name with an
    image suffix that is not a readable file (a broken link, a link loop) is yielded too, so that reading it
    reports the problem instead of skipping it without a word."""
    for source in sources:
        path = Path(source)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                              and (p.is_file() or p.is_symlink()))
        else:
            yield path


def content_hash(array: np.ndarray) -> str:
    """sha1 of the tile's 8-bit RGB pixels and shape: identical pixels are indexed once."""
    h = hashlib.sha1(str(array.shape).encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def items_of(path: Path, tile_size: int, overlap: int, whole_below: int) -> Iterator[_Item]:
    """The indexable items of one file: the whole image if both sides ≤ ``whole_below``, else its tiles (tiles
    with no valid pixel — all nodata — are left out)."""
    info = raster_info(path)
    source = str(path.resolve())
    if info.width <= whole_below and info.height <= whole_below:
        from terravl.io import read_image

        image = read_image(path)
        array = np.ascontiguousarray(image.array)
        footprint = image.footprint()
        yield _Item(array, TileRow(content_hash(array), source, None, footprint, bbox_of(footprint),
                                   info.georef.crs_name if info.georef else None, info.acquired, np.zeros(0)))
        return
    for tile in iter_tiles(path, tile_size, overlap):
        if not tile.valid.any():  # all nodata (outside the scene): nothing to search for
            continue
        array = np.ascontiguousarray(tile.array)
        footprint = tile.footprint
        yield _Item(array, TileRow(content_hash(array), source, tile.window.to_dict(), footprint, bbox_of(footprint),
                                   tile.georef.crs_name if tile.georef else None, tile.acquired, np.zeros(0)))


def build_index(sources: Iterable[str | Path], encoder, out: str | Path, tile_size: int = 256, overlap: int = 0,
                whole_below: int | None = None, batch_size: int = 64,
                progress: Callable[[int], None] | None = None) -> BuildReport:
    """Index ``sources`` (files or folders) into ``out`` with ``encoder``; returns what was done.

    Unreadable files are reported (in the returned report and the index's problem log) and skipped. A write
    that fails (disk full, read-only location) stops the build with :class:`IndexWriteError` saying how many tiles
    of this run were committed (they stay readable, and a re-run resumes); its ``report`` counts only those.
    """
    whole_below = whole_below or 2 * tile_size
    store = IndexStore(out, create=True, model=encoder.source or encoder.name, dim=encoder.embed_dim)
    report = BuildReport()
    items: queue.Queue = queue.Queue(maxsize=4 * batch_size)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for path in expand_sources(sources):
                if stop.is_set():
                    return
                report.files += 1
                if not is_utf8(os.path.abspath(path)):  # the index stores names as text, to open them again
                    items.put(Problem(shown(path), "file name is not valid UTF-8; rename the file to index it"))
                    continue
                try:
                    for item in items_of(path, tile_size, overlap, whole_below):
                        if stop.is_set():
                            return
                        items.put(item)
                except InputError as exc:
                    items.put(Problem(shown(path), shown(exc.message)))
                except Exception as exc:  # noqa: BLE001 - one bad file must not stop the build
                    items.put(Problem(shown(path), shown(f"{exc.__class__.__name__}: {exc}")))
        except Exception as exc:  # noqa: BLE001 - walking the sources failed: say so rather than end quietly
            items.put(Problem("sources", shown(f"{exc.__class__.__name__}: {exc}")))
        finally:
            items.put(done)

    producer = threading.Thread(target=produce, name="terravl-index-producer", daemon=True)
    producer.start()
    batch: list[_Item] = []
    try:
        while True:
            item = items.get()
            if item is done:
                break
            if isinstance(item, Problem):
                report.problems.append(item)
                store.log_problem(item.path, item.error)
                continue
            report.tiles_seen += 1
            batch.append(item)
            if len(batch) >= batch_size:
                _commit(store, encoder, batch, report, progress)
                batch = []
        if batch:
            _commit(store, encoder, batch, report, progress)
    except IndexWriteError as exc:
        error = IndexWriteError(exc.source, f"{exc.message} ({report.added} tiles of this run were committed and "
                                            f"kept; re-run to resume)")
        error.report = report  # type: ignore[attr-defined]
        raise error from None
    finally:
        stop.set()
        while producer.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                producer.join(timeout=0.1)
        store.close()
    return report


def _commit(store: IndexStore, encoder, batch: list[_Item], report: BuildReport, progress) -> None:
    """Embed the batch's new pixels and commit them in one transaction, with the location of every tile (those
    whose pixels are already indexed too, so removing one of two identical files keeps the other)."""
    known = store.known_hashes(i.row.content_hash for i in batch)
    fresh, duplicates, seen = [], [], set()
    for item in batch:
        if item.row.content_hash in known or item.row.content_hash in seen:
            duplicates.append(item.row)
            continue
        seen.add(item.row.content_hash)
        fresh.append(item)
    if fresh:
        vectors = encoder.encode_images([i.array for i in fresh], batch_size=len(fresh), progress=False)
        for item, vector in zip(fresh, vectors):
            item.row.vector = vector
    added = store.add([i.row for i in fresh], also_at=duplicates)
    report.added += added
    report.skipped_existing += len(batch) - added  # counted once committed: a failed batch claims nothing
    if progress is not None:
        progress(len(batch))
