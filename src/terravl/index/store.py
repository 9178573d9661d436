"""The on-disk index: one SQLite database (WAL journal) holding every tile's vector and metadata.

SQLite is the source of truth because its transactions are atomic and durable: tiles are committed in batches,
so a ``kill -9`` at any moment leaves a database that opens and holds every batch committed before the kill, and
nothing half-written. Content hashes are unique, so a re-run skips what is already there. Footprint bounding
boxes live in an R*-tree for fast ``--bbox`` filters. Any approximate-search structure is a cache derived from
this database and can always be rebuilt from it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from terravl.errors import InputError

SCHEMA_VERSION = 1
DB_FILE = "index.sqlite"


class IndexOpenError(InputError):
    """A missing, corrupt or incompatible index."""


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


class IndexStore:
    """Open (or create) the index folder ``path``."""

    def __init__(self, path: str | Path, create: bool = False, model: str | None = None, dim: int | None = None):
        self.path = Path(path)
        db = self.path / DB_FILE
        if not db.is_file():
            if not create:
                raise IndexOpenError(self.path, "no index here (build one with `terravl index build`)")
            self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(db, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._init(create, model, dim)
        except sqlite3.DatabaseError as exc:
            raise IndexOpenError(self.path, f"corrupt or unreadable index database ({exc})") from exc
        self._vectors: np.ndarray | None = None
        self._ids: np.ndarray | None = None

    def _init(self, create: bool, model: str | None, dim: int | None) -> None:
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
                for key, value in {"schema": SCHEMA_VERSION, "model": model, "dim": dim,
                                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}.items():
                    c.execute("INSERT INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        elif int(meta.get("schema", 0)) != SCHEMA_VERSION:
            raise IndexOpenError(self.path, f"index schema {meta.get('schema')} is not supported (expected "
                                         f"{SCHEMA_VERSION})")
        elif model is not None and meta["model"] != model:
            raise IndexOpenError(self.path, f"index was built with model {meta['model']!r}, not {model!r}")

    def transaction(self):
        return _Transaction(self.db)

    # -- metadata -------------------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    @property
    def model(self) -> str:
        return self.meta()["model"]

    @property
    def dim(self) -> int:
        return int(self.meta()["dim"])

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM tiles").fetchone()[0])

    def info(self) -> dict:
        meta = self.meta()
        sources = self.db.execute("SELECT COUNT(DISTINCT source) FROM tiles").fetchone()[0]
        problems = self.db.execute("SELECT COUNT(*) FROM problems").fetchone()[0]
        span = self.db.execute("SELECT MIN(acquired), MAX(acquired) FROM tiles").fetchone()
        bbox = self.db.execute("SELECT MIN(minlon), MIN(minlat), MAX(maxlon), MAX(maxlat) FROM tiles_bbox").fetchone()
        return {"path": str(self.path), "count": self.count(), "sources": sources, "model": meta["model"],
                "dim": int(meta["dim"]), "created": meta.get("created"), "problems": problems,
                "acquired": list(span) if span[0] else None, "bbox": list(bbox) if bbox[0] is not None else None}

    # -- writing ---------------------------------------------------------------------------------------------
    def known_hashes(self, hashes: Iterable[str]) -> set[str]:
        hashes = list(hashes)
        found: set[str] = set()
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            rows = self.db.execute(f"SELECT content_hash FROM tiles WHERE content_hash IN ({','.join('?' * len(chunk))})",
                                   chunk)
            found.update(r[0] for r in rows)
        return found

    def add(self, rows: list[TileRow]) -> int:
        """Insert rows in one transaction; rows whose content hash is already indexed are skipped."""
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
            if added:
                self._bump_version()
        self._vectors = None
        return added

    def remove_source(self, source: str) -> int:
        with self.transaction():
            ids = [r[0] for r in self.db.execute("SELECT id FROM tiles WHERE source = ?", (source,))]
            self.db.executemany("DELETE FROM tiles_bbox WHERE id = ?", [(i,) for i in ids])
            self.db.execute("DELETE FROM tiles WHERE source = ?", (source,))
            if ids:
                self._bump_version()
        self._vectors = None
        return len(ids)

    def _bump_version(self) -> None:
        self.db.execute("INSERT INTO meta VALUES ('version', '1') ON CONFLICT(key) DO UPDATE SET "
                        "value = CAST(value AS INTEGER) + 1")

    @property
    def version(self) -> int:
        """Changes with every add or remove: derived caches (the approximate index) check it."""
        return int(self.meta().get("version", 0))

    def log_problem(self, path: str, error: str) -> None:
        with self.transaction():
            self.db.execute("INSERT INTO problems VALUES (?, ?, ?)", (path, error, time.time()))

    def problems(self) -> list[dict]:
        return [{"path": p, "error": e} for p, e in self.db.execute("SELECT path, error FROM problems ORDER BY at")]

    # -- reading ---------------------------------------------------------------------------------------------
    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every tile, cached in memory until the index changes."""
        if self._vectors is None:
            ids, blobs = [], []
            for tile_id, blob in self.db.execute("SELECT id, vector FROM tiles ORDER BY id"):
                ids.append(tile_id)
                blobs.append(blob)
            self._ids = np.array(ids, dtype=np.int64)
            self._vectors = (np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), self.dim)
                             if ids else np.zeros((0, self.dim), dtype=np.float32))
        return self._ids, self._vectors

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
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, *_):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
