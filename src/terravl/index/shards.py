"""Sharded archives: one index as a set of shard indexes, built in parallel (one writer each) and searched together.

A sharded index is a folder holding ``shards.json`` (format version, the shard folders' names relative to it, model
and dimensions) and the shard folders, each a normal :class:`~terravl.index.store.IndexStore`. Every source file
goes to the shard a stable hash of its name picks (:func:`assign_shard`), so a re-run puts each file where it went
before and each shard resumes as a single index does: a killed build loses nothing committed.

Tiles of a sharded index are named by *global ids*: ``shard << 40 | id``, the shard's position in ``shards.json``
in the high bits and its own SQLite id in the low 40. They stay integers, so every route, schema and MCP tool that
takes a tile id takes them unchanged; the ids of shard 0 are its own ids; and with at most :data:`MAX_SHARDS`
shards every id is below 2**53, exact in clients that read JSON numbers as doubles (JavaScript).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue as queue_mod
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from terravl.errors import InputError, OutputError, TerraVLError
from terravl.model_versions import pinned_model

if TYPE_CHECKING:  # the builder (and its raster stack) is imported where a build runs, not for a search
    from terravl.index.build import BuildReport
from terravl.index.store import (DB_FILE, IndexCorruptError, IndexOpenError, IndexStore, IndexWriteError, TileRow,
                                 check_index)
from terravl.paths import shown
from terravl.results import Problem

SHARDS_FILE = "shards.json"
FORMAT_VERSION = 1
ID_BITS = 40
"""Low bits of a global id holding the shard's own tile id (a shard may hold up to 2**40 − 1 tiles)."""
LOCAL_MASK = (1 << ID_BITS) - 1
MAX_SHARDS = 1 << (53 - ID_BITS)
"""8,192: global ids stay below 2**53."""


class ShardMismatchError(IndexOpenError):
    """A shard built with another model or dimension than the rest of the set: its vectors cannot be compared."""


# -- ids and assignment ---------------------------------------------------------------------------------------
def global_id(shard: int, local: int) -> int:
    """The id a sharded index gives tile ``local`` of shard number ``shard``."""
    return (int(shard) << ID_BITS) | int(local)


def split_id(gid: int) -> tuple[int, int]:
    """(shard number, the shard's own tile id) of a global id."""
    return int(gid) >> ID_BITS, int(gid) & LOCAL_MASK


def assign_shard(source: str, n: int) -> int:
    """The shard (0 … n−1) that holds the tiles of the file named ``source``: a hash of the name (sha1, not
    Python's salted ``hash``), so every run, on every machine, puts a file in the same shard and a re-run resumes."""
    digest = hashlib.sha1(str(source).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % int(n)


def shard_names(n: int) -> list[str]:
    """Folder names of ``n`` new shards: ``shard-000`` …, zero-padded so they sort in order."""
    width = max(3, len(str(n - 1)))
    return [f"shard-{i:0{width}d}" for i in range(n)]


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a sharded index (a folder with ``shards.json``)."""
    return (Path(path) / SHARDS_FILE).is_file()


def index_files(path: str | Path) -> list[Path]:
    """The files whose change means the index at ``path`` changed: its database, or the manifest and every
    shard's database (the server compares their identity to tell a restored index from a still damaged one)."""
    path = Path(path)
    if not is_sharded(path):
        return [path / DB_FILE]
    try:
        names = read_manifest(path)["shards"]
    except InputError:
        names = []
    return [path / SHARDS_FILE] + [path / name / DB_FILE for name in names]


def check_shards_option(shards: int) -> int:
    if not 1 <= int(shards) <= MAX_SHARDS:
        raise InputError("shards", f"must be 1 to {MAX_SHARDS}, not {shards}")
    return int(shards)


# -- the manifest ---------------------------------------------------------------------------------------------
def read_manifest(path: str | Path) -> dict:
    """``shards.json`` of the sharded index ``path``, checked: {"format", "shards", "model", "dim"}. A manifest
    that cannot be used is an :class:`IndexOpenError` naming it."""
    file = Path(path) / SHARDS_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise IndexOpenError(file, f"cannot read the shard list ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexOpenError(file, f"not a valid shard list ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        found = data.get("format") if isinstance(data, dict) else None
        raise IndexOpenError(file, f"shard list format {found!r} is not supported (expected {FORMAT_VERSION})")
    names = data.get("shards")
    if (not isinstance(names, list) or not 1 <= len(names) <= MAX_SHARDS
            or not all(isinstance(n, str) and n for n in names)):
        raise IndexOpenError(file, f"'shards' must list 1 to {MAX_SHARDS} shard folder names")
    for name in names:
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts:
            raise IndexOpenError(file, f"shard {name!r} must be a folder inside the index (a relative name)")
    if len(set(names)) != len(names):
        raise IndexOpenError(file, "a shard is listed twice")
    model, dim = data.get("model"), data.get("dim")
    if model is not None and not isinstance(model, str) or dim is not None and not isinstance(dim, int):
        raise IndexOpenError(file, "'model' must be a name and 'dim' a whole number")
    return {"format": FORMAT_VERSION, "shards": names, "model": model, "dim": dim, "created": data.get("created")}


def write_manifest(path: str | Path, names: list[str], model: str | None, dim: int | None,
                   created: str | None = None) -> None:
    """Write ``shards.json`` whole or not at all (a temporary file renamed into place)."""
    import time

    path = Path(path)
    data = {"format": FORMAT_VERSION, "shards": list(names), "model": model, "dim": dim,
            "created": created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = path / f"{SHARDS_FILE}.{os.getpid()}.tmp"
    try:
        path.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path / SHARDS_FILE)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise IndexWriteError(path, f"cannot write the shard list {SHARDS_FILE} ({exc.strerror or exc})") from None


# -- the set ----------------------------------------------------------------------------------------------------
class ShardSet:
    """Open the sharded index ``path``: every shard's store (``readonly`` as for
    :class:`~terravl.index.store.IndexStore`), checked to share one model and dimension.

    It answers the read side of an :class:`IndexStore` (``model``, ``dim``, ``count``, ``info``, ``rows``,
    ``locations``, ``version``, ``on_damage``) with global ids, so the server and the CLI serve it as one index;
    :func:`terravl.tasks.search` searches every shard and merges the top k."""

    def __init__(self, path: str | Path, readonly: bool | None = True):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        self.names: list[str] = manifest["shards"]
        self.created = manifest["created"]
        self.stores: list[IndexStore] = []
        self._on_damage: Callable[[IndexCorruptError], Any] | None = None
        try:
            for name in self.names:
                folder = self.path / name
                if not (folder / DB_FILE).is_file():
                    raise IndexOpenError(folder, f"shard {name!r} holds no index (its build did not finish): re-run "
                                                 f"`terravl index build` into {shown(self.path)} to complete it")
                self.stores.append(IndexStore(folder, readonly=readonly))
            first = self.stores[0]
            self._model = (pinned_model(manifest["model"], first.meta().get("weights"), first.meta().get("created"))
                           if manifest["model"] else first.model)
            self._dim = manifest["dim"] or first.dim
            for name, store in zip(self.names, self.stores):
                if store.model != self._model or store.dim != self._dim:
                    raise ShardMismatchError(store.path, f"shard {name!r} was built with model {store.model!r} "
                                                         f"({store.dim} dimensions), the index with {self._model!r} "
                                                         f"({self._dim}): its vectors cannot be searched together; "
                                                         f"rebuild that shard with the index's model")
        except BaseException:
            self.close()
            raise
        self.readonly = any(s.readonly for s in self.stores)

    @property
    def model(self) -> str:
        return self._model

    @property
    def dim(self) -> int:
        return int(self._dim)

    @property
    def version(self) -> tuple[int, ...]:
        """Changes whenever a shard changes (each shard's own version, in order)."""
        return tuple(s.version for s in self.stores)

    @property
    def on_damage(self):
        return self._on_damage

    @on_damage.setter
    def on_damage(self, callback) -> None:
        """Damage found in any shard reports to ``callback`` (the server marks the whole index unavailable)."""
        self._on_damage = callback
        for store in self.stores:
            store.on_damage = callback

    def count(self) -> int:
        return sum(s.count() for s in self.stores)

    def info(self) -> dict:
        """The whole set's info (as :meth:`IndexStore.info`, counts summed, date span and box merged) with
        ``shards``: each shard's name, tile count, sources and problems."""
        parts = [s.info() for s in self.stores]
        spans = [p["acquired"] for p in parts if p["acquired"]]
        boxes = [p["bbox"] for p in parts if p["bbox"]]
        return {"path": str(self.path), "count": sum(p["count"] for p in parts),
                "sources": sum(p["sources"] for p in parts), "locations": sum(p["locations"] for p in parts),
                "model": self.model, "dim": self.dim, "created": self.created,
                "problems": sum(p["problems"] for p in parts),
                "acquired": [min(s[0] for s in spans), max(s[1] for s in spans)] if spans else None,
                "bbox": [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                         max(b[3] for b in boxes)] if boxes else None,
                "sharded": True,
                "shards": [{"name": n, "count": p["count"], "sources": p["sources"], "problems": p["problems"]}
                           for n, p in zip(self.names, parts)]}

    def problems(self) -> list[dict]:
        return [p for s in self.stores for p in s.problems()]

    def shard(self, gid: int) -> tuple[IndexStore | None, int]:
        """(the shard's store or None when there is no such shard, the shard's own id) of a global id."""
        no, local = split_id(gid)
        return (self.stores[no] if no < len(self.stores) else None), local

    def rows(self, ids: Iterable[int]) -> dict[int, TileRow]:
        """Rows of tiles by global id (absent ids are left out), each row's ``id`` the global id."""
        wanted: dict[int, list[int]] = {}
        for gid in ids:
            no, local = split_id(gid)
            if 0 <= no < len(self.stores):
                wanted.setdefault(no, []).append(local)
        out: dict[int, TileRow] = {}
        for no, locals_ in wanted.items():
            for local, row in self.stores[no].rows(locals_).items():
                row.id = global_id(no, local)
                out[row.id] = row
        return out

    def locations(self, gid: int) -> list[dict]:
        store, local = self.shard(gid)
        return [] if store is None else store.locations(local)

    def remove_source(self, source: str) -> int:
        """Remove file ``source`` from every shard (it is in the shard its name hashes to, unless the set was
        built otherwise); returns the locations removed."""
        return sum(s.remove_source(source) for s in self.stores)

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def __enter__(self) -> "ShardSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_index(path: str | Path, readonly: bool | None = True) -> IndexStore | ShardSet:
    """The index at ``path``: a :class:`ShardSet` when it is sharded, else an :class:`IndexStore`."""
    return ShardSet(path, readonly=readonly) if is_sharded(path) else IndexStore(path, readonly=readonly)


def check_shards(path: str | Path) -> dict:
    """:func:`~terravl.index.store.check_index` of every shard (each problem prefixed with its shard's name), with
    the manifest's own check: ``{"index", "ok", "tiles", "problems", "shards"}``."""
    path = Path(path)
    names = read_manifest(path)["shards"]
    shards, problems, tiles = [], [], 0
    for name in names:
        if not (path / name / DB_FILE).is_file():
            shards.append({"name": name, "ok": False, "tiles": None})
            problems.append(f"{name}: no index database (the build did not finish)")
            continue
        result = check_index(path / name)
        shards.append({"name": name, "ok": result["ok"], "tiles": result["tiles"]})
        problems += [f"{name}: {p}" for p in result["problems"]]
        tiles = None if tiles is None or result["tiles"] is None else tiles + result["tiles"]
    if not problems:
        try:
            ShardSet(path).close()
        except IndexOpenError as exc:
            problems.append(exc.message)
    return {"index": str(path), "ok": not problems, "tiles": tiles, "problems": problems, "shards": shards}


# -- building ---------------------------------------------------------------------------------------------------
def _item_name(item) -> str:
    """The name that picks an item's shard: the source name the index records (a Problem's path)."""
    from terravl.index.build import source_name

    if isinstance(item, Problem):
        return item.path
    try:
        return source_name(item)
    except (OSError, RuntimeError, ValueError):  # a name resolve() cannot follow (a link loop): as given
        return str(item)


def build_sharded(sources: Iterable[str | Path], encoder, out: str | Path, shards: int | None = None,
                  tile_size: int = 256, overlap: int = 0, whole_below: int | None = None, batch_size: int = 64,
                  progress: Callable[[int], None] | None = None, processes: int | None = None) -> BuildReport:
    """Index ``sources`` into the sharded index ``out`` of ``shards`` shards (None: the existing index's count),
    each shard built by :func:`~terravl.index.build.build_index` with its own writer; returns the whole's report
    (the shards' reports summed).

    ``encoder`` is a model name (each shard's build runs in a process of its own that loads it: ``processes`` at
    once, default one per shard up to the CPU count) or a loaded encoder (the shards are built by threads of this
    process sharing it). The sources are expanded once, here, and every file goes to :func:`assign_shard`'s
    shard, so a re-run (same or more sources) resumes each shard. When a shard's build fails, the others still
    finish; then its error is raised (an :class:`IndexWriteError` carries ``report``, what was committed)."""
    from terravl.index.build import BuildReport, index_sources

    out = Path(out)
    if (out / DB_FILE).is_file():
        raise InputError(out, "a single (unsharded) index is here; build the sharded index into a new folder")
    if out.exists() and not out.is_dir():
        raise InputError(out, "not a folder")
    by_name = isinstance(encoder, (str, Path))
    model_name = None if by_name else (encoder.source or encoder.name)
    if is_sharded(out):
        manifest = read_manifest(out)
        names, expect_model, created = manifest["shards"], manifest["model"], manifest["created"]
        if shards is not None and shards != len(names):
            raise InputError("shards", f"{shown(out)} is a sharded index of {len(names)} shards: build into it with "
                                       f"--shards {len(names)} (or leave it out) to resume or extend it, or into a "
                                       f"new folder")
        if model_name is not None and expect_model is not None and model_name != expect_model:
            raise InputError(out, f"index was built with model {expect_model!r}, not {model_name!r}")
        dim = manifest["dim"]
    else:
        if shards is None:
            raise InputError("shards", "give the number of shards of a new sharded index")
        names, expect_model, created = shard_names(check_shards_option(shards)), model_name, None
        dim = None if by_name else int(encoder.embed_dim)
        write_manifest(out, names, expect_model, dim)  # first: a killed build leaves a folder a re-run knows
        created = read_manifest(out)["created"]
    report = BuildReport()
    buckets: list[list] = [[] for _ in names]
    try:
        for item in index_sources(sources, out / "stac"):  # STAC VRTs live with the index that names them
            buckets[assign_shard(_item_name(item), len(names))].append(item)
    except Exception as exc:  # noqa: BLE001 - walking the sources failed: say so, as a single build does
        report.problems.append(Problem("sources", shown(f"{exc.__class__.__name__}: {exc}")))
    options = dict(tile_size=tile_size, overlap=overlap, whole_below=whole_below, batch_size=batch_size)
    tasks = [(out / name, bucket) for name, bucket in zip(names, buckets)]
    if by_name:
        results = _run_processes(str(encoder), expect_model, tasks, options, progress, processes)
    else:
        results = _run_threads(encoder, tasks, options, progress, processes)
    error: TerraVLError | None = None
    for result in results:
        part = result.get("report")
        if part is not None:
            report.files += part.files
            report.tiles_seen += part.tiles_seen
            report.added += part.added
            report.skipped_existing += part.skipped_existing
            report.problems += part.problems
        if result.get("model") and dim is None:
            expect_model, dim = result["model"], result["dim"]
        if error is None and result.get("error") is not None:
            error = result["error"]
    if dim is not None and (read_manifest(out)["dim"] is None):
        write_manifest(out, names, expect_model, dim, created)
    if report.problems and report.problems[0].path == "sources":
        with IndexStore(out / names[0]) as store:  # in the index's problem log too, as a single build keeps it
            store.log_problem(report.problems[0].path, report.problems[0].error)
    if error is not None:
        error.report = report  # type: ignore[attr-defined]
        raise error
    return report


def _run_threads(encoder, tasks, options, progress, workers) -> list[dict]:
    """Each shard built by a thread of this process (one writer per shard), sharing ``encoder``."""
    from terravl.index.build import build_index

    lock = threading.Lock()

    def counted(n: int) -> None:
        with lock:
            progress(n)

    def one(task) -> dict:
        folder, items = task
        try:
            return {"report": build_index(items, encoder, folder, progress=counted if progress else None,
                                          **options)}
        except TerraVLError as exc:
            return {"report": getattr(exc, "report", None), "error": exc}

    with ThreadPoolExecutor(max_workers=workers or min(len(tasks), os.cpu_count() or 1),
                            thread_name_prefix="terravl-shard") as pool:
        return list(pool.map(one, tasks))


_PROGRESS: Any = None
"""In a shard-building process: the queue its tile counts go to (set by :func:`_init_worker`)."""


def _init_worker(progress_queue, threads: int) -> None:
    global _PROGRESS
    _PROGRESS = progress_queue
    if "OMP_NUM_THREADS" not in os.environ:  # N processes × all cores of threads each would oversubscribe
        import torch

        torch.set_num_threads(threads)


def _build_shard(model: str, expect_model: str | None, folder: Path, items: list, options: dict) -> dict:
    """One shard's build in a process of its own: load the model by name, build, return the report. Errors come
    back as data (``error``: class, source, message): TerraVL's errors do not survive pickling."""
    try:
        import terravl.models as m
        from terravl.index.build import build_index

        encoder = m.load(model)
        loaded = encoder.source or encoder.name
        if expect_model is not None and loaded != expect_model:
            raise InputError(folder, f"index was built with model {expect_model!r}, not {loaded!r}")
        report = build_index(items, encoder, folder, progress=_PROGRESS.put if _PROGRESS is not None else None,
                             **options)
        return {"report": report, "model": loaded, "dim": int(encoder.embed_dim)}
    except TerraVLError as exc:
        return {"report": getattr(exc, "report", None), "error": _error_data(exc)}


def _error_data(exc: TerraVLError) -> tuple:
    return (type(exc).__module__, type(exc).__qualname__, getattr(exc, "source", None),
            getattr(exc, "message", str(exc)))


def _error_from(data: tuple) -> TerraVLError:
    """The error a shard's process reported, as its own type where that takes (source, message)."""
    import importlib

    module, name, source, message = data
    try:
        kind = getattr(importlib.import_module(module), name)
        if source is not None and issubclass(kind, (InputError, OutputError)):
            return kind(source, message)
    except (ImportError, AttributeError, TypeError):
        pass
    return InputError(source, message) if source is not None else TerraVLError(message)


def _run_processes(model: str, expect_model: str | None, tasks, options, progress, processes) -> list[dict]:
    """Each shard built in a process of its own ('spawn': no state inherited from this one), at most
    ``processes`` at a time; tile counts come back through a queue to ``progress``."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    workers = max(1, min(processes or os.cpu_count() or 1, len(tasks)))
    counts = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    results: dict[int, dict] = {}

    def drain() -> None:
        while True:
            try:
                n = counts.get_nowait()
            except queue_mod.Empty:
                return
            if progress is not None:
                progress(n)

    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(counts, threads)) as pool:
        futures: dict[Future, int] = {pool.submit(_build_shard, model, expect_model, folder, items, options): i
                                      for i, (folder, items) in enumerate(tasks)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                drain()
                for future in done:
                    i = futures[future]
                    try:
                        results[i] = future.result()
                    except Exception as exc:  # noqa: BLE001 - a process that died (killed, out of memory)
                        results[i] = {"error": TerraVLError(f"{tasks[i][0]}: the shard's build process failed "
                                                            f"({exc.__class__.__name__}: {exc}); re-run to resume")}
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    drain()
    out = []
    for i in range(len(tasks)):
        result = results[i]
        if isinstance(result.get("error"), tuple):
            result["error"] = _error_from(result["error"])
        out.append(result)
    return out
