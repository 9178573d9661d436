"""``index build --ray``: the same build spread over a Ray cluster (one machine or many).

Three roles, as in the single-process build (:func:`terravl.index.build.build_index`) but on Ray:

* **decoding and tiling** are Ray tasks, one per source file, streaming their tiles back in chunks
  (:func:`_decode`, a generator task, so a 20,000² raster never sits whole in the object store);
* **embedding** runs in a pool of actors, each holding one copy of the model (:class:`_Embedder`; CPU threads or
  a GPU share per actor);
* **writing** stays with one writer, this driver: it drops tiles already indexed before they are embedded and
  commits each embedded batch in one SQLite transaction, exactly as the single-process build does.

Crash safety is the store's: tiles are committed batch by batch and identified by their content hash, so a task
or actor that Ray retries after its worker died cannot add a tile twice, and a killed driver leaves every
committed batch in place for a re-run to resume from. Ray is optional (``pip install terravl[ray]``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from terravl.errors import InputError, TerraVLError
from terravl.index.build import BuildReport, _Item, index_sources, source_items
from terravl.index.store import IndexStore, IndexWriteError, TileRow
from terravl.paths import shown
from terravl.results import Problem

CHUNK = 32
"""Tiles a decoding task sends back at a time: small enough to keep the object store light, large enough that
Ray's per-object overhead (~1 ms) stays under 1 % of a tile's decode and embed time."""


@dataclass
class RaySettings:
    """Where and how wide a Ray build runs. ``address``: ``"auto"`` joins the cluster named by ``RAY_ADDRESS`` or
    one already running on this machine and starts a local one when there is none; ``"local"`` always starts a
    local one; anything else (``ray://host:10001``, ``host:6379``) is a cluster to join."""

    address: str = "auto"
    num_actors: int | None = None       # default: one per 2 CPUs of the cluster (at least 1)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    decode_cpus: float = 0.5            # Ray CPUs a decoding task reserves
    max_files: int | None = None        # files decoding at once; default: what the free CPUs allow
    batches_per_actor: int = 2          # embedding batches queued per actor (keeps each one busy)
    max_restarts: int = 4               # an actor whose worker died is restarted this often …
    max_task_retries: int = 4           # … and its batch retried this often

    def __post_init__(self) -> None:
        if self.num_actors is not None and self.num_actors < 1:
            raise InputError("--num-actors", "must be at least 1")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0 or self.decode_cpus <= 0:
            raise InputError("--cpus-per-actor", "CPU shares must be positive and GPU shares not negative")


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray", "Ray is not installed: pip install 'terravl[ray]'") from None
    return ray


def connect(address: str = "auto", num_cpus: int | None = None) -> bool:
    """Join or start a Ray cluster; True when this call started it (so the caller shuts it down)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    if address == "local" or (address == "auto" and not os.environ.get("RAY_ADDRESS") and not _running_locally()):
        ray.init(num_cpus=num_cpus or os.cpu_count(), **quiet)
        return True
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError("--ray", f"cannot join the Ray cluster at {address!r}: {exc}") from None
    return False


def _running_locally() -> bool:
    """Whether a Ray head already runs on this machine (``ray start --head`` writes its address here)."""
    return Path("/tmp/ray/ray_current_cluster").is_file()


def _decode(path, tile_size: int, overlap: int, whole_below: int):
    """Ray task body: the items (or the problem) of one source, in chunks of :data:`CHUNK`."""
    chunk: list = []
    for item in source_items(path, tile_size, overlap, whole_below):
        chunk.append(item)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Embedder:
    """Ray actor body: one model, loaded once, embedding batches of tiles."""

    def __init__(self, model: str, device: str, threads: int):
        import terravl.models as m

        self.encoder = m.load(model, device=device, threads=threads)

    def identity(self) -> tuple[str, int, str]:
        from terravl.models.feature_cache import encoder_fingerprint

        return self.encoder.source or self.encoder.name, int(self.encoder.embed_dim), encoder_fingerprint(self.encoder)

    def pid(self) -> int:
        return os.getpid()

    def embed(self, arrays: list[np.ndarray]) -> np.ndarray:
        return self.encoder.encode_images(arrays, batch_size=len(arrays), progress=False)


@dataclass
class _Batch:
    items: list[_Item]
    actor: int
    duplicates: list[TileRow] = field(default_factory=list)   # further locations of this batch's pixels


class RayBuild:
    """One Ray build of ``sources`` into ``out``. :meth:`run` does it; ``actors`` are the embedding actors'
    handles while it runs (a test kills one of their workers to prove a build survives it)."""

    def __init__(self, sources: Iterable[str | Path], model: str, out: str | Path, tile_size: int = 256,
                 overlap: int = 0, whole_below: int | None = None, batch_size: int = 64,
                 settings: RaySettings | None = None, progress: Callable[[int], None] | None = None):
        self.sources, self.model, self.out = list(sources), model, Path(out)
        self.tile_size, self.overlap, self.batch_size = tile_size, overlap, batch_size
        self.whole_below = whole_below or 2 * tile_size
        self.settings = settings or RaySettings()
        self.progress = progress
        self.report = BuildReport()
        self.actors: list = []

    # -- the cluster's workers ---------------------------------------------------------------------------------
    def _start_actors(self, ray) -> None:
        s = self.settings
        cpus = float(ray.cluster_resources().get("CPU", 1))
        n = s.num_actors or max(1, int(cpus // 2))
        device = "cuda" if s.gpus_per_actor > 0 else "cpu"
        actor = ray.remote(_Embedder).options(num_cpus=s.cpus_per_actor, num_gpus=s.gpus_per_actor,
                                              max_restarts=s.max_restarts, max_task_retries=s.max_task_retries)
        free = cpus - n * s.cpus_per_actor
        if free < s.decode_cpus:  # Ray would wait for ever for a CPU to decode on
            raise InputError("--num-actors", f"{n} embedding actor(s) × {s.cpus_per_actor:g} CPUs leave "
                                             f"{max(free, 0):g} of the cluster's {cpus:g} CPUs, and decoding needs "
                                             f"{s.decode_cpus:g}: use fewer actors or fewer CPUs per actor")
        threads = max(1, math.ceil(s.cpus_per_actor))
        self.actors = [actor.remote(self.model, device, threads) for _ in range(n)]
        self.max_files = s.max_files or max(1, int(free // s.decode_cpus))
        self.decode = ray.remote(_decode).options(num_cpus=s.decode_cpus, num_returns="streaming",
                                                  _generator_backpressure_num_objects=8)

    def run(self) -> BuildReport:
        """Build; returns the report. Problems are reported per file as in the single-process build; a failed
        write stops the build with :class:`IndexWriteError` (committed tiles kept, a re-run resumes)."""
        ray = _ray()
        started = connect(self.settings.address)
        try:
            self._start_actors(ray)
            try:
                name, dim, weights = ray.get(self.actors[0].identity.remote())
            except ray.exceptions.RayError as exc:
                raise InputError("--model", f"the embedding actors could not load {self.model!r}: "
                                            f"{_cause(exc)}") from None
            with IndexStore(self.out, create=True, model=name, dim=dim, weights=weights) as store:
                try:
                    self._drive(ray, store)
                except IndexWriteError as exc:
                    error = IndexWriteError(exc.source, f"{exc.message} ({self.report.added} tiles of this run were "
                                                        f"committed and kept; re-run to resume)")
                    error.report = self.report  # type: ignore[attr-defined]
                    raise error from None
            return self.report
        finally:
            for a in self.actors:
                ray.kill(a)
            self.actors = []
            if started:
                ray.shutdown()

    # -- the writer --------------------------------------------------------------------------------------------
    def _drive(self, ray, store: IndexStore) -> None:
        """The driver's loop: keep files decoding, batches embedding, and commit what comes back."""
        files = iter(index_sources(self.sources, self.out / "stac"))
        decoding: dict = {}                  # generator → file name
        embedding: dict = {}                 # ObjectRef → _Batch
        buffer: list[_Item] = []             # fresh tiles waiting for a batch
        in_flight: dict[str, _Batch | None] = {}   # hash → the batch embedding it (None: still in the buffer)
        waiting_dups: list[TileRow] = []      # locations of pixels in the buffer
        load = [0] * len(self.actors)
        exhausted = False
        while True:
            while not exhausted and len(decoding) < self.max_files:
                path = next(files, None)
                if path is None:
                    exhausted = True
                    break
                self.report.files += 1
                if isinstance(path, Problem):
                    self._problem(store, Problem(shown(path.path), shown(path.error)))
                    continue
                decoding[self.decode.remote(path, self.tile_size, self.overlap, self.whole_below)] = _label(path)
            flush = exhausted and not decoding
            while buffer and (len(buffer) >= self.batch_size or flush):
                slot = min(range(len(load)), key=load.__getitem__)
                if load[slot] >= self.settings.batches_per_actor:
                    break
                items, buffer = buffer[:self.batch_size], buffer[self.batch_size:]
                batch = _Batch(items, slot)
                hashes = {i.row.content_hash for i in items}
                batch.duplicates = [r for r in waiting_dups if r.content_hash in hashes]
                waiting_dups = [r for r in waiting_dups if r.content_hash not in hashes]
                for h in hashes:
                    in_flight[h] = batch
                ref = self.actors[slot].embed.remote([i.array for i in items])
                embedding[ref] = batch
                load[slot] += 1
            waitables = list(embedding) + (list(decoding) if len(buffer) < 2 * self.batch_size else [])
            if not waitables:
                break
            ready, _ = ray.wait(waitables, num_returns=1)
            for got in ready:
                if got in embedding:
                    batch = embedding.pop(got)
                    load[batch.actor] -= 1
                    self._commit(ray, store, got, batch, in_flight)
                else:
                    self._take(ray, store, got, decoding, buffer, in_flight, waiting_dups)

    def _take(self, ray, store, gen, decoding, buffer, in_flight, waiting_dups) -> None:
        """The next chunk of a decoding task: problems logged, known pixels recorded as further locations, new
        pixels queued for embedding."""
        name = decoding[gen]
        try:
            chunk = ray.get(next(gen))
        except StopIteration:
            del decoding[gen]
            return
        except ray.exceptions.RayError as exc:  # the task failed after Ray's retries: the rest of this file is lost
            del decoding[gen]
            self._problem(store, Problem(shown(name), f"decoding failed on the cluster: {_cause(exc)}; re-run to "
                                                      f"index the rest of it"))
            return
        items = [i for i in chunk if not isinstance(i, Problem)]
        for p in chunk:
            if isinstance(p, Problem):
                self._problem(store, p)
        self.report.tiles_seen += len(items)
        known = store.known_hashes(i.row.content_hash for i in items if i.row.content_hash not in in_flight)
        repeats: list[TileRow] = []
        for item in items:
            h = item.row.content_hash
            if h in known:
                repeats.append(item.row)
            elif h in in_flight:
                batch = in_flight[h]
                (batch.duplicates if batch is not None else waiting_dups).append(item.row)
            else:
                in_flight[h] = None
                buffer.append(item)
        if repeats:  # pixels indexed earlier (or by an earlier run): one more location each, no embedding
            store.add([], also_at=repeats)
            self.report.skipped_existing += len(repeats)
            if self.progress is not None:
                self.progress(len(repeats))

    def _commit(self, ray, store, ref, batch: _Batch, in_flight) -> None:
        try:
            vectors = ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise TerraVLError(f"embedding failed on the cluster after {self.settings.max_task_retries} retries: "
                               f"{_cause(exc)} ({self.report.added} tiles of this run were committed and kept; "
                               f"re-run to resume)") from None
        for item, vector in zip(batch.items, vectors):
            item.row.vector = vector
        added = store.add([i.row for i in batch.items], also_at=batch.duplicates)
        self.report.added += added
        self.report.skipped_existing += len(batch.items) + len(batch.duplicates) - added
        for item in batch.items:
            in_flight.pop(item.row.content_hash, None)
        if self.progress is not None:
            self.progress(len(batch.items) + len(batch.duplicates))

    def _problem(self, store: IndexStore, problem: Problem) -> None:
        self.report.problems.append(problem)
        store.log_problem(problem.path, problem.error)


def _label(path) -> str:
    return getattr(path, "label", None) or shown(path)


def _cause(exc: BaseException) -> str:
    """The first line of a Ray error's own message (its full text repeats the remote traceback)."""
    text = str(getattr(exc, "cause", None) or exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def build_index_ray(sources: Iterable[str | Path], model: str, out: str | Path, tile_size: int = 256,
                    overlap: int = 0, whole_below: int | None = None, batch_size: int = 64,
                    settings: RaySettings | None = None,
                    progress: Callable[[int], None] | None = None) -> BuildReport:
    """:func:`terravl.index.build.build_index` on a Ray cluster; ``model`` is a reference every actor can load
    (a registry name, or a path that exists on every node)."""
    return RayBuild(sources, model, out, tile_size, overlap, whole_below, batch_size, settings, progress).run()
