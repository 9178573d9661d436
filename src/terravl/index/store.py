"""The on-disk index: one SQLite database (WAL journal) holding every tile's vector and metadata.

SQLite is the source of truth because its transactions are atomic and durable: tiles are committed in batches,
so a ``kill -9`` at any moment leaves a database that opens and holds every batch committed before the kill, and
nothing half-written. Content hashes are unique, so a re-run skips what is already there; every place a tile's
pixels were found (its *locations*: file and window) is kept, so removing one file never loses another file
with identical pixels. Footprint bounding boxes live in an R*-tree for fast ``--bbox`` filters. Any
approximate-search structure is a cache derived from this database and can always be rebuilt from it.

Every SQLite failure leaves this module as a typed error naming the index folder: a damaged database is an
:class:`IndexCorruptError` (checked cheaply at open, fully by :func:`check_index`), a write that cannot be done
(disk full, read-only location) an :class:`IndexWriteError`.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from terravl.errors import InputError, OutputError, TerraVLError
from terravl.model_versions import DEFAULT_NAME, pinned_model, same_weights

SCHEMA_VERSION = 2
"""2 added the ``locations`` table; a version-1 index is upgraded when first opened for writing (and read as it
is when opened read-only)."""
READABLE_SCHEMAS = (1, 2)
DB_FILE = "index.sqlite"


class IndexOpenError(InputError):
    """A missing, corrupt or incompatible index."""


class IndexCorruptError(IndexOpenError):
    """A damaged index database (``database disk image is malformed``): names the folder and what to do. The CLI
    exits 2 with one line; the server reports the index unavailable (503)."""


class IndexWriteError(OutputError):
    """The index cannot be written (disk full, read-only location or index opened read-only): not the input's
    fault, so the CLI exits 1. Whatever was committed before stays readable."""


def corrupt_message(folder: Path, exc: BaseException | str) -> str:
    return (f"corrupt index database {DB_FILE} ({exc}): restore the folder from a backup or rebuild it with "
            f"`terravl index build`; `terravl index check {folder}` lists the damage")


def bbox_of(footprint: dict | None) -> tuple[float, float, float, float] | None:
    """(minlon, minlat, maxlon, maxlat) of a GeoJSON polygon, None without one."""
    if not footprint:
        return None
    lons = [p[0] for p in footprint["coordinates"][0]]
    lats = [p[1] for p in footprint["coordinates"][0]]
    return (min(lons), min(lats), max(lons), max(lats))


@dataclass
class TileRow:
    """One indexed item: an image, or one tile of a raster."""

    content_hash: str
    source: str
    window: dict | None
    footprint: dict | None
    bbox: tuple[float, float, float, float] | None
    crs: str | None
    acquired: str | None
    vector: np.ndarray
    id: int | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.source, "window": self.window, "footprint": self.footprint,
                "crs": self.crs, "acquired": self.acquired, "content_hash": self.content_hash}


def _sqlite_errors(writing: bool = False):
    """Turn any SQLite error of the wrapped method into the store's typed errors (see :meth:`IndexStore._error`)."""
    def wrap(method):
        @functools.wraps(method)
        def run(self: "IndexStore", *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                error = self._error(exc, writing)
                if error is None:
                    raise
                raise error from exc
        return run
    return wrap


def _connect(db: Path, readonly: bool) -> tuple[sqlite3.Connection, bool]:
    """(connection, immutable). Read-only connections use ``mode=ro``; where the folder cannot be written (a
    read-only mount) and the WAL's ``-wal``/``-shm`` files are not already there, ``immutable=1`` too, which
    needs neither file (nobody can be writing a folder that cannot be written)."""
    if not readonly:
        return sqlite3.connect(db, timeout=30, isolation_level=None), False
    wal_files = all(Path(f"{db}{suffix}").is_file() for suffix in ("-wal", "-shm"))
    immutable = not os.access(db.parent, os.W_OK) and not wal_files
    uri = db.resolve().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
    return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None), immutable


_OPEN_PROBES = (
    "PRAGMA quick_check(meta)",
    "SELECT id, length(vector) FROM tiles ORDER BY id LIMIT 1",
    "SELECT id, length(vector) FROM tiles ORDER BY id DESC LIMIT 1",
    "SELECT content_hash FROM tiles ORDER BY content_hash LIMIT 1",
    "SELECT content_hash FROM tiles ORDER BY content_hash DESC LIMIT 1",
    "SELECT source FROM tiles INDEXED BY tiles_source ORDER BY source LIMIT 1",
    "SELECT source FROM tiles INDEXED BY tiles_source ORDER BY source DESC LIMIT 1",
    "SELECT acquired FROM tiles INDEXED BY tiles_acquired ORDER BY acquired LIMIT 1",
    "SELECT acquired FROM tiles INDEXED BY tiles_acquired ORDER BY acquired DESC LIMIT 1",
    "SELECT id, minlon FROM tiles_bbox LIMIT 1",
    "SELECT path FROM problems LIMIT 1",
)
"""The cheap check at open: the schema, the meta table in full, and the root and both end leaves of every other
b-tree (about 1 ms whatever the size; a full check reads every page, ~50 ms per 10,000 vectors of 512 floats, so
it is ``terravl index check``'s job)."""
_LOCATION_PROBES = ("SELECT id FROM locations ORDER BY id LIMIT 1",
                    "SELECT id FROM locations ORDER BY id DESC LIMIT 1",
                    "SELECT source FROM locations INDEXED BY locations_source ORDER BY source LIMIT 1",
                    "SELECT source FROM locations INDEXED BY locations_source ORDER BY source DESC LIMIT 1")


class IndexStore:
    """Open (or create) the index folder ``path``.

    ``readonly`` True opens the database read-only (SQLite ``mode=ro``, ``immutable=1`` on a folder that cannot
    be written), as search, ``index info``/``check`` and the server do, so an index on a read-only mount works
    and nothing is written; None (the default) opens it read-only only when the folder or file is not writable.
    """

    def __init__(self, path: str | Path, create: bool = False, model: str | None = None, dim: int | None = None,
                 readonly: bool | None = None, weights: str = ""):
        self.path = Path(path)
        db = self.path / DB_FILE
        if not db.is_file():
            if (self.path / "shards.json").is_file():  # terravl.index.shards: opened with open_index
                raise IndexOpenError(self.path, "is a sharded index (shards.json): this needs a single index; give "
                                                "one of its shard folders, or use a command that takes shards")
            if not create:
                raise IndexOpenError(self.path, "no index here (build one with `terravl index build`)")
            if readonly:
                raise IndexOpenError(self.path, "no index here to open read-only")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise IndexWriteError(self.path, f"cannot create the index folder ({exc.strerror or exc})") from None
            readonly = False
        elif readonly is None:
            readonly = not (os.access(db, os.W_OK) and os.access(self.path, os.W_OK))
        self.readonly = bool(readonly)
        self.on_damage: Callable[[IndexCorruptError], Any] | None = None
        """Called with the error whenever this store finds its database damaged (the server marks the index
        unavailable)."""
        self._vectors: np.ndarray | None = None
        self._count: tuple[int, int] | None = None
        """(store version, tile count): COUNT(*) walks a whole index b-tree (tens of ms at a million tiles), and
        every search asks; the version (one row of ``meta``) says when to count again."""
        self._ids: np.ndarray | None = None
        self._meta: tuple[int, dict] | None = None
        """A read-only store's (``PRAGMA data_version``, meta): every search reads the version and model several
        times, and the pragma (no table read, no JSON) says whether another connection has committed since."""
        try:
            self.db, self.immutable = _connect(db, self.readonly)
        except sqlite3.DatabaseError as exc:
            raise self._error(exc, writing=create) or exc from exc
        try:
            self._open(create, model, dim, weights)
        except (sqlite3.DatabaseError, IndexOpenError):
            self.db.close()
            raise

    @_sqlite_errors()
    def _open(self, create: bool, model: str | None, dim: int | None, weights: str = "") -> None:
        if not self.readonly:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        else:
            self.db.execute("PRAGMA query_only=1")  # a second lock: no statement of this connection writes
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not self.readonly:
            self._init(create, model, dim, tables, weights)
        elif "meta" not in tables or not self.meta():
            raise IndexOpenError(self.path, "index has no metadata (model, dimensions); it is not a TerraVL index")
        self._check_meta(model, weights)
        self.has_locations = "locations" in tables or not self.readonly
        for sql in _OPEN_PROBES + (_LOCATION_PROBES if self.has_locations else ()):
            rows = self.db.execute(sql).fetchall()
            if sql.startswith("PRAGMA") and rows != [("ok",)]:
                raise self._damaged(rows[0][0] if rows else "quick_check failed")

    @_sqlite_errors(writing=True)
    def _init(self, create: bool, model: str | None, dim: int | None, tables: set[str], weights: str = "") -> None:
        c = self.db
        c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        c.execute("""CREATE TABLE IF NOT EXISTS tiles (
            id INTEGER PRIMARY KEY, content_hash TEXT UNIQUE NOT NULL, source TEXT NOT NULL, window TEXT,
            footprint TEXT, crs TEXT, acquired TEXT, vector BLOB NOT NULL, added REAL NOT NULL)""")
        c.execute("CREATE INDEX IF NOT EXISTS tiles_source ON tiles(source)")
        c.execute("CREATE INDEX IF NOT EXISTS tiles_acquired ON tiles(acquired)")
        c.execute("CREATE VIRTUAL TABLE IF NOT EXISTS tiles_bbox USING rtree(id, minlon, maxlon, minlat, maxlat)")
        c.execute("CREATE TABLE IF NOT EXISTS problems (path TEXT, error TEXT, at REAL)")
        meta = self.meta()
        if not meta:
            if not create or model is None or dim is None:
                raise IndexOpenError(self.path, "index has no metadata (model, dimensions); it is not a TerraVL index")
            with self.transaction():
                self._create_locations(fill=False)
                for key, value in {"schema": SCHEMA_VERSION, "model": model, "dim": dim, "weights": weights,
                                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}.items():
                    c.execute("INSERT INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        elif "locations" not in tables and int(meta.get("schema", 0)) in READABLE_SCHEMAS:
            with self.transaction():  # upgrade a version-1 index: every tile's one location is its source
                self._create_locations(fill=True)
                c.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (json.dumps(SCHEMA_VERSION),))

    def _create_locations(self, fill: bool) -> None:
        """Every place a tile's pixels were found: file and window ('' for a whole image), with that place's
        footprint, CRS and date, so the tile can move to another location when its file is removed."""
        self.db.execute("""CREATE TABLE IF NOT EXISTS locations (
            id INTEGER PRIMARY KEY, tile_id INTEGER NOT NULL, source TEXT NOT NULL, window TEXT NOT NULL,
            footprint TEXT, crs TEXT, acquired TEXT, UNIQUE (tile_id, source, window))""")
        self.db.execute("CREATE INDEX IF NOT EXISTS locations_source ON locations(source)")
        if fill:
            self.db.execute("INSERT OR IGNORE INTO locations (tile_id, source, window, footprint, crs, acquired) "
                            "SELECT id, source, COALESCE(window, ''), footprint, crs, acquired FROM tiles ORDER BY id")

    def _check_meta(self, model: str | None, weights: str = "") -> None:
        meta = self.meta()
        if int(meta.get("schema", 0)) not in READABLE_SCHEMAS:
            raise IndexOpenError(self.path, f"index schema {meta.get('schema')} is not supported (expected "
                                            f"{SCHEMA_VERSION})")
        if model is not None:
            self._check_model(model, weights)

    def _check_model(self, model: str, weights: str) -> None:
        """Refuse another model, or other weights under the same name (``terravl-default`` after a new default
        shipped; a model retrained in place): their vectors are not comparable with the index's."""
        recorded, built = self.model, self.meta().get("weights") or ""
        wanted = pinned_model(model, weights) if weights else model
        if recorded != wanted:
            raise IndexOpenError(self.path, f"index was built with model {recorded!r}; the encoder given is {wanted!r}"
                                 + (f" (give --model {recorded} to use it)" if wanted == DEFAULT_NAME else ""))
        if built and weights and not same_weights(built, weights):
            raise IndexOpenError(self.path, f"index was built with other weights of {model!r} (fingerprint {built}, "
                                            f"installed now {weights}): its vectors do not match this model; "
                                            f"rebuild it into a new folder")

    def check_encoder(self, encoder) -> None:
        """The query encoder must be the model and weights the vectors came from."""
        from terravl.models.feature_cache import encoder_fingerprint

        self._check_model(encoder.source or encoder.name, encoder_fingerprint(encoder))

    def _error(self, exc: sqlite3.DatabaseError, writing: bool) -> TerraVLError | None:
        """The typed error for a SQLite error: damage → :class:`IndexCorruptError` (and ``on_damage``), a failed
        write → :class:`IndexWriteError`, a failed read → :class:`IndexOpenError`; None for a programming error
        (a closed store, a constraint), which stays as it is."""
        name = getattr(exc, "sqlite_errorname", None) or ""
        text = str(exc)
        if (name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or type(exc) is sqlite3.DatabaseError
                or "malformed" in text or "not a database" in text):
            return self._damaged(text)
        if not isinstance(exc, sqlite3.OperationalError):
            return None
        if writing:
            if name.startswith("SQLITE_READONLY") or "readonly" in text:
                why = "opened read-only" if getattr(self, "readonly", False) else "the location is read-only"
                return IndexWriteError(self.path, f"cannot write the index: {why} ({text}); what was committed "
                                                  f"before is kept")
            return IndexWriteError(self.path, f"cannot write the index ({text}); what was committed before is "
                                              f"kept: free space or fix the folder's permissions, then re-run")
        return IndexOpenError(self.path, f"cannot read the index database {DB_FILE} ({text})")

    def _damaged(self, why: str) -> IndexCorruptError:
        error = IndexCorruptError(self.path, corrupt_message(self.path, why))
        if getattr(self, "on_damage", None) is not None:
            self.on_damage(error)
        return error

    def _writable(self) -> None:
        if self.readonly:
            raise IndexWriteError(self.path, "the index is open read-only (its folder or database file is not "
                                             "writable); nothing was changed")

    def transaction(self):
        return _Transaction(self.db)

    # -- metadata -------------------------------------------------------------------------------------------
    @_sqlite_errors()
    def meta(self) -> dict:
        """The index's metadata (a new dict each call)."""
        if not self.readonly:  # this connection's own writes do not change data_version: read every time
            return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}
        stamp = self.db.execute("PRAGMA data_version").fetchone()[0]
        if self._meta is None or self._meta[0] != stamp:
            self._meta = (stamp, {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")})
        return dict(self._meta[1])

    @property
    def model(self) -> str:
        """The registry name (or path) whose weights made the vectors: ``terravl-default`` recorded before v3 reads
        as the version it was (:func:`terravl.model_versions.pinned_model`)."""
        meta = self.meta()
        return pinned_model(meta["model"], meta.get("weights"), meta.get("created"))

    @property
    def dim(self) -> int:
        return int(self.meta()["dim"])

    @_sqlite_errors()
    def count(self) -> int:
        version = self.version
        if self._count is None or self._count[0] != version:
            self._count = (version, int(self.db.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]))
        return self._count[1]

    @_sqlite_errors()
    def info(self) -> dict:
        meta = self.meta()
        table = "locations" if self.has_locations else "tiles"
        sources = self.db.execute(f"SELECT COUNT(DISTINCT source) FROM {table}").fetchone()[0]
        locations = self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        problems = self.db.execute("SELECT COUNT(*) FROM problems").fetchone()[0]
        span = self.db.execute("SELECT MIN(acquired), MAX(acquired) FROM tiles").fetchone()
        bbox = self.db.execute("SELECT MIN(minlon), MIN(minlat), MAX(maxlon), MAX(maxlat) FROM tiles_bbox").fetchone()
        return {"path": str(self.path), "count": self.count(), "sources": sources, "locations": locations,
                "model": self.model, "dim": int(meta["dim"]),
                "created": meta.get("created"),
                "problems": problems, "acquired": list(span) if span[0] else None,
                "bbox": list(bbox) if bbox[0] is not None else None}

    # -- writing ---------------------------------------------------------------------------------------------
    @_sqlite_errors()
    def known_hashes(self, hashes: Iterable[str]) -> set[str]:
        hashes = list(hashes)
        found: set[str] = set()
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            rows = self.db.execute(f"SELECT content_hash FROM tiles WHERE content_hash IN ({','.join('?' * len(chunk))})",
                                   chunk)
            found.update(r[0] for r in rows)
        return found

    @_sqlite_errors(writing=True)
    def add(self, rows: list[TileRow], also_at: Iterable[TileRow] = ()) -> int:
        """Insert rows in one transaction; rows whose content hash is already indexed are skipped. Every row's
        location is recorded, and so is each of ``also_at``: further locations of pixels already indexed or among
        ``rows`` (no vector needed). Returns the number of tiles added."""
        self._writable()
        added = 0
        with self.transaction():
            for row in rows:
                vector = np.ascontiguousarray(row.vector, dtype=np.float32)
                if vector.shape != (self.dim,):
                    raise ValueError(f"vector of {row.source} has shape {vector.shape}, index expects ({self.dim},)")
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO tiles (content_hash, source, window, footprint, crs, acquired, vector, "
                    "added) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.content_hash, row.source, json.dumps(row.window) if row.window else None,
                     json.dumps(row.footprint) if row.footprint else None, row.crs, row.acquired, vector.tobytes(),
                     time.time()))
                if cur.rowcount:
                    added += 1
                    if row.bbox is not None:
                        minlon, minlat, maxlon, maxlat = row.bbox
                        self.db.execute("INSERT INTO tiles_bbox VALUES (?, ?, ?, ?, ?)",
                                        (cur.lastrowid, minlon, maxlon, minlat, maxlat))
            for row in [*rows, *also_at]:
                self.db.execute(
                    "INSERT OR IGNORE INTO locations (tile_id, source, window, footprint, crs, acquired) "
                    "SELECT id, ?, ?, ?, ?, ? FROM tiles WHERE content_hash = ?",
                    (row.source, json.dumps(row.window) if row.window else "",
                     json.dumps(row.footprint) if row.footprint else None, row.crs, row.acquired, row.content_hash))
            if added:
                self._bump_version()
        self._vectors = None
        return added

    @_sqlite_errors(writing=True)
    def remove_source(self, source: str) -> int:
        """Remove the locations in file ``source``; a tile goes only with its last location, and a tile whose
        primary location (the path search reports) was removed moves to its next one. Returns the number of
        locations removed (the file's tiles, as indexed)."""
        self._writable()
        with self.transaction():
            tile_ids = sorted({r[0] for r in self.db.execute("SELECT tile_id FROM locations WHERE source = ?",
                                                             (source,))})
            removed = self.db.execute("DELETE FROM locations WHERE source = ?", (source,)).rowcount
            changed = False
            for tile_id in tile_ids + [r[0] for r in self.db.execute(  # tiles written without a location
                    "SELECT id FROM tiles WHERE source = ? AND id NOT IN (SELECT tile_id FROM locations)",
                    (source,)) if r[0] not in tile_ids]:
                nxt = self.db.execute("SELECT source, window, footprint, crs, acquired FROM locations WHERE "
                                      "tile_id = ? ORDER BY id LIMIT 1", (tile_id,)).fetchone()
                if nxt is None:
                    removed += tile_id not in tile_ids
                    self.db.execute("DELETE FROM tiles_bbox WHERE id = ?", (tile_id,))
                    self.db.execute("DELETE FROM tiles WHERE id = ?", (tile_id,))
                    changed = True
                elif self.db.execute("SELECT source FROM tiles WHERE id = ?", (tile_id,)).fetchone()[0] == source:
                    other, window, footprint, crs, acquired = nxt
                    self.db.execute("UPDATE tiles SET source = ?, window = ?, footprint = ?, crs = ?, acquired = ? "
                                    "WHERE id = ?", (other, window or None, footprint, crs, acquired, tile_id))
                    self.db.execute("DELETE FROM tiles_bbox WHERE id = ?", (tile_id,))
                    box = bbox_of(json.loads(footprint) if footprint else None)
                    if box is not None:
                        self.db.execute("INSERT INTO tiles_bbox VALUES (?, ?, ?, ?, ?)",
                                        (tile_id, box[0], box[2], box[1], box[3]))
                    changed = True
            if changed:
                self._bump_version()
        self._vectors = None
        return removed

    @_sqlite_errors()
    def locations(self, tile_id: int) -> list[dict]:
        """Every place tile ``tile_id`` was found, its primary location first."""
        if not self.has_locations:
            row = self.rows([tile_id]).get(tile_id)
            return [] if row is None else [{"path": row.source, "window": row.window}]
        primary = self.db.execute("SELECT source, COALESCE(window, '') FROM tiles WHERE id = ?",
                                  (tile_id,)).fetchone()
        rows = self.db.execute("SELECT source, window FROM locations WHERE tile_id = ? ORDER BY id", (tile_id,))
        found = sorted(rows, key=lambda r: tuple(r) != tuple(primary or ()))
        return [{"path": s, "window": json.loads(w) if w else None} for s, w in found]

    def _bump_version(self) -> None:
        self.db.execute("INSERT INTO meta VALUES ('version', '1') ON CONFLICT(key) DO UPDATE SET "
                        "value = CAST(value AS INTEGER) + 1")

    @property
    def version(self) -> int:
        """Changes with every add or remove: derived caches (the approximate index) check it."""
        return int(self.meta().get("version", 0))

    @_sqlite_errors(writing=True)
    def log_problem(self, path: str, error: str) -> None:
        self._writable()
        with self.transaction():
            self.db.execute("INSERT INTO problems VALUES (?, ?, ?)", (path, error, time.time()))

    @_sqlite_errors()
    def problems(self) -> list[dict]:
        return [{"path": p, "error": e} for p, e in self.db.execute("SELECT path, error FROM problems ORDER BY at")]

    # -- reading ---------------------------------------------------------------------------------------------
    @_sqlite_errors()
    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every tile, cached in memory until the index changes."""
        if self._vectors is None:
            ids, blobs = [], []
            for tile_id, blob in self.db.execute("SELECT id, vector FROM tiles ORDER BY id"):
                ids.append(tile_id)
                blobs.append(blob)
            dim = self.dim
            if any(len(b) != 4 * dim for b in blobs):
                raise self._damaged(f"a vector is not {dim} float32 values")
            self._ids = np.array(ids, dtype=np.int64)
            self._vectors = (np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
                             if ids else np.zeros((0, dim), dtype=np.float32))
        return self._ids, self._vectors

    @_sqlite_errors()
    def filter_ids(self, bbox: tuple[float, float, float, float] | None = None, date_from: str | None = None,
                   date_to: str | None = None) -> np.ndarray | None:
        """Ids whose footprint intersects ``bbox`` (minlon, minlat, maxlon, maxlat) and whose acquisition date lies
        in [date_from, date_to]; None when no filter is given."""
        if bbox is None and date_from is None and date_to is None:
            return None
        clauses, args = [], []
        if bbox is not None:
            minlon, minlat, maxlon, maxlat = bbox
            clauses.append("id IN (SELECT id FROM tiles_bbox WHERE maxlon >= ? AND minlon <= ? AND maxlat >= ? AND "
                           "minlat <= ?)")
            args += [minlon, maxlon, minlat, maxlat]
        if date_from is not None:
            clauses.append("acquired >= ?")
            args.append(date_from)
        if date_to is not None:
            clauses.append("acquired <= ?")
            args.append(date_to)
        rows = self.db.execute(f"SELECT id FROM tiles WHERE {' AND '.join(clauses)}", args)
        return np.array([r[0] for r in rows], dtype=np.int64)

    @_sqlite_errors()
    def rows(self, ids: Iterable[int]) -> dict[int, TileRow]:
        ids = [int(i) for i in ids]
        out = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for r in self.db.execute(f"SELECT id, content_hash, source, window, footprint, crs, acquired FROM tiles "
                                     f"WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                out[r[0]] = TileRow(r[1], r[2], json.loads(r[3]) if r[3] else None,
                                    json.loads(r[4]) if r[4] else None, None, r[5], r[6], np.zeros(0), r[0])
        return out

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "IndexStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()



class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; on any error (a failed COMMIT included: disk full) the transaction is
    rolled back, so a batch is all in or all out."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.DatabaseError:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self.db.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass


def check_index(path: str | Path) -> dict:
    """A full check of the index folder ``path``: SQLite's ``integrity_check`` over every page, then the tables'
    consistency (metadata, vector lengths and values, locations, bounding boxes). Read-only. Returns ``{"index",
    "ok", "tiles", "problems"}``; raises :class:`IndexOpenError` only when there is no index database at all."""
    folder = Path(path)
    db = folder / DB_FILE
    if not db.is_file():
        raise IndexOpenError(folder, "no index here (build one with `terravl index build`)")
    problems: list[str] = []
    tiles: int | None = None
    try:
        conn, _ = _connect(db, readonly=True)
    except sqlite3.DatabaseError as exc:
        return {"index": str(folder), "ok": False, "tiles": None, "problems": [f"cannot open {DB_FILE}: {exc}"]}
    try:
        conn.execute("PRAGMA query_only=1")
        report = [r[0] for r in conn.execute("PRAGMA integrity_check(100)")]
        if report != ["ok"]:
            problems += report
        else:
            tiles = _check_tables(conn, problems)
    except sqlite3.DatabaseError as exc:
        problems.append(f"{DB_FILE}: {exc}")
    finally:
        conn.close()
    return {"index": str(folder), "ok": not problems, "tiles": tiles, "problems": problems}


def _check_tables(conn: sqlite3.Connection, problems: list[str]) -> int | None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = {"meta", "tiles", "tiles_bbox", "problems"} - tables
    if missing:
        problems.append(f"tables missing: {', '.join(sorted(missing))} (not a TerraVL index)")
        return None
    meta = {k: v for k, v in conn.execute("SELECT key, value FROM meta")}
    try:
        dim = int(json.loads(meta["dim"]))
        json.loads(meta["model"])
        if int(json.loads(meta["schema"])) not in READABLE_SCHEMAS:
            problems.append(f"meta: schema {meta['schema']} is not supported")
    except (KeyError, ValueError, TypeError) as exc:
        problems.append(f"meta: missing or unreadable entry ({exc})")
        return None
    tiles = int(conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0])
    bad_length = conn.execute("SELECT COUNT(*) FROM tiles WHERE length(vector) != ?", (4 * dim,)).fetchone()[0]
    if bad_length:
        problems.append(f"tiles: {bad_length} vector(s) are not {dim} float32 values")
    else:
        not_finite = 0
        for (blob,) in conn.execute("SELECT vector FROM tiles"):
            not_finite += not np.isfinite(np.frombuffer(blob, dtype=np.float32)).all()
        if not_finite:
            problems.append(f"tiles: {not_finite} vector(s) hold NaN or infinite values")
    orphans = conn.execute("SELECT COUNT(*) FROM tiles_bbox WHERE id NOT IN (SELECT id FROM tiles)").fetchone()[0]
    if orphans:
        problems.append(f"tiles_bbox: {orphans} box(es) of tiles that are not indexed")
    if "locations" in tables:
        homeless = conn.execute("SELECT COUNT(*) FROM tiles WHERE id NOT IN (SELECT tile_id FROM locations)"
                                ).fetchone()[0]
        if homeless:
            problems.append(f"locations: {homeless} tile(s) have no location")
        dangling = conn.execute("SELECT COUNT(*) FROM locations WHERE tile_id NOT IN (SELECT id FROM tiles)"
                                ).fetchone()[0]
        if dangling:
            problems.append(f"locations: {dangling} location(s) of tiles that are not indexed")
    return tiles
