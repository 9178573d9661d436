"""The service layer: served indexes, shared models, uploads, thumbnails and the two work pools.

It knows nothing of HTTP: failures are :mod:`terravl.errors` types or :class:`~terravl.server.errors.NotFound` /
:class:`~terravl.server.errors.Unavailable`, mapped to statuses in :mod:`terravl.server.errors`. Every call into
:mod:`terravl.tasks` is in the small methods under "the tasks" at the end (``search_text`` … ``localize``,
``kb_query``, ``ask_kb``, ``ground``, ``change`` and ``ask_change``, with ``_first`` and ``_hits`` reading their
answers), so a change of the tasks' return types is met there only. The HTTP routes and the MCP tools both call them.

Models load once and are shared by every request without a lock: encoding is stateless, so ``workers`` heavy
threads give that many requests in parallel.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

from terravl.errors import InputError, RasterReadError, WorkBudgetError
from terravl.index.faiss_runtime import load_faiss
from terravl.model_versions import HEADS_ENCODER
from terravl.server.errors import NotFound, Unavailable
from terravl.server.textcache import CachedTextEncoder, TextCache
from terravl.server.work import WorkPool

log = logging.getLogger("terravl.server")
HEATMAP_ID = re.compile(r"^[0-9a-f]{32}$")
UPLOAD_FIELD = "image"
KEEP_OUTPUTS = 50
"""Heat maps and change outputs kept in the temporary folder (the oldest beyond are deleted)."""
CHANGE_FILES = {"preview.png": "image/png", "mask.tif": "image/tiff", "change.tif": "image/tiff",
                "regions.geojson": "application/geo+json"}
"""The files of a change run that ``/api/v1/changes/{id}/{name}`` serves (never its change.json: it names the
server's temporary files)."""
CHANGE_LINKS = {"preview": "preview.png", "mask": "mask.tif", "change": "change.tif", "regions": "regions.geojson"}
GROUND_FILES = {"mask.tif": "image/tiff", "score.tif": "image/tiff", "regions.geojson": "application/geo+json",
                "preview.png": "image/png"}
"""The files of a grounding run that ``/api/v1/groundings/{id}/{name}`` serves (never its ground.json)."""
GROUND_LINKS = {"mask": "mask.tif", "score": "score.tif", "regions": "regions.geojson", "preview": "preview.png"}
_RUN_KINDS = {"changes": ("change_id", "change", CHANGE_FILES), "groundings": ("ground_id", "grounding run",
                                                                               GROUND_FILES)}


@dataclass(frozen=True)
class ImageSource:
    """What an image route works on: a saved upload (already sniffed) or an indexed tile, and which bands of a
    multispectral file to show as RGB (``auto``: what the file says)."""

    upload: Path | None = None
    tile_id: int | None = None
    index: str | None = None
    bands: str | tuple[int, ...] = "auto"


@dataclass(frozen=True)
class ChangeSide:
    """One date of a change request: its form field names and, once saved, the upload or the indexed tile."""

    upload_field: str
    id_field: str
    upload: Path | None = None
    tile_id: int | None = None

    @property
    def field(self) -> str:
        """The field the client used for this date (errors about it name it)."""
        return self.id_field if self.tile_id is not None else self.upload_field


@dataclass(frozen=True)
class ChangeOptions:
    """The validated options of a change request (see ``terravl.tasks.change``)."""

    method: str = "trained"
    min_region_pixels: int = 16
    bands: str | tuple[int, ...] = "auto"
    describe: bool = True


PILLOW_PLUGIN = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
"""The one Pillow plugin allowed to decode an upload stored under each content-chosen suffix."""


def _worker_thread() -> None:
    """Set up a pool thread: searches run side by side in the two pools, so each keeps one FAISS thread
    (:func:`terravl.index.vectors.set_probe_threads`; for these threads only)."""
    from terravl.index.vectors import set_probe_threads

    set_probe_threads(False)


class Service:
    """Served indexes, shared models, uploads and the work pools (``light``: search, listings, thumbnails;
    ``heavy``: image-model work)."""

    def __init__(self, indexes: list[str | Path], captioner: str | None = None, workers: int = 2,
                 queue: int = 64, max_upload_pixels: int = 40_000_000, preload: bool = True,
                 light_workers: int = 2, max_windows: int = 20_000, max_change_pixels: int = 16_000_000,
                 kbs: list[str | Path] | None = None):
        from terravl.index.shards import open_index

        self.paths: dict[str, Path] = {}
        self.damaged: dict[str, tuple[str, tuple]] = {}
        """Indexes found unavailable while serving: name → (reason, the database file's identity then). Such an
        index answers 503 until its file changes (restored or rebuilt)."""
        self._generation: dict[str, int] = {}
        for path in indexes:
            path = Path(path)
            store = open_index(path, readonly=True)  # fails early, naming the folder, if it is not a sound index
            store.close()
            name, n = path.name or "index", 2
            while name in self.paths:
                name, n = f"{path.name}-{n}", n + 1
            self.paths[name] = path
        if not self.paths:
            raise InputError("INDEX", "serve at least one index")
        self.kb_paths: dict[str, Path] = {}
        """Knowledge bases the server was started with (``terravl serve --kb``), by name: the only ones a request
        can name (never a path)."""
        for path in kbs or ():
            from terravl.kb import KBStore

            path = Path(path)
            KBStore(path, readonly=True).close()  # fails early, naming the file, if it is not a knowledge base
            name, n = path.stem or "kb", 2
            while name in self.kb_paths:
                name, n = f"{path.stem}-{n}", n + 1
            self.kb_paths[name] = path
        self.captioner_name = captioner
        self.max_upload_pixels = int(max_upload_pixels)
        self.max_windows = int(max_windows)
        """Work budget of one /localize request, in windows scored (pixels × scales): beyond it, 413."""
        self.max_change_pixels = min(int(max_change_pixels), self.max_upload_pixels)
        """Work budget of one /change request: the most pixels of the two dates' overlap; beyond it, 413."""
        self._changes_running: set[str] = set()
        """Change and grounding runs still writing their folder: never pruned (guarded by the heat-map lock)."""
        self._detector = None
        self.ground_methods: dict[str, Any] = {}
        """Grounding methods by the name a request gives (auto, trained, baseline), each loaded on first use."""
        self._ground_lock = threading.Lock()
        load_faiss()  # sets an environment variable while it loads: before the pools' threads start
        self.light = WorkPool(light_workers, queue, "terravl-light", initializer=_worker_thread)
        self.heavy = WorkPool(workers, queue, "terravl-heavy", initializer=_worker_thread)
        self.preload = preload
        self.encoders: dict[str, Any] = {}
        self.query_encoders: dict[str, CachedTextEncoder] = {}
        self.texts = TextCache()
        self._captioner = None
        self._reranker = None
        self._local = threading.local()
        self._load_lock = threading.Lock()
        self._thumbs: OrderedDict = OrderedDict()
        self._thumb_lock = threading.Lock()
        self._heat_lock = threading.Lock()
        self.tmp = Path(tempfile.mkdtemp(prefix="terravl-serve-"))
        self.ready = False

    # -- start-up -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load every index's encoder (and the captioner) once; then the service is ready."""
        for name in self.paths:
            self.encoder(self.store(name).model).encode_texts(["warm-up"])  # loads the text tower too
            self.query_encoder(self.store(name).model).encode_texts(["warm-up"])
        for name in self.kb_paths:
            self.encoder(self.kb_store(name).model).encode_texts(["warm-up"])
        if self.preload:
            try:
                self.captioner()
            except Unavailable as exc:  # search still works without a captioner
                log.warning("%s", exc.message)
        self.ready = True

    def close(self) -> None:
        self.light.shutdown()
        self.heavy.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def readiness(self) -> dict[str, Any]:
        """Indexes, jobs pending, and each pool's load. Saturation is information for a load balancer's
        weighting, not unreadiness: a saturated pool still admits work up to its queue, and search keeps its own
        pool, so the service stays ready (200) while saturated. An index that cannot be opened (a damaged or
        missing database) is: ``status`` "unavailable" and ``unavailable`` {name: reason}. Each call re-checks
        every index with a fresh read-only open (the store's cheap check, about a millisecond each)."""
        unavailable = {name: reason for name in self.paths if (reason := self.index_problem(name)) is not None}
        return {"status": "unavailable" if unavailable else "ready", "indexes": list(self.paths),
                "unavailable": unavailable, "queue": self.light.pending + self.heavy.pending,
                "pools": {"light": self.light.stats(), "heavy": self.heavy.stats()}}

    def index_problem(self, name: str) -> str | None:
        """Why index ``name`` cannot be served now, or None. A damaged index stays so until its file changes."""
        from terravl.index.shards import open_index
        from terravl.index.store import IndexOpenError

        known = self.damaged.get(name)
        if known is not None and known[1] == self._identity(name):
            return known[0]
        try:
            open_index(self.paths[name], readonly=True).close()
        except IndexOpenError as exc:
            return self._mark_damaged(name, exc)
        if known is not None:  # restored or rebuilt: serve it again, from fresh connections
            self.damaged.pop(name, None)
            self._generation[name] = self._generation.get(name, 0) + 1
            log.warning("index %s is available again", name)
        return None

    def _identity(self, name: str) -> tuple:
        from terravl.index.shards import index_files

        identity = []
        for file in index_files(self.paths[name]):  # its database; of a sharded index, every shard's
            try:
                st = file.stat()
            except OSError:
                identity.append(())
                continue
            identity.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(identity) if len(identity) > 1 else identity[0]

    def _mark_damaged(self, name: str, exc: Exception) -> str:
        """Record index ``name`` as unavailable; the reason given to clients names no server path (the log does)."""
        from terravl.index.store import IndexCorruptError

        reason = ("its database is damaged; it must be restored or rebuilt" if isinstance(exc, IndexCorruptError)
                  else "its database cannot be opened")
        if self.damaged.get(name, (None,))[0] != reason:
            log.error("index %s is unavailable: %s", name, exc)
        self.damaged[name] = (reason, self._identity(name))
        return reason

    # -- shared resources -----------------------------------------------------------------------------
    def index_name(self, name: str | None) -> str:
        name = name or next(iter(self.paths))
        if name not in self.paths:
            raise NotFound("index", f"no index named {name!r}; served: {', '.join(self.paths)}")
        return name

    def store(self, name: str | None):
        """This thread's open store of index ``name``, read-only (reopened when the index has changed on disk).
        An index found damaged, now or by an earlier request or probe, is :class:`Unavailable` (503), never a 500;
        a store that finds damage later (mid-search) marks the index through its ``on_damage``."""
        from terravl.index.shards import open_index
        from terravl.index.store import IndexOpenError

        name = self.index_name(name)
        known = self.damaged.get(name)
        if known is not None and known[1] == self._identity(name):
            raise Unavailable(f"index {name!r} is unavailable: {known[0]}")
        stores = getattr(self._local, "stores", None)
        if stores is None:
            stores = self._local.stores = {}
        store, opened_at, generation = stores.get(name, (None, None, None))
        try:
            # the store caches vectors: reopen after an index change (or a restore)
            if store is None or generation != self._generation.get(name, 0) or store.version != opened_at:
                if store is not None:
                    stores.pop(name, None)
                    store.close()
                store = open_index(self.paths[name], readonly=True)  # an IndexStore, or a ShardSet
                store.on_damage = lambda exc, name=name: self._mark_damaged(name, exc)
                stores[name] = (store, store.version, self._generation.get(name, 0))
        except IndexOpenError as exc:
            if store is not None:
                stores.pop(name, None)
                store.close()
            raise Unavailable(f"index {name!r} is unavailable: {self._mark_damaged(name, exc)}") from None
        return store

    def kb_name(self, name: str | None) -> str:
        if not self.kb_paths:
            raise NotFound("kb", "this server serves no knowledge base (start it with `terravl serve --kb KB`)")
        name = name or next(iter(self.kb_paths))
        if name not in self.kb_paths:
            raise NotFound("kb", f"no knowledge base named {name!r}; served: {', '.join(self.kb_paths)}")
        return name

    def kb_store(self, name: str | None):
        """This thread's read-only store of knowledge base ``name`` (reopened when the file has changed)."""
        from terravl.kb import KBOpenError, KBStore

        name = self.kb_name(name)
        stores = getattr(self._local, "kb_stores", None)
        if stores is None:
            stores = self._local.kb_stores = {}
        store = stores.get(name)
        try:
            if store is None:
                store = stores[name] = KBStore(self.kb_paths[name], readonly=True)
            return store
        except KBOpenError as exc:
            stores.pop(name, None)
            log.error("knowledge base %s is unavailable: %s", name, exc)
            raise Unavailable(f"knowledge base {name!r} is unavailable") from None

    def kbs(self) -> list[dict]:
        out = []
        for name in self.kb_paths:
            info = self.kb_store(name).info()
            out.append({"name": name, "items": info["items"], "images": info["images"],
                        "passages": info["passages"], "model": info["model"]})
        return out

    def encoder(self, model: str):
        with self._load_lock:
            if model not in self.encoders:
                import terravl.models as m

                self.encoders[model] = m.load(model)
            return self.encoders[model]

    def query_encoder(self, model: str) -> CachedTextEncoder:
        """What encodes a search's text, its embeddings cached: the model's PyTorch-free text side
        (:func:`~terravl.models.light_text.open_text_encoder`, the full model's numbers to 1e-5, so cached under a
        key of its own) on one ONNX session shared by the light pool's workers, with one worker's share of the
        cores as its threads (the workers run queries side by side: on 2 cores one thread per query gave more
        queries per second than two contending) — else :meth:`text_cached`. After :meth:`encoder`: loading the
        full model records what the light side needs. It holds a second MiniLM session (~90 MB) beside the full
        model's."""
        with self._load_lock:
            found = self.query_encoders.get(model)
        if found is not None:
            return found
        self.encoder(model)
        from terravl.models.light_text import open_text_encoder
        from terravl.models.text_onnx import cpu_threads

        light = open_text_encoder(model, threads=max(1, cpu_threads() // max(1, self.light.workers)))
        cached = CachedTextEncoder(light, self.texts, f"{model}|text side") if light else self.text_cached(model)
        with self._load_lock:
            return self.query_encoders.setdefault(model, cached)

    def text_cached(self, model: str) -> CachedTextEncoder:
        """The model's encoder with its text embeddings cached (label lists come back often)."""
        return CachedTextEncoder(self.encoder(model), self.texts, model)

    def captioner(self):
        with self._load_lock:
            if self._captioner is None:
                import terravl.models as m

                try:
                    self._captioner = m.load_captioner(self.captioner_name or m.DEFAULT_CAPTIONER)
                except InputError as exc:
                    log.error("captioner unavailable: %s", exc)
                    raise Unavailable(f"captioning is unavailable: {exc.message}") from None
                self._captioner.encoder  # noqa: B018 - load its image encoder now too
            return self._captioner

    def describer(self):
        """The description experts (scene, objects, where, counts) for chat's ``describe``, loaded on first use
        and shared by every request after it."""
        with self._ground_lock:
            if getattr(self, "_describer", None) is None:
                from terravl.tasks.describe import Experts

                self._describer = Experts(encoder=self.encoder(HEADS_ENCODER), captioner=self.captioner())
            return self._describer

    def detector(self):
        """The shipped change detector, loaded on the first ``trained`` change request (most deployments never
        compare dates, so it is not loaded at start-up) and shared by every request after it."""
        with self._load_lock:
            if self._detector is None:
                from terravl.models.change_detector import load_change_detector

                try:
                    self._detector = load_change_detector()
                except InputError as exc:  # no weights installed: the server's configuration, not the request
                    log.error("change detector unavailable: %s", exc)
                    raise Unavailable("the trained change detector is unavailable on this server; use method "
                                      "cva or embedding") from None
            return self._detector

    def indexes(self) -> list[dict]:
        return [{"name": n, "tiles": self.store(n).count(), "model": self.store(n).model} for n in self.paths]

    # -- tiles ----------------------------------------------------------------------------------------
    def tile_row(self, index: str | None, tile_id: int):
        row = self.store(index).rows([tile_id]).get(tile_id)
        if row is None:
            raise NotFound("id", f"no tile {tile_id} in index {self.index_name(index)!r}")
        return row

    def tile_source(self, row) -> Path:
        """The source raster of an indexed tile; its absence is the server's problem (503), and its path is
        written to the server log only."""
        source = _local_file(row.source)
        if source is None:
            log.error("tile %s: source file unavailable: %s", row.id if hasattr(row, "id") else "?", row.source)
            raise Unavailable("tile source unavailable")
        return source

    def tile_pixels(self, index: str | None, tile_id: int, bands: str | tuple[int, ...] = "auto"):
        """(H, W, 3) uint8 pixels of an indexed tile, read from its source file by the index's own record."""
        from terravl.io import PixelWindow, open_raster

        row = self.tile_row(index, tile_id)
        source = self.tile_source(row)
        window = PixelWindow(**row.window) if row.window else None
        try:
            with open_raster(source, bands=bands) as src:
                array, _ = src.read_rgb(window)
        except RasterReadError as exc:
            log.error("tile %s: source unreadable: %s", tile_id, exc)
            raise Unavailable("tile source unavailable") from None
        return array.copy(), row

    def thumbnail(self, index: str | None, tile_id: int, size: int) -> bytes:
        key = (self.index_name(index), tile_id, size, self.store(index).version)
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        array, _ = self.tile_pixels(index, tile_id)
        return self._cache_thumb(key, _png(array, size))

    def _cache_thumb(self, key: tuple, data: bytes) -> bytes:
        with self._thumb_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > 512:
                self._thumbs.popitem(last=False)
        return data

    def kb_image(self, kb: str | None, item_id: int, size: int) -> bytes:
        """PNG of an image item of a served knowledge base (an evidence item of kind ``image``), read from the
        source the knowledge base records for it: so a citation can be shown, never a file the client names."""
        import json

        from terravl.io import PixelWindow, open_raster

        name = self.kb_name(kb)
        store = self.kb_store(name)
        key = ("kb", name, item_id, size, store.version)
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        item = store.items([item_id]).get(item_id)
        if item is None:
            raise NotFound("item_id", f"no item {item_id} in knowledge base {name!r}")
        if item.kind != "image":
            raise NotFound("item_id", f"item {item_id} is a text passage: it has no image")
        window = PixelWindow(**json.loads(item.ref)) if item.ref.startswith("{") else None
        try:
            with open_raster(item.source) as src:
                array, _ = src.read_rgb(window)
        except (RasterReadError, InputError) as exc:
            log.error("knowledge base %s item %s: source unreadable: %s", name, item_id, exc)
            raise Unavailable("the item's image file is unavailable on this server") from None
        return self._cache_thumb(key, _png(array, size))

    def heatmap_file(self, heatmap_id: str) -> Path:
        if not HEATMAP_ID.match(heatmap_id):
            raise NotFound("heatmap_id", "no such heat map")
        path = self.tmp / "heatmaps" / f"{heatmap_id}.tif"
        if not path.is_file():
            raise NotFound("heatmap_id", "no such heat map (only the last 50 are kept)")
        return path

    def heatmap_path(self) -> Path:
        """A new heat-map file name; the oldest maps beyond the last 50 are deleted (under a lock: localize
        requests run in parallel, and one must not stat a file another is deleting)."""
        folder = self.tmp / "heatmaps"
        with self._heat_lock:
            folder.mkdir(exist_ok=True)
            existing = []
            for path in folder.glob("*.tif"):
                try:
                    existing.append((path.stat().st_mtime, path))
                except OSError:  # gone meanwhile
                    continue
            for _, old in sorted(existing)[:-49]:
                old.unlink(missing_ok=True)
        return folder / f"{uuid.uuid4().hex}.tif"

    def change_folder(self) -> Path:
        """A new, empty folder for one change run's outputs."""
        return self.run_folder("changes")

    def run_folder(self, kind: str) -> Path:
        """A new, empty folder for one run's outputs (``kind``: changes or groundings); the oldest finished runs
        of that kind beyond the last 50 are deleted (under the lock that guards heat maps, for the same reason)."""
        folder = self.tmp / kind
        with self._heat_lock:
            folder.mkdir(exist_ok=True)
            existing = []
            for path in folder.iterdir():
                try:
                    existing.append((path.stat().st_mtime, path))
                except OSError:  # gone meanwhile
                    continue
            done = [item for item in sorted(existing) if item[1].name not in self._changes_running]
            for _, old in done[:-(KEEP_OUTPUTS - 1)]:
                shutil.rmtree(old, ignore_errors=True)
            new = folder / uuid.uuid4().hex
            new.mkdir()
            self._changes_running.add(new.name)
        return new

    def _run_done(self, folder: Path) -> None:
        with self._heat_lock:
            self._changes_running.discard(folder.name)

    def change_file(self, change_id: str, name: str) -> tuple[Path, str]:
        """(path, media type) of one output of a change run, by its opaque id and file name."""
        return self.run_file("changes", change_id, name)

    def run_file(self, kind: str, run_id: str, name: str) -> tuple[Path, str]:
        """(path, media type) of one output of a change or grounding run, by its opaque id and file name."""
        field, what, files = _RUN_KINDS[kind]
        if not HEATMAP_ID.match(run_id):
            raise NotFound(field, f"no such {what}")
        if name not in files:
            raise NotFound("name", f"no such file; a {what} has {', '.join(files)}")
        path = self.tmp / kind / run_id / name
        if not path.is_file():
            raise NotFound(field, f"no such {what} (only the last {KEEP_OUTPUTS} are kept)")
        return path, files[name]

    # -- uploads --------------------------------------------------------------------------------------
    def save_upload(self, stream: BinaryIO) -> Path:
        """Store an upload (the request's already received body part) under a suffix chosen by its content (never
        the client's file name): only JPEG, PNG, TIFF and WebP pass; everything else, notably a GDAL VRT that would
        read other files of this server, is an :class:`UnsupportedFormatError` (415) before any decoder sees it.
        Runs in a worker thread, not on the event loop, which only moves bytes."""
        from terravl.io.formats import SUFFIX, sniff_format

        stem = self.tmp / f"upload-{uuid.uuid4().hex}"
        raw = stem.with_suffix(".bin")
        stream.seek(0)
        try:
            with open(raw, "wb") as fh:
                shutil.copyfileobj(stream, fh, 1 << 20)
        except BaseException:
            raw.unlink(missing_ok=True)
            raise
        try:
            fmt = sniff_format(raw, field=UPLOAD_FIELD)
        except InputError:
            raw.unlink(missing_ok=True)
            raise
        return raw.rename(stem.with_suffix(SUFFIX[fmt]))

    def check_upload(self, path: Path) -> None:
        """Header-only check of an uploaded image: readable, within the pixel limit (decompression bombs stop
        here, before any pixel is decoded)."""
        from terravl.errors import ImageTooLargeError
        from terravl.io import raster_info

        try:
            info = raster_info(path, trusted=False)
        except InputError as exc:
            raise InputError(UPLOAD_FIELD, f"not a readable image ({exc.message})") from None
        if info.width * info.height > self.max_upload_pixels:
            raise ImageTooLargeError(UPLOAD_FIELD, f"{info.width} × {info.height} pixels exceeds the upload limit "
                                                   f"of {self.max_upload_pixels:,} pixels")

    def decode_upload(self, path: Path, bands: str | tuple[int, ...] = "auto"):
        """The uploaded image as PIL RGB after the header check, each format by its own decoder only: Pillow's
        JPEG, PNG or WebP plugin (by the content-chosen suffix), terravl.io's GDAL GTiff driver for TIFF."""
        from PIL import Image

        from terravl.io import read_image
        from terravl.io.raster import open_pillow

        self.check_upload(path)
        try:
            if path.suffix == ".tif":
                image = read_image(path, bands=bands, max_pixels=self.max_upload_pixels, trusted=False).with_data()
                return Image.fromarray(image.array, "RGB")
            picture = open_pillow(str(path), (PILLOW_PLUGIN[path.suffix],))
            picture.load()
            return picture if picture.mode == "RGB" else picture.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:  # Pillow reports some broken files as SyntaxError
            raise InputError(UPLOAD_FIELD, f"not a readable image ({exc})") from None

    def scrubbed(self, exc: InputError, path: Path) -> InputError:
        """The same error without the server's temporary path: an error about the upload names the field."""
        message = exc.message.replace(str(path), UPLOAD_FIELD).replace(str(self.tmp), "…")
        field = UPLOAD_FIELD if str(path) in exc.source or str(self.tmp) in exc.source else exc.source
        return type(exc)(field, message)

    async def on_image(self, source: ImageSource, upload, work: Callable[[ImageSource], Any], request=None):
        """Run ``work(source)`` in the heavy pool (dropped if the client leaves while it waits), saving the upload
        (if any) first and deleting it afterwards, whatever happened. Exactly one input must be given."""
        if (upload is None) == (source.tile_id is None):
            raise InputError("image/id", "give exactly one of an uploaded image or the id of an indexed tile")

        def run():
            here = source if upload is None else ImageSource(self.save_upload(upload.file), None, source.index,
                                                                          source.bands)
            try:
                return work(here)
            except InputError as exc:
                if here.upload is None:
                    raise
                raise self.scrubbed(exc, here.upload) from None
            finally:
                if here.upload is not None:
                    here.upload.unlink(missing_ok=True)

        return await self.heavy.run(run, request=request)

    async def on_pair(self, before: ChangeSide, after: ChangeSide, uploads: tuple, index: str | None,
                      bands: str | tuple[int, ...], work: Callable[[Path, Path, tuple[str, str], bool], Any],
                      request=None):
        """Run ``work(before_path, after_path, labels, trusted)`` for two dates in the heavy pool: two uploads
        (saved, checked against the upload limits and read as untrusted) or two indexed tiles (their pixels written
        with their georeference and date to temporary GeoTIFFs, so the pair aligns as on the map). Errors name the
        client's fields, never the server's temporary files; everything temporary is deleted afterwards."""
        for side, upload in zip((before, after), uploads):
            if (upload is None) == (side.tile_id is None):
                raise InputError(f"{side.upload_field}/{side.id_field}", "give exactly one of an uploaded image or "
                                                                         "the id of an indexed tile")
        if (uploads[0] is None) != (uploads[1] is None):
            raise InputError(after.field, f"compare two uploads ({before.upload_field}, {after.upload_field}) or two "
                                          f"indexed tiles ({before.id_field}, {after.id_field}), not one of each")
        if before.tile_id is not None:
            self.index_name(index)  # an unknown index is a 404 before any work

        def run():
            made: list[Path] = []
            sides, names = [before, after], []
            try:
                for i, upload in enumerate(uploads):
                    if upload is not None:
                        try:
                            path = self.save_upload(upload.file)
                        except InputError as exc:
                            raise _renamed(exc, sides[i].upload_field, exc.message) from None
                        made.append(path)
                        sides[i] = ChangeSide(sides[i].upload_field, sides[i].id_field, upload=path)
                        self._check_side(sides[i])
                        names.append(f"{sides[i].upload_field} upload")
                    else:
                        path, name = self.tile_raster(index, sides[i], bands)
                        made.append(path)
                        names.append(name)
                labels = (names[0], names[1])
                try:
                    return _scrub(work(made[0], made[1], labels, uploads[0] is None),
                                  dict(zip(map(str, made), labels)), str(self.tmp))
                except InputError as exc:
                    raise self.pair_scrubbed(exc, made, sides, labels) from None
            finally:
                for path in made:
                    path.unlink(missing_ok=True)

        return await self.heavy.run(run, request=request)

    def _check_side(self, side: ChangeSide) -> None:
        """The header check of one uploaded date, its errors naming that date's field."""
        try:
            self.check_upload(side.upload)
        except InputError as exc:
            raise _renamed(exc, side.upload_field, exc.message.replace(str(side.upload), side.upload_field)) from None

    def tile_raster(self, index: str | None, side: ChangeSide, bands: str | tuple[int, ...] = "auto"
                    ) -> tuple[Path, str]:
        """An indexed tile's pixels as a temporary 8-bit RGB GeoTIFF with the tile's georeference, acquisition date
        and valid mask (what change detection aligns; ``bands`` chosen as for the tile's other routes), and the
        label it is shown by (``tile ID of SOURCE``: two tiles may come from one file)."""
        import rasterio

        from terravl.errors import BandError
        from terravl.io import PixelWindow, open_raster

        try:
            row = self.tile_row(index, side.tile_id)
        except NotFound as exc:
            raise NotFound(side.id_field, exc.message) from None
        source = self.tile_source(row)
        window = PixelWindow(**row.window) if row.window else None
        try:
            with open_raster(source, bands=bands) as src:
                array, valid = src.read_rgb(window)
                georef = src.info.georef
        except BandError as exc:
            raise InputError("bands", exc.message.replace(str(source), f"tile {side.tile_id}")) from None
        except RasterReadError as exc:
            log.error("tile %s: source unreadable: %s", side.tile_id, exc)
            raise Unavailable("tile source unavailable") from None
        if georef is not None and window is not None:
            georef = georef.for_window(window)
        path = self.tmp / f"tile-{uuid.uuid4().hex}.tif"
        profile = {"driver": "GTiff", "width": array.shape[1], "height": array.shape[0], "count": 3,
                   "dtype": "uint8", "photometric": "RGB"}
        if georef is not None:
            profile.update(crs=georef.crs_wkt, transform=georef.transform)
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
            dst.write(array.transpose(2, 0, 1))
            if row.acquired:
                dst.update_tags(ACQUISITIONDATETIME=row.acquired)
            if not valid.all():
                dst.write_mask(valid.astype("uint8") * 255)
        return path, f"tile {side.tile_id} of {row.source}"

    def pair_scrubbed(self, exc: InputError, paths: list[Path], sides: list[ChangeSide],
                      labels: tuple[str, str]) -> InputError:
        """An error about a pair, naming the client's fields and showing labels instead of temporary paths: about
        one date, that date's field; about both (no overlap, too large, nothing valid), both fields."""
        message = _scrub(exc.message, dict(zip(map(str, paths), labels)), str(self.tmp))
        if isinstance(exc, WorkBudgetError):  # the task's hint names a CLI option; the budget here is the server's
            message = message.replace(" or raise the limit (--max-pixels)", "")
        hits = [side.field for path, side in zip(paths, sides) if str(path) in exc.source]
        if len(hits) == 2 or exc.source == "before":  # the task names the pair by its first file
            field = f"{sides[0].field} and {sides[1].field}"
        elif hits:
            field = hits[0]
        else:
            field = _scrub(exc.source, {str(p): s.field for p, s in zip(paths, sides)}, str(self.tmp))
        return _renamed(exc, field, message)

    def pixels(self, source: ImageSource):
        """(model input, what it is) for an upload or an indexed tile."""
        if source.upload is not None:
            return self.decode_upload(source.upload, source.bands), {"path": "upload"}
        array, row = self.tile_pixels(source.index, source.tile_id, source.bands)
        return array, {"path": row.source, "window": row.window, "footprint": row.footprint}

    # -- the tasks (the only calls into terravl.tasks) ------------------------------------------------------
    def labels(self, labels: str | None, classes: str | None) -> list[str]:
        """Validated zero-shot labels: a custom list or a built-in one, bounded in count and length."""
        from terravl.tasks.classify import resolve_labels

        return resolve_labels(labels, classes)

    def label_weights(self, model: str, names: list[str]):
        """(n_labels, D) zero-shot class weights, their text embeddings from the cache."""
        from terravl.eval.zeroshot import RS_TEMPLATES, class_embeddings

        return class_embeddings(self.text_cached(model), names, RS_TEMPLATES)

    def reranker(self):
        """The captioner as a re-ranker (:mod:`terravl.tasks.rerank`), made once; it keeps no per-call state."""
        if self._reranker is None:
            captioner = self.captioner()  # takes the load lock itself
            from terravl.tasks.rerank import Reranker

            with self._load_lock:
                if self._reranker is None:
                    self._reranker = Reranker(captioner, read_tile=_served_tile_pixels)
        return self._reranker

    def search_pool(self, rerank: bool) -> WorkPool:
        """The pool a text search runs in: re-ranking reads tiles and runs the captioner, image-model work."""
        return self.heavy if rerank else self.light

    def search_text(self, index: str | None, text: str, k: int, bbox, date_from, date_to,
                    rerank: bool = False) -> list[dict]:
        """Text search; with ``rerank`` the captioner re-reads the best tiles (run it in the heavy pool)."""
        from terravl.tasks import search

        store = self.store(index)  # query embeddings cached: popular queries skip the text tower
        return self._hits(search(store, text=text, k=k, bbox=bbox, date_from=date_from, date_to=date_to,
                                 encoder=self.query_encoder(store.model),
                                 rerank=self.reranker() if rerank else None), index)

    def search_image(self, source: ImageSource, k: int, bbox, date_from, date_to) -> list[dict]:
        from terravl.tasks import search

        picture = self.decode_upload(source.upload, source.bands)
        store = self.store(source.index)
        return self._hits(search(store, image=picture, k=k, bbox=bbox, date_from=date_from, date_to=date_to,
                                 encoder=self.encoder(store.model)), source.index)

    def classify(self, source: ImageSource, names: list[str], k: int) -> dict:
        from terravl.tasks import classify

        pixels, about = self.pixels(source)
        model = self.store(source.index).model
        weights = self.label_weights(model, names)
        return {**_first(classify([pixels], self.encoder(model), names, None, k, weights=weights)), **about}

    def caption(self, source: ImageSource, beams: int, max_tokens: int) -> dict:
        from terravl.tasks import caption

        pixels, about = self.pixels(source)
        return {**_first(caption([pixels], self.captioner(), beams=beams, max_tokens=max_tokens)), **about}

    def describe(self, source: ImageSource, max_objects: int) -> dict:
        """A detailed description by the small experts (scene, objects, where, counts), with its parts."""
        from terravl.tasks.describe import describe

        pixels, about = self.pixels(source)
        return {**_first(describe([pixels], experts=self.describer(), max_objects=max_objects, progress=False)),
                **about}

    def ask(self, source: ImageSource, question: str) -> dict:
        from terravl.tasks import ask

        pixels, about = self.pixels(source)
        return {**_first(ask([pixels], question, self.captioner())), **about}

    def kb_query(self, kb: str | None, text: str, k: int, bbox, date_from, date_to) -> dict:
        """Ranked evidence from a served knowledge base; sources are named by file name, never a server path."""
        from terravl.kb import retrieve

        store = self.kb_store(kb)
        result = retrieve(store, self.encoder(store.model), text, None, k, bbox, date_from, date_to).to_dict()
        result["evidence"] = [_public_evidence(e) for e in result["evidence"]]
        return {**result, "kb": self.kb_name(kb)}

    def ask_kb(self, source: ImageSource | None, question: str, kb: str | None) -> dict:
        """An answer grounded in a served knowledge base, about an upload or a tile when one is given."""
        from terravl.tasks.rag import ask_kb

        store = self.kb_store(kb)
        pixels, about = self.pixels(source) if source is not None else (None, {"path": None})
        answer = ask_kb(store, question, pixels, self.encoder(store.model),
                        self.captioner() if pixels is not None else None, path=about.get("path")).to_dict()
        answer["evidence"] = [_public_evidence(e) for e in answer["evidence"]]
        return {**answer, "kb": self.kb_name(kb)}

    def localize(self, source: ImageSource, query: str, scales: tuple[int, ...], top: int) -> dict:
        """Heat map and top regions of ``query`` over an upload or, for a tile, the whole raster it came from."""
        from terravl.tasks import localize

        if source.upload is not None:
            self.check_upload(source.upload)
            raster, shown = source.upload, "upload"
        else:
            raster = self.tile_source(self.tile_row(source.index, source.tile_id))
            shown = str(raster)
        heat = self.heatmap_path()
        encoder = self.encoder(self.store(source.index).model)
        try:
            result = localize(raster, query, encoder, heat, scales=scales, top=top, max_windows=self.max_windows,
                              trusted=source.upload is None, label=shown, bands=source.bands)  # an upload is "upload", never its file
        except RasterReadError as exc:
            if source.upload is not None:
                raise
            log.error("localize: source unreadable: %s", exc)
            raise Unavailable("tile source unavailable") from None
        return {"query": query, "path": shown, "windows": result["windows"], "regions": result["regions"],
                "heatmap": f"/api/v1/heatmaps/{heat.stem}"}

    def _change_kwargs(self, options: ChangeOptions, trusted: bool, labels: tuple[str, str]) -> dict:
        """The keyword arguments of ``terravl.tasks.change`` for a request: the service's shared models (the
        detector only for ``trained``, an encoder only where one is used), its work budget, and the inputs' trust."""
        from terravl.tasks.change_detect import EMBEDDING_MODEL, make_method

        kwargs: dict[str, Any] = {"method": options.method, "min_region_pixels": options.min_region_pixels,
                                  "describe": options.describe, "max_pixels": self.max_change_pixels,
                                  "bands": "auto" if trusted else options.bands, "trusted": trusted,
                                  "labels": labels}
        if options.method == "trained":
            kwargs["detector"] = self.detector()
        if options.method == "embedding":  # the encoder it was calibrated with, shared, whatever describes
            kwargs["method"] = make_method("embedding", encoder=self.encoder(EMBEDDING_MODEL))
        if options.describe:
            captioner = self.captioner()
            kwargs.update(captioner=captioner, encoder=captioner.encoder)
        return kwargs

    def change(self, before: Path, after: Path, labels: tuple[str, str], trusted: bool,
               options: ChangeOptions) -> dict:
        """What changed from ``before`` to ``after``, with its files written under a new opaque id: the result
        without server paths, ``change_id`` and the URLs of its files in ``links``."""
        from terravl.tasks import change

        kwargs = self._change_kwargs(options, trusted, labels)
        folder = self.change_folder()
        try:
            result = change(before, after, folder, **kwargs)
            (folder / "change.json").unlink(missing_ok=True)  # it names the temporary inputs: never kept or served
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            self._run_done(folder)
        base = f"/api/v1/changes/{folder.name}"
        return {**result.model_dump(), "outputs": None, "change_id": folder.name,
                "links": {key: f"{base}/{name}" for key, name in CHANGE_LINKS.items()}}

    def ask_change(self, before: Path, after: Path, labels: tuple[str, str], trusted: bool, question: str,
                   options: ChangeOptions) -> dict:
        """An answer to ``question`` about the change between the two dates: from the measured change when it is
        about whether, how much, how many, where or what was there before; else the VQA model on each date."""
        from terravl.tasks import ask_change

        kwargs = self._change_kwargs(options, trusted, labels)
        captioner = kwargs.pop("captioner", None) or self.captioner()
        return ask_change(before, after, question, captioner, **kwargs).model_dump()

    def grounder(self, method: str):
        """The grounding method ``method`` (auto, trained, baseline), loaded on first use and shared by every
        request after it. The trained head reads the shipped default encoder's tower, whatever model the served
        indexes were built with."""
        from terravl.models.registry import WeightsNotFoundError
        from terravl.tasks.ground_methods import make_method

        with self._ground_lock:
            if method not in self.ground_methods:
                try:
                    self.ground_methods[method] = make_method(method, encoder=self.encoder(HEADS_ENCODER))
                except WeightsNotFoundError:
                    # the registry's message names folders on this server: not for the caller
                    raise Unavailable("the trained grounder is not installed on this server (use method "
                                      "baseline)") from None
            return self.ground_methods[method]

    def ground(self, source: ImageSource, expression: str, all_: bool, method: str) -> dict:
        """Where ``expression`` is in an upload or an indexed tile, with its files written under a new opaque id:
        the result without server paths, ``ground_id`` and the URLs of its files in ``links``."""
        from terravl.tasks.ground import ground

        grounder = self.grounder(method)
        folder = self.run_folder("groundings")
        made = None
        try:
            if source.upload is not None:
                self.check_upload(source.upload)
                raster, label, trusted, bands = source.upload, "upload", False, source.bands
            else:
                made, label = self.tile_raster(source.index, ChangeSide("image", "id", tile_id=source.tile_id),
                                               source.bands)
                raster, trusted, bands = made, True, "auto"
            result = ground(raster, expression, method=grounder, all=all_, out=folder,
                            max_pixels=self.max_change_pixels, bands=bands, trusted=trusted, label=label,
                            progress=False)
            (folder / "ground.json").unlink(missing_ok=True)  # it names the server's files: never kept or served
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            self._run_done(folder)
            if made is not None:
                made.unlink(missing_ok=True)
        base = f"/api/v1/groundings/{folder.name}"
        return {**result.model_dump(), "outputs": None, "ground_id": folder.name,
                "links": {key: f"{base}/{name}" for key, name in GROUND_LINKS.items()}}

    def chat(self, sessions, session_id: str | None, instruction: str, uploads: tuple = (None, None),
             tiles: tuple[int | None, int | None] = (None, None), index: str | None = None,
             kb: str | None = None) -> dict:
        """One turn of a conversation (``POST /api/v1/chat``) in the session store ``sessions``
        (:class:`~terravl.server.chat_sessions.ChatSessions`): a new session when ``session_id`` is None. Images
        (uploads with the same hardening as every image route, or indexed tiles written out with their
        georeference) start the conversation or replace its images; they stay in the session's folder until it
        expires. The answer names images as "upload" or "tile N of …", never by the server's files."""
        import terravl.models as m
        from terravl.tasks.chat import ChatModels, Lazy, chat_turn

        given = any(u is not None for u in uploads) or any(t is not None for t in tiles)
        session = sessions.get(session_id) if session_id is not None else sessions.create()
        try:
            with session.lock:
                if not sessions.alive(session):
                    raise NotFound("session", "the conversation expired; start a new one by leaving session out")
                state = session.state
                if given or state is None:
                    state = self._chat_state(session.folder, uploads, tiles, index)
                index_name = self.index_name(index)
                kb_name = self.kb_name(kb) if kb is not None else (
                    None if state.kb is not None or not self.kb_paths else self.kb_name(None))
                state = state.model_copy(update={"index": str(self.paths[index_name]),
                                                 **({"kb": str(self.kb_paths[kb_name])} if kb_name else {})})
                models = ChatModels(captioner=Lazy(self.captioner),
                                    encoder=Lazy(lambda: self.encoder(m.DEFAULT_MODEL)),
                                    grounder=Lazy(lambda: self.grounder("auto")), detector=Lazy(self.detector),
                                    describer=Lazy(self.describer),
                                    router=sessions.router, encoders=self.encoder,
                                    max_pixels=self.max_change_pixels)
                answer, session.state = chat_turn(state, instruction, models)
                sessions.touch(session)
        except BaseException:
            if session_id is None:
                sessions.discard(session)  # a conversation whose first turn failed has nothing to continue
            raise
        result = answer.to_dict()
        result["evidence"] = [_public_evidence(e) for e in result["evidence"]]
        result["hits"] = [{**h, "index": index_name, "thumbnail": f"/api/v1/tiles/{h['id']}?index={index_name}"}
                          for h in result["hits"]]
        names = dict(zip(state.images, state.labels))
        return _scrub({"session": session.id, **result}, names, str(self.tmp))

    def _chat_state(self, folder: Path, uploads: tuple, tiles: tuple, index: str | None):
        """A conversation's images, saved in its ``folder``: uploads (sniffed, header-checked against the upload
        limit, read as untrusted) or indexed tiles (as GeoTIFFs with their georeference); errors name the field."""
        from terravl.tasks.chat import ChatState

        fields = (("image", "id"), ("image2", "id2"))
        if uploads[0] is None and tiles[0] is None:
            raise InputError("image/id", "a new conversation needs an image: upload image (and image2 for a second "
                                         "date) or give the id (and id2) of an indexed tile")
        for (upload_field, id_field), upload, tile in zip(fields, uploads, tiles):
            if upload is not None and tile is not None:
                raise InputError(f"{upload_field}/{id_field}", "give an uploaded image or a tile id, not both")
        for path in folder.iterdir():  # new images replace the conversation's
            path.unlink(missing_ok=True)
        images, labels, trusted = [], [], True
        for n, ((upload_field, id_field), upload, tile) in enumerate(zip(fields, uploads, tiles), start=1):
            if upload is not None:
                try:
                    saved = self.save_upload(upload.file)
                    self.check_upload(saved)
                except InputError as exc:
                    raise _renamed(exc, upload_field, exc.message.replace(str(self.tmp), "…")) from None
                path = saved.rename(folder / f"image{n}{saved.suffix}")
                labels.append("upload" if uploads[1 - (n - 1)] is None else f"{upload_field} upload")
                trusted = False
            elif tile is not None:
                made, label = self.tile_raster(index, ChangeSide(upload_field, id_field, tile_id=tile))
                path = made.rename(folder / f"image{n}.tif")
                labels.append(label)
            else:
                continue
            images.append(str(path))
        return ChatState.start(images, labels=labels, trusted=trusted, check=False)

    def _hits(self, results, index: str | None) -> list[dict]:
        name = self.index_name(index)
        return [{**{k: getattr(hit, k) for k in ("id", "path", "score", "footprint", "window", "crs", "acquired")},
                 "index": name, "thumbnail": f"/api/v1/tiles/{hit.id}?index={name}"} for hit in results]


def _png(array, size: int) -> bytes:
    """(H, W, 3) uint8 pixels as a PNG at most ``size`` pixels on its longer side."""
    from PIL import Image

    image = Image.fromarray(array)
    image.thumbnail((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _public_evidence(item: dict) -> dict:
    """An evidence item as a client sees it: its source by file name only (no server path)."""
    return {**item, "source": Path(item["source"]).name}


def _first(answers) -> dict:
    """The one answer of a one-image task call as a dict; a problem with the image is an error naming it."""
    from terravl.results import Problem

    item = answers[0]
    if isinstance(item, Problem):
        raise InputError(UPLOAD_FIELD, item.error)
    return item.to_dict()


def _renamed(exc: InputError, field: str, message: str) -> InputError:
    """``exc`` naming ``field`` with ``message``, of the same type where that type takes (field, message), so the
    status it maps to (400, 413, 415) is kept."""
    kind = type(exc) if type(exc).__init__ is InputError.__init__ else InputError
    return kind(field, message)


def _scrub(value: Any, names: dict[str, str], tmp: str) -> Any:
    """``value`` (a result or a message) with each temporary path replaced by what the client calls it, and any
    other mention of the server's temporary folder hidden."""
    if isinstance(value, str):
        for path, name in names.items():
            value = value.replace(path, name)
        return value.replace(tmp, "…")
    if isinstance(value, dict):
        return {k: _scrub(v, names, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, names, tmp) for v in value]
    return value


def _served_tile_pixels(hit):
    """A hit's pixels for re-ranking, read only from a local file, as thumbnails are (:meth:`Service.tile_source`):
    an object-store or vanished source is not fetched with the server's credentials; the hit keeps its place."""
    from terravl.io import read_window_rgb

    source = _local_file(hit.path)
    if source is None:
        raise FileNotFoundError(f"tile source unavailable: {hit.path}")
    return read_window_rgb(source, hit.window)


def _local_file(source: str) -> Path | None:
    """An indexed tile's source when it is a file on this machine; None for a vanished file or an object-store
    URL, which the server never fetches with its own credentials."""
    path = Path(source)
    return path if path.is_file() else None
