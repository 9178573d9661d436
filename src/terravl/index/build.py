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
from terravl.io.remote import is_remote, to_url
from terravl.io.stac import StacAsset, is_stac_file, iter_stac
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
    pixels: object = None   # the encoder's input tensor, prepared by the reading thread (build_index)


def expand_sources(sources: Iterable[str | Path]) -> Iterator[Path | str]:
    """Files as given; folders walked recursively for image files (sorted, so runs are repeatable). A name with an
    image suffix that is not a readable file (a broken link, a link loop) is yielded too, so that reading it
    reports the problem instead of skipping it without a word. ``s3://`` URLs (and ``/vsis3/`` paths) are yielded
    as ``s3://`` strings, an ``s3://bucket/prefix/`` expanded to the raster objects under it
    (:func:`terravl.io.remote.expand`)."""
    from terravl.io.remote import expand

    for source in sources:
        if is_remote(source):
            yield from expand(source, IMAGE_SUFFIXES)
            continue
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


def source_name(path: Path | str | StacAsset) -> str:
    """The name an index records for a source: a file's absolute path, an object's ``s3://`` URL, or for a STAC
    item the asset's (:attr:`~terravl.io.stac.StacAsset.source`)."""
    if isinstance(path, StacAsset):
        return path.source
    return to_url(path) if is_remote(path) else str(Path(path).resolve())


def index_sources(sources: Iterable[str | Path], vrt_dir: str | Path) -> Iterator[Path | str | StacAsset | Problem]:
    """What ``index build`` reads: :func:`expand_sources`, and each STAC document (a ``.json`` catalog,
    collection, item collection or item) as its items' assets or the problems found walking it
    (:func:`terravl.io.stac.iter_stac`; band-stacking VRTs go to ``vrt_dir``). Items already expanded (a STAC
    asset, a problem: a sharded build splits them among its shards) pass through as they are."""
    for source in sources:
        if isinstance(source, (StacAsset, Problem)):
            yield source
        elif is_stac_file(source):
            yield from iter_stac(source, vrt_dir)
        else:
            yield from expand_sources([source])


def items_of(path: Path | str | StacAsset, tile_size: int, overlap: int, whole_below: int) -> Iterator[_Item]:
    """The indexable items of one file: the whole image if both sides ≤ ``whole_below``, else its tiles (tiles
    with no valid pixel — all nodata — are left out). A STAC asset is read with the item's bands, dated by the
    item, and placed by the item's geometry (its bbox for tiles) when the raster has no georeference."""
    stac = path if isinstance(path, StacAsset) else None
    target, bands = (stac.href, stac.bands or "auto") if stac else (path, "auto")
    info = raster_info(target)  # first: an unreadable file (a link loop…) is reported in the readers' words
    source = source_name(path)
    acquired = (stac.acquired if stac else None) or info.acquired
    if info.width <= whole_below and info.height <= whole_below:
        from terravl.io import read_image

        image = read_image(target, bands=bands)
        array = np.ascontiguousarray(image.array)
        footprint = image.footprint() or (stac.geometry if stac else None)
        yield _Item(array, TileRow(content_hash(array), source, None, footprint, bbox_of(footprint),
                                   info.georef.crs_name if info.georef else None, acquired, np.zeros(0)))
        return
    placed = _bbox_georef(stac.bbox, info.width, info.height) if stac and info.georef is None and stac.bbox else None
    for tile in iter_tiles(target, tile_size, overlap, bands=bands):
        if not tile.valid.any():  # all nodata (outside the scene): nothing to search for
            continue
        array = np.ascontiguousarray(tile.array)
        footprint = tile.footprint or (placed.footprint(tile.window) if placed else None)
        yield _Item(array, TileRow(content_hash(array), source, tile.window.to_dict(), footprint, bbox_of(footprint),
                                   tile.georef.crs_name if tile.georef else None, acquired, np.zeros(0)))


def source_items(path: Path | str | StacAsset | Problem, tile_size: int, overlap: int,
                 whole_below: int) -> Iterator[_Item | Problem]:
    """:func:`items_of` one source, ending in a :class:`Problem` instead of an exception when the source cannot be
    read (after the items already read): one bad file never stops a build. Shared by the threaded build and the
    Ray tasks (:mod:`terravl.index.ray_build`)."""
    if isinstance(path, Problem):  # a STAC document or item that names nothing readable
        yield Problem(shown(path.path), shown(path.error))
        return
    # a STAC item is reported as catalog.json#item-id, with the asset's file in the message
    name, about = (path.label, f"{path.href}: ") if isinstance(path, StacAsset) else (path, "")
    local = not isinstance(path, StacAsset) and not is_remote(path)
    if local and not is_utf8(os.path.abspath(path)):  # the index stores names as text, to reopen them
        yield Problem(shown(path), "file name is not valid UTF-8; rename the file to index it")
        return
    try:
        yield from items_of(path, tile_size, overlap, whole_below)
    except InputError as exc:
        yield Problem(shown(name), shown(about + exc.message))
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the build
        yield Problem(shown(name), shown(f"{about}{exc.__class__.__name__}: {exc}"))


def _bbox_georef(bbox: tuple[float, float, float, float], width: int, height: int):
    """A north-up WGS84 georeference spreading a ``width`` × ``height`` raster over a STAC item's bbox: where
    the tiles of an item whose raster has no georeference of its own lie, as near as the item says."""
    from affine import Affine
    from pyproj import CRS

    from terravl.io.georef import GeoReference

    west, south, east, north = bbox
    transform = Affine((east - west) / width, 0, west, 0, -(north - south) / height, north)
    return GeoReference(CRS.from_epsg(4326).to_wkt(), transform, "EPSG:4326")


def build_index(sources: Iterable[str | Path], encoder, out: str | Path, tile_size: int = 256, overlap: int = 0,
                whole_below: int | None = None, batch_size: int = 64,
                progress: Callable[[int], None] | None = None) -> BuildReport:
    """Index ``sources`` (files, folders, ``s3://`` objects and prefixes, STAC ``.json`` documents) into ``out``
    with ``encoder``; returns what was done.

    Unreadable files are reported (in the returned report and the index's problem log) and skipped. A write
    that fails (disk full, read-only location) stops the build with :class:`IndexWriteError` saying how many tiles
    of this run were committed (they stay readable, and a re-run resumes); its ``report`` counts only those.
    """
    whole_below = whole_below or 2 * tile_size
    from terravl.models.feature_cache import encoder_fingerprint

    store = IndexStore(out, create=True, model=encoder.source or encoder.name, dim=encoder.embed_dim,
                       weights=encoder_fingerprint(encoder))
    vrt_dir = Path(out) / "stac"  # VRTs stacking STAC band assets live with the index that names them
    report = BuildReport()
    items: queue.Queue = queue.Queue(maxsize=2 * batch_size)  # prepared tiles: ~0.6 MB each at 224²
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for path in index_sources(sources, vrt_dir):
                if stop.is_set():
                    return
                report.files += 1
                for item in source_items(path, tile_size, overlap, whole_below):
                    if stop.is_set():
                        return
                    if isinstance(item, _Item):  # resize and normalise here, beside the encoder's forward pass
                        try:
                            item.pixels = encoder.prepare(item.array)
                        except Exception:  # noqa: BLE001 - _commit prepares it again and reports what fails
                            item.pixels = None
                    items.put(item)
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
        if all(i.pixels is not None for i in fresh):
            vectors = encoder.encode_prepared([i.pixels for i in fresh])
        else:
            vectors = encoder.encode_images([i.array for i in fresh], batch_size=len(fresh), progress=False)
        for item, vector in zip(fresh, vectors):
            item.row.vector = vector
    added = store.add([i.row for i in fresh], also_at=duplicates)
    report.added += added
    report.skipped_existing += len(batch) - added  # counted once committed: a failed batch claims nothing
    if progress is not None:
        progress(len(batch))
