"""The knowledge-base file: one SQLite database (WAL journal) holding every item — text chunks in an FTS5 table
(BM25), dense text and image vectors from one encoder, footprints in an R*-tree, dates, labels and sources.

It is built like the archive index (:mod:`terravl.index.store`) and for the same reason: items are committed in
batches, each one transaction, so a ``kill -9`` at any moment leaves a file that opens and holds every batch
committed before, and nothing half-written. Item keys are unique (an image's pixel hash, a passage's text and
fields), so a re-run skips what is there; each source that was read to its end is recorded with its content hash,
so a re-run does not even read it again, and another file with the same bytes is reported as a duplicate.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from terravl.errors import InputError, OutputError
from terravl.model_versions import pinned_model, same_weights
from terravl.index.store import _connect, _Transaction

SCHEMA_VERSION = 1
KINDS = ("image", "text")


class KBOpenError(InputError):
    """A missing, damaged or incompatible knowledge base (exit 2, one line naming the file)."""


class KBWriteError(OutputError):
    """The knowledge base cannot be written (disk full, read-only location): exit 1; committed batches stay."""


@dataclass
class KBItem:
    """One piece of evidence: an image (with its caption or sidecar text, if any) or a text chunk."""

    kind: str
    key: str
    source: str
    ref: str = ""
    """Where in the source: ``#images[12]``, ``row 5``, ``line 3``, ``§ Heading``, a pixel window."""
    title: str | None = None
    text: str | None = None
    url: str | None = None
    lon: float | None = None
    lat: float | None = None
    bbox: tuple[float, float, float, float] | None = None
    footprint: dict | None = None
    date: str | None = None
    label: str | None = None
    """Scene class, where the source gives one (caption datasets, scene-class descriptions, a ``label`` column)."""
    image: object = None
    """Pixels to embed (kind ``image``), dropped once the vector is computed."""
    text_vec: np.ndarray | None = None
    image_vec: np.ndarray | None = None
    id: int | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "source": self.source, "ref": self.ref or None,
                "title": self.title, "text": self.text, "url": self.url, "lon": self.lon, "lat": self.lat,
                "footprint": self.footprint, "date": self.date, "label": self.label}


def _errors(writing: bool = False):
    """SQLite errors of the wrapped method as typed errors naming the knowledge base."""
    def wrap(method):
        @functools.wraps(method)
        def run(self: "KBStore", *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                text = str(exc)
                if "malformed" in text or "not a database" in text or type(exc) is sqlite3.DatabaseError:
                    raise KBOpenError(self.path, f"damaged knowledge base ({text}); rebuild it with "
                                                 f"`terravl kb build`") from None
                if writing and isinstance(exc, sqlite3.OperationalError):
                    raise KBWriteError(self.path, f"cannot write the knowledge base ({text}); what was committed "
                                                  f"before is kept: free space or fix permissions, then re-run") \
                        from None
                if isinstance(exc, sqlite3.OperationalError):
                    raise KBOpenError(self.path, f"cannot read the knowledge base ({text})") from None
                raise
        return run
    return wrap


@dataclass
class Vectors:
    """The in-memory vectors of one kind: ``ids[i]`` owns row ``i`` of ``matrix``."""

    ids: np.ndarray
    matrix: np.ndarray
    position: dict = field(default_factory=dict)


class KBStore:
    """Open (or create, with ``model`` and ``dim``) the knowledge-base file ``path``. ``readonly`` None opens it
    read-only when the file or its folder cannot be written."""

    def __init__(self, path: str | Path, create: bool = False, model: str | None = None, dim: int | None = None,
                 readonly: bool | None = None, weights: str = "", text_side: dict | None = None):
        self.path = Path(path)
        self._text_side = text_side
        if self.path.is_dir():
            raise KBOpenError(self.path, "is a folder; a knowledge base is one file (e.g. site.kb)")
        if not self.path.is_file():
            if not create:
                raise KBOpenError(self.path, "no knowledge base here (build one with `terravl kb build`)")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KBWriteError(self.path, f"cannot create its folder ({exc.strerror or exc})") from None
            readonly = False
        elif readonly is None:
            readonly = not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK))
        self.readonly = bool(readonly)
        self._vectors: dict[str, Vectors] = {}
        self._cached_version: int | None = None
        self._df: dict[str, int] = {}
        self._df_version: int | None = None
        creating = not self.path.is_file()
        try:
            self.db, _ = _connect(self.path, self.readonly)
        except sqlite3.DatabaseError as exc:
            if creating:  # where it should be written is the problem, not the input
                raise KBWriteError(self.path, f"cannot create the knowledge base ({exc})") from None
            raise KBOpenError(self.path, f"cannot open ({exc})") from None
        try:
            self._open(create, model, dim, weights)
        except BaseException:
            self.db.close()
            raise

    @_errors()
    def _open(self, create: bool, model: str | None, dim: int | None, weights: str = "") -> None:
        c = self.db
        if self.readonly:
            c.execute("PRAGMA query_only=1")
        else:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            if not create or self.readonly or model is None or dim is None:
                raise KBOpenError(self.path, "not a TerraVL knowledge base (no metadata)")
            self._create(model, dim, weights)
        meta = self.meta()
        if int(meta.get("schema", 0)) != SCHEMA_VERSION or meta.get("kind") != "terravl-kb":
            raise KBOpenError(self.path, f"not a TerraVL knowledge base of schema {SCHEMA_VERSION}")
        if model is not None and self.model != (pinned_model(model, weights) if weights else model):
            raise KBOpenError(self.path, f"was built with model {self.model!r}, not {model!r}")
        if c.execute("PRAGMA quick_check(meta)").fetchone()[0] != "ok":
            raise KBOpenError(self.path, "damaged knowledge base; rebuild it with `terravl kb build`")

    @_errors(writing=True)
    def _create(self, model: str, dim: int, weights: str = "") -> None:
        with _Transaction(self.db) as c:
            c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            c.execute("""CREATE TABLE items (
                id INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT UNIQUE NOT NULL, source TEXT NOT NULL,
                ref TEXT, title TEXT, text TEXT, url TEXT, lon REAL, lat REAL, footprint TEXT, date TEXT,
                label TEXT, text_vec BLOB, image_vec BLOB, added REAL NOT NULL)""")
            c.execute("CREATE INDEX items_date ON items(date)")
            c.execute("CREATE INDEX items_source ON items(source)")
            c.execute("CREATE VIRTUAL TABLE items_fts USING fts5(title, text, tokenize='porter unicode61')")
            c.execute("CREATE VIRTUAL TABLE items_bbox USING rtree(id, minlon, maxlon, minlat, maxlat)")
            c.execute("CREATE TABLE sources (path TEXT PRIMARY KEY, hash TEXT NOT NULL, items INTEGER, at REAL)")
            c.execute("CREATE INDEX sources_hash ON sources(hash)")
            c.execute("CREATE TABLE problems (path TEXT, error TEXT, at REAL)")
            for key, value in {"kind": "terravl-kb", "schema": SCHEMA_VERSION, "model": model, "dim": int(dim),
                               "weights": weights, "text_side": self._text_side,
                               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "version": 0}.items():
                c.execute("INSERT INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def check_encoder(self, encoder) -> None:
        """Refuse an encoder other than the one the vectors came from: another model, or other weights under the
        same name (a model retrained and reinstalled), whose vectors would not be comparable."""
        meta = self.meta()
        built, now = meta.get("weights") or "", encoder_weights(encoder)
        name = pinned_model(encoder.source or encoder.name, now)  # terravl-default holding v2 is terravl-default-v2
        if name != self.model:
            raise KBOpenError(self.path, f"was built with model {self.model!r}; the encoder given is {name!r}")
        if built and now and not same_weights(built, now):
            raise KBOpenError(self.path, f"was built with other weights of {name!r} (fingerprint {built}, installed "
                                         f"now {now}): its vectors do not match this model; rebuild it with "
                                         f"`terravl kb build`")
        made, makes = meta.get("text_side"), encoder_text_side(encoder)  # absent: built before text sides existed
        if built and made != makes:  # a store created by name alone (API users, benchmarks) is not checked
            raise KBOpenError(self.path, f"its text vectors were made {_text_side_words(made)}, and {name!r} now makes "
                                         f"them {_text_side_words(makes)}: they do not match. Rebuild it: delete "
                                         f"the file (or choose a new --out), run `terravl kb build`, then "
                                         f"`terravl kb calibrate` again")

    def _writable(self) -> None:
        if self.readonly:
            raise KBWriteError(self.path, "the knowledge base is open read-only (its file or folder is not "
                                          "writable); nothing was changed")

    # -- metadata -------------------------------------------------------------------------------------
    @_errors()
    def meta(self) -> dict:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    @_errors(writing=True)
    def set_meta(self, key: str, value) -> None:
        """Write one metadata entry (JSON), e.g. the answer-fusion weights that ``terravl kb calibrate`` fits."""
        self._writable()
        if key in ("kind", "schema", "model", "dim", "weights", "text_side", "created", "version"):
            raise ValueError(f"metadata {key!r} is the store's own")
        with _Transaction(self.db):
            self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            (key, json.dumps(value)))

    @_errors()
    def image_items_of_sources(self, sources: Iterable[str]) -> dict[str, tuple[int, str | None]]:
        """(item id, collection ``ref`` or None) of the image item read from each source path the store holds."""
        sources = list(sources)
        found: dict[str, tuple[int, str | None]] = {}
        for start in range(0, len(sources), 500):
            chunk = sources[start:start + 500]
            found.update((s, (int(i), r or None)) for s, i, r in self.db.execute(
                f"SELECT source, id, ref FROM items WHERE kind = 'image' AND source IN "
                f"({','.join('?' * len(chunk))})", chunk))
        return found

    @property
    def model(self) -> str:
        """The registry name (or path) whose weights made the vectors; ``terravl-default`` built with an earlier
        default reads as that version's name (:func:`terravl.model_versions.pinned_model`)."""
        meta = self.meta()
        return pinned_model(meta["model"], meta.get("weights"), meta.get("created"))

    @property
    def dim(self) -> int:
        return int(self.meta()["dim"])

    @property
    def version(self) -> int:
        return int(self.meta().get("version", 0))

    @_errors()
    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    @_errors()
    def info(self) -> dict:
        meta = self.meta()
        kinds = dict(self.db.execute("SELECT kind, COUNT(*) FROM items GROUP BY kind").fetchall())
        span = self.db.execute("SELECT MIN(date), MAX(date) FROM items").fetchone()
        box = self.db.execute("SELECT MIN(minlon), MIN(minlat), MAX(maxlon), MAX(maxlat) FROM items_bbox").fetchone()
        located = self.db.execute("SELECT COUNT(*) FROM items_bbox").fetchone()[0]
        labels = self.db.execute("SELECT COUNT(DISTINCT label) FROM items WHERE label IS NOT NULL").fetchone()[0]
        return {"path": str(self.path), "items": self.count(), "images": kinds.get("image", 0),
                "passages": kinds.get("text", 0),
                "with_text": self.db.execute("SELECT COUNT(*) FROM items WHERE text IS NOT NULL").fetchone()[0],
                "located": located, "labels": labels,
                "sources": self.db.execute("SELECT COUNT(*) FROM sources").fetchone()[0],
                "model": self.model, "weights": meta.get("weights") or None,
                "dim": int(meta["dim"]),
                "created": meta.get("created"),
                "problems": self.db.execute("SELECT COUNT(*) FROM problems").fetchone()[0],
                "dates": list(span) if span[0] else None, "bbox": list(box) if box[0] is not None else None}

    # -- sources --------------------------------------------------------------------------------------
    @_errors()
    def source_hash(self, path: str) -> str | None:
        row = self.db.execute("SELECT hash FROM sources WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    @_errors()
    def source_with_hash(self, digest: str) -> str | None:
        row = self.db.execute("SELECT path FROM sources WHERE hash = ? LIMIT 1", (digest,)).fetchone()
        return row[0] if row else None

    @_errors(writing=True)
    def finish_source(self, path: str, digest: str, items: int) -> None:
        """Record ``path`` as read to its end (a re-run skips it while its content hash is unchanged)."""
        self._writable()
        with _Transaction(self.db):
            self.db.execute("INSERT INTO sources VALUES (?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET hash = "
                            "excluded.hash, items = excluded.items, at = excluded.at",
                            (path, digest, items, time.time()))

    @_errors(writing=True)
    def log_problem(self, path: str, error: str) -> None:
        self._writable()
        with _Transaction(self.db):
            self.db.execute("INSERT INTO problems VALUES (?, ?, ?)", (path, error, time.time()))

    @_errors()
    def problems(self) -> list[dict]:
        return [{"path": p, "error": e} for p, e in self.db.execute("SELECT path, error FROM problems ORDER BY at")]

    # -- items ----------------------------------------------------------------------------------------
    @_errors()
    def known_keys(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            found.update(r[0] for r in self.db.execute(
                f"SELECT key FROM items WHERE key IN ({','.join('?' * len(chunk))})", chunk))
        return found

    @_errors(writing=True)
    def add(self, items: list[KBItem]) -> int:
        """Insert ``items`` in one transaction (keys already present are skipped); returns how many were added."""
        self._writable()
        dim, added = self.dim, 0
        with _Transaction(self.db) as c:
            for item in items:
                blobs = []
                for vec in (item.text_vec, item.image_vec):
                    if vec is None:
                        blobs.append(None)
                        continue
                    vec = np.ascontiguousarray(vec, dtype=np.float32)
                    if vec.shape != (dim,):
                        raise ValueError(f"vector of {item.source} has shape {vec.shape}; expected ({dim},)")
                    blobs.append(vec.tobytes())
                cur = c.execute(
                    "INSERT OR IGNORE INTO items (kind, key, source, ref, title, text, url, lon, lat, footprint, date, "
                    "label, text_vec, image_vec, added) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (item.kind, item.key, item.source, item.ref or None, item.title, item.text, item.url, item.lon,
                     item.lat, json.dumps(item.footprint) if item.footprint else None, item.date, item.label,
                     blobs[0], blobs[1], time.time()))
                if not cur.rowcount:
                    continue
                added += 1
                item.id = cur.lastrowid
                if item.text or item.title:
                    c.execute("INSERT INTO items_fts (rowid, title, text) VALUES (?, ?, ?)",
                              (item.id, item.title or "", item.text or ""))
                box = item.bbox or ((item.lon, item.lat, item.lon, item.lat) if item.lon is not None else None)
                if box is not None:
                    c.execute("INSERT INTO items_bbox VALUES (?, ?, ?, ?, ?)", (item.id, box[0], box[2], box[1],
                                                                                box[3]))
            if added:
                c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
        self._vectors.clear()
        return added

    # -- reading --------------------------------------------------------------------------------------
    @_errors()
    def vectors(self, kind: str) -> Vectors:
        """(ids, matrix) of every ``text`` or ``image`` vector, cached in memory until the file changes."""
        version = self.version
        if self._cached_version != version:
            self._vectors.clear()
            self._cached_version = version
        if kind not in self._vectors:
            column = "text_vec" if kind == "text" else "image_vec"
            ids, blobs = [], []
            for item_id, blob in self.db.execute(f"SELECT id, {column} FROM items WHERE {column} IS NOT NULL "
                                                 f"ORDER BY id"):
                ids.append(item_id)
                blobs.append(blob)
            dim = self.dim
            if any(len(b) != 4 * dim for b in blobs):
                raise KBOpenError(self.path, f"damaged knowledge base: a vector is not {dim} float32 values")
            matrix = (np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim) if ids
                      else np.zeros((0, dim), dtype=np.float32))
            id_array = np.array(ids, dtype=np.int64)
            self._vectors[kind] = Vectors(id_array, matrix, {int(i): n for n, i in enumerate(ids)})
        return self._vectors[kind]

    @_errors()
    def document_frequency(self, term: str) -> int:
        """How many items match the word ``term`` (stemmed as the index stems it); cached until the file changes."""
        version = self.version
        if self._df_version != version:
            self._df, self._df_version = {}, version
        if term not in self._df:
            self._df[term] = int(self.db.execute("SELECT count(*) FROM items_fts WHERE items_fts MATCH ?",
                                                 (f'"{term}"',)).fetchone()[0])
        return self._df[term]

    @_errors()
    def bm25(self, terms: list[str], limit: int, allowed: np.ndarray | None = None,
             budget: int = 3000) -> list[tuple[int, float]]:
        """(id, BM25 score; higher is better) of the best ``limit`` items matching any of the words ``terms``.

        Ranking costs about 2 µs per matching item, so the terms are taken rarest first while together they match
        at most ``budget`` items: a word that matches more is too common to tell items apart (its inverse
        document frequency is low) and is left to the dense retriever."""
        chosen, total = [], 0
        for df, term in sorted((self.document_frequency(t), t) for t in terms):
            if df == 0:
                continue
            if total + df > budget:
                break
            chosen.append(term)
            total += df
        if not chosen:
            return []
        match = " OR ".join(f'"{t}"' for t in chosen)
        rows = self.db.execute("SELECT rowid, -bm25(items_fts, 0.5, 1.0) FROM items_fts WHERE items_fts MATCH ? "
                               "ORDER BY rank LIMIT ?", (match, limit if allowed is None else 50 * limit))
        found = [(int(i), float(s)) for i, s in rows]
        if allowed is not None:
            keep = set(allowed.tolist())
            found = [x for x in found if x[0] in keep][:limit]
        return found

    @_errors()
    def filter_ids(self, bbox=None, date_from: str | None = None, date_to: str | None = None) -> np.ndarray | None:
        """Ids of items whose footprint or point intersects ``bbox`` and whose date lies in [date_from, date_to]
        (items without a location or date do not pass that filter); None without filters."""
        if bbox is None and date_from is None and date_to is None:
            return None
        clauses, args = [], []
        if bbox is not None:
            clauses.append("id IN (SELECT id FROM items_bbox WHERE maxlon >= ? AND minlon <= ? AND maxlat >= ? AND "
                           "minlat <= ?)")
            args += [bbox[0], bbox[2], bbox[1], bbox[3]]
        if date_from is not None:
            clauses.append("date >= ?")
            args.append(date_from)
        if date_to is not None:
            clauses.append("substr(date, 1, 10) <= ?")
            args.append(date_to)
        return np.array([r[0] for r in self.db.execute(f"SELECT id FROM items WHERE {' AND '.join(clauses)}",
                                                       args)], dtype=np.int64)

    @_errors()
    def items(self, ids: Iterable[int]) -> dict[int, KBItem]:
        ids = [int(i) for i in ids]
        out: dict[int, KBItem] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for r in self.db.execute(
                    f"SELECT id, kind, key, source, ref, title, text, url, lon, lat, footprint, date, label FROM items "
                    f"WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                out[r[0]] = KBItem(r[1], r[2], r[3], r[4] or "", r[5], r[6], r[7], r[8], r[9], None,
                                   json.loads(r[10]) if r[10] else None, r[11], r[12], id=r[0])
        return out

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "KBStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encoder_text_side(encoder) -> dict | None:
    """What shapes the encoder's text vectors besides its weights: a TerraVL model's caption-memory blend of texts
    (its ``memory.text`` settings), None for none. A knowledge base records it, as its passages' vectors depend on
    it (a model's settings can change while its weights, and so their fingerprint, stay)."""
    encoder = getattr(encoder, "wrapped", encoder)
    return getattr(encoder, "text_memory_settings", None)


def _text_side_words(settings: dict | None) -> str:
    if not settings:
        return "without the caption memory"
    return "with the caption memory (" + ", ".join(f"{k} {v}" for k, v in settings.items()) + ")"


def encoder_weights(encoder) -> str:
    """A fingerprint of the encoder's weights ('' for an encoder without a torch model), computed once per
    encoder object (about 40 ms for terravl-default)."""
    from terravl.models.feature_cache import encoder_fingerprint

    return encoder_fingerprint(encoder)
