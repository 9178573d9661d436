"""Nearest-neighbour search over an index's vectors: exact (one matrix product) for small indexes, FAISS IVF
(inverted lists over k-means cells, the vectors held in float16) above ``ANN_THRESHOLD`` vectors, and IVF-PQ
(compressed codes, re-ranked by exact dot products) above ``PQ_THRESHOLD``.

Recall is measured, not assumed: after building, :meth:`IVFIndex.build` takes a sample of the indexed vectors as
leave-one-out queries (each query's own row is dropped from both answers, so it stands for a new vector near the
archive), computes their exact top-10, and doubles ``nprobe`` until recall@10 reaches a target (0.95 by default).
The chosen ``nprobe`` and the measured recall are saved with the index and shown by :func:`describe`.

The approximate index is a cache derived from the SQLite store, saved as one file (``vectors.ann.npz``) with the
store version it was built from (in memory only for a read-only index); when the store changes, or the file was
written by an older TerraVL without a measured recall, it is rebuilt. Filtered searches (bbox, dates) are exact
over the filtered subset.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from terravl.index.faiss_runtime import load_faiss

log = logging.getLogger("terravl.index")
ANN_THRESHOLD = 100_000
"""Below this many vectors exact search answers in about 10 ms or less on 2 cores (measured: 9.9 ms for
100,000 × 512, 20 ms for 200,000 × 512)."""
PQ_THRESHOLD = 2_000_000
"""From this many vectors ``kind="auto"`` builds IVF-PQ: an IVF-fp16 holds every vector in float16 (1 GB per million
512-d vectors, on top of the store's own copy), IVF-PQ about 72 bytes a vector (see :func:`estimate_bytes`)."""
RECALL_TARGET = 0.95
"""Default recall@10 that build-time tuning raises ``nprobe`` (and, for PQ, the re-rank depth) to reach."""
SAMPLE_MARGIN = 0.01
"""How far above the target the query sample's recall must reach: generic prompts (:data:`TUNING_PROMPTS`) are an
easier proxy than real captions — on the benchmark's crop archive 0.959 for the prompts against 0.947 for RSICD
test captions at the same nprobe (7), 0.969 against 0.956 at 8 — so tuning asks the prompts for target + 0.01."""
TUNE_QUERIES = 1000
"""Leave-one-out queries used to measure recall at build time (recall@10 over 1,000 queries: ±0.01)."""
PQ_REFINE = 10
"""IVF-PQ fetches ``k × refine`` candidates by their compressed scores and re-ranks them by exact dot product."""
_SCENES = ("airport", "bare land", "baseball field", "beach", "bridge", "city centre", "church", "commercial area",
           "dense residential area", "desert", "farmland", "forest", "industrial area", "meadow",
           "medium residential area", "mountain", "park", "parking lot", "playground", "pond", "port",
           "railway station", "resort", "river", "school", "sparse residential area", "square", "stadium",
           "storage tanks", "viaduct", "chaparral", "freeway", "golf course", "intersection", "mobile home park",
           "overpass", "runway", "tennis court", "lake", "road", "airplanes", "ships", "clouds", "snow", "wetland",
           "greenhouses", "solar panels", "roundabout", "cars", "trees")
TUNING_PROMPTS: tuple[str, ...] = tuple(t.format(s) for s in _SCENES for t in (
    "an aerial image of {}", "a satellite photo showing {}", "{} with some buildings and trees around"))
"""Generic remote-sensing text queries (50 scenes × 3 phrasings) whose embeddings a caller can pass as
``query_sample`` so the build-time recall covers text queries, not only image-like ones."""
_THREAD = threading.local()


def set_probe_threads(on: bool) -> None:
    """Whether a single query searched *from the calling thread* has its probed cells scanned by all of FAISS's
    threads (the default: 0.39 against 0.65 ms on the 1M × 384 benchmark archive, 2 cores) — right for one search
    at a time (the CLI, a script). A server's worker threads, which search side by side, turn it off for
    themselves: there each search keeps one thread and the workers share the cores (threads over probes cost a
    third of the requests per second there)."""
    _THREAD.probe_threads = bool(on)


def probe_threads() -> bool:
    """The calling thread's setting of :func:`set_probe_threads` (True unless it turned it off)."""
    return getattr(_THREAD, "probe_threads", True)

_MAX_REFINE = 80
_FORMAT = 2
KINDS = ("auto", "fp16", "flat", "pq")
"""``fp16`` (what ``auto`` builds below :data:`PQ_THRESHOLD`): the vectors in float16 in the inverted lists, scores
within about 1e-4 of the exact cosines (float16 rounding of each component), half the memory and bytes read per
query of ``flat`` (float32) at the same recall — on the 1M × 384 benchmark archive 0.45 against 0.56 ms a query at
nprobe 20 (README, "The query path on a million tiles")."""
BYTES_PER_VALUE = {"flat": 4, "fp16": 2}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the k largest scores, best first (ties broken by position)."""
    k = min(k, scores.size)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


def exact_search(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, scores) of the k vectors with the highest inner product with ``query``."""
    scores = vectors @ query.astype(np.float32)
    best = top_k(scores, k)
    return best, scores[best]


def default_nlist(n: int) -> int:
    """Number of IVF cells for ``n`` vectors: 2·√n (about 2,000 cells for a million vectors), at least 16."""
    return max(16, int(2 * np.sqrt(n)))


def pq_subquantizers(dim: int) -> int:
    """PQ code bytes per vector: one byte per 8 dimensions (64 for 512-d, 48 for 384-d), rounded to a divisor of
    ``dim`` because FAISS splits the vector into equal parts."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


def resolve_kind(n: int, kind: str = "auto", pq_threshold: int | None = None) -> str:
    """``fp16``, ``flat`` or ``pq`` for ``n`` vectors: ``auto`` is PQ from ``pq_threshold`` (default
    :data:`PQ_THRESHOLD`), else fp16."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind != "auto":
        return kind
    return "pq" if n >= (PQ_THRESHOLD if pq_threshold is None else pq_threshold) else "fp16"


def estimate_bytes(n: int, dim: int, kind: str = "fp16", nlist: int | None = None, m: int | None = None,
                   nbits: int = 8, rerank_vectors: bool = False) -> int:
    """Memory of the approximate index for ``n`` × ``dim`` float32 vectors, in bytes, on paper: what FAISS holds
    (coarse centroids, per vector its code and a 64-bit id in the inverted lists, the PQ codebooks) plus TerraVL's
    own id array. This is also the size of the saved cache within a few percent. ``rerank_vectors`` adds the
    float32 vectors IVF-PQ re-ranks from (held by the caller, in RAM or memory-mapped: only ``k × refine`` rows are
    read per query)."""
    kind = resolve_kind(n, kind)
    nlist = nlist or default_nlist(n)
    total = nlist * dim * 4 + n * 8 + n * 8  # centroids, FAISS list ids, TerraVL ids
    if kind in BYTES_PER_VALUE:
        total += n * dim * BYTES_PER_VALUE[kind]
    else:
        m = m or pq_subquantizers(dim)
        total += n * ((m * nbits + 7) // 8) + (1 << nbits) * dim * 4
    if rerank_vectors:
        total += n * dim * 4
    return int(total)


class IVFIndex:
    """FAISS IVF with inner-product metric over L2-normalised vectors (so scores are cosines).

    ``kind`` is ``fp16`` (``IndexIVFScalarQuantizer`` with float16 codes: scores within about 1e-4 of exact), ``flat``
    (``IndexIVFFlat``: exact scores within the probed cells) or ``pq`` (``IndexIVFPQ``: compressed
    codes; the top ``k × refine`` candidates are re-ranked by exact dot product with the attached vectors, so the
    scores returned are exact cosines). ``nprobe`` is the number of cells searched; ``recall`` the recall@10
    measured at build time with that ``nprobe`` (None when not measured)."""

    def __init__(self, index, ids: np.ndarray, nprobe: int, kind: str = "flat", recall: float | None = None,
                 target: float | None = None, refine: int = PQ_REFINE, tune_queries: int = 0,
                 recall_rows: float | None = None, recall_sample: float | None = None, sample_queries: int = 0):
        self.index = index
        self.ids = ids
        self.index.nprobe = int(nprobe)
        self.kind = kind
        self.recall = recall
        self.target = target
        self.refine = int(refine)
        self.tune_queries = int(tune_queries)
        self.recall_rows = recall_rows
        """Recall@10 of the leave-one-out queries (indexed rows as queries)."""
        self.recall_sample = recall_sample
        """Recall@10 of the caller's query sample (e.g. text embeddings), None when none was given."""
        self.sample_queries = int(sample_queries)
        self.rerank_vectors: np.ndarray | None = None

    @property
    def nprobe(self) -> int:
        return int(self.index.nprobe)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, nlist: int | None = None, nprobe: int | None = None,
              train_size: int = 100_000, seed: int = 0, kind: str = "auto", target: float = RECALL_TARGET,
              tune_queries: int = TUNE_QUERIES, pq_threshold: int | None = None,
              pq_m: int | None = None, query_sample: np.ndarray | None = None) -> "IVFIndex":
        """Train and fill the index, then measure recall@10 on ``tune_queries`` leave-one-out queries (and on
        ``query_sample``, embeddings of queries like the ones users send, if given) and, unless ``nprobe`` is
        given, double ``nprobe`` from 1 up to ``nlist`` (for PQ then the re-rank depth) until both reach
        ``target``. If even the widest search falls short the best measured setting is kept and a warning logged.
        ``tune_queries=0`` skips the measurement (``recall`` stays None).

        Why a query sample: text queries sit far from every image vector (CLIP's modality gap; median top-1
        cosine 0.67 against 0.92 for an image crop in the benchmark), so their neighbours are spread over more
        cells and need a larger ``nprobe`` than leave-one-out rows show (at nprobe 6 on the crop archive: 0.977
        leave-one-out, 0.929 for RSICD captions)."""
        faiss = load_faiss()

        n, dim = vectors.shape
        kind = resolve_kind(n, kind, pq_threshold)
        nlist = min(nlist or default_nlist(n), n)
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "flat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        elif kind == "fp16":
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                  faiss.METRIC_INNER_PRODUCT)
            index.by_residual = False  # the vector itself in float16, not its offset from its cell's centre: a
            # vector's score is then the same in any index (shards, a rebuild), whatever the clustering
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m or pq_subquantizers(dim), 8,
                                     faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, size=min(n, max(train_size, 40 * nlist)), replace=False))]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        del sample
        for start in range(0, n, 200_000):  # adds in slices: no second full float32 copy of the vectors
            index.add(np.ascontiguousarray(vectors[start:start + 200_000], dtype=np.float32))
        built = cls(index, ids, nprobe or 1, kind)
        if kind == "pq":
            built.rerank_vectors = vectors
        if tune_queries > 0:
            built.tune(vectors, target, tune_queries, fixed=nprobe is not None, seed=seed, query_sample=query_sample)
        return built

    def tune(self, vectors: np.ndarray, target: float = RECALL_TARGET, n_queries: int = TUNE_QUERIES,
             fixed: bool = False, seed: int = 0, k: int = 10, query_sample: np.ndarray | None = None) -> float:
        """Measure recall@``k`` on leave-one-out queries drawn from ``vectors`` (the indexed rows, in order) and on
        ``query_sample`` (queries not in the index), and unless ``fixed`` raise ``nprobe`` (doubling up to
        ``nlist``; for PQ then ``refine``) until the leave-one-out recall reaches ``target`` and the sample's
        ``target`` + :data:`SAMPLE_MARGIN`. Sets and returns :attr:`recall` (the lower of the two measured)."""
        n = len(vectors)
        rows = np.sort(np.random.default_rng(seed + 1).choice(n, size=min(n_queries, n), replace=False))
        q = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        truth = _exact_knn(vectors, q, k + 1)
        truth = [set(_drop_self(t, r, k).tolist()) for t, r in zip(truth, rows)]
        sample = None if query_sample is None or len(query_sample) == 0 else \
            np.ascontiguousarray(query_sample, dtype=np.float32)
        sample_truth = [] if sample is None else [set(t.tolist()) for t in _exact_knn(vectors, sample, k)]

        def measure() -> tuple[float, float, float | None]:
            found = self._search_batch(q, k + 1)
            loo = float(np.mean([len(truth[i] & set(_drop_self(f, r, k).tolist())) / k
                                 for i, (f, r) in enumerate(zip(found, rows))]))
            if sample is None:
                return loo, loo, None
            found = self._search_batch(sample, k)
            other = float(np.mean([len(t & set(f.tolist())) / k for t, f in zip(sample_truth, found)]))
            return min(loo, other - SAMPLE_MARGIN), loo, other  # compared with the target (see SAMPLE_MARGIN)

        measured = measure()
        best = (measured[0], self.nprobe, self.refine, measured)
        short = self.nprobe  # the widest nprobe known to fall short of the target
        while not fixed and best[0] < target:
            if self.nprobe < self.nlist:
                short = self.nprobe
                self.index.nprobe = min(self.nlist, self.nprobe * 2)
            elif self.kind == "pq" and self.refine < _MAX_REFINE:
                self.refine = min(_MAX_REFINE, self.refine * 2)
            else:
                break
            measured = measure()
            if measured[0] > best[0]:
                best = (measured[0], self.nprobe, self.refine, measured)
        if not fixed and best[0] >= target and best[1] > short + 1 and best[2] == PQ_REFINE:
            # doubling overshoots by up to 2×, and latency grows with nprobe: bisect twice between the last
            # setting that fell short and the first that reached the target
            lo, hi = short, best[1]
            for _ in range(2):
                mid = (lo + hi) // 2
                if mid <= lo:
                    break
                self.index.nprobe = mid
                measured = measure()
                if measured[0] >= target:
                    hi, best = mid, (measured[0], mid, self.refine, measured)
                else:
                    lo = mid
        self.recall = min(v for v in best[3][1:] if v is not None)  # what was measured, without the margin
        self.target, self.tune_queries = float(target), len(rows)
        self.recall_rows, self.recall_sample = best[3][1], best[3][2]
        self.sample_queries = 0 if sample is None else len(sample)
        self.index.nprobe, self.refine = best[1], best[2]
        if best[0] < target:
            log.warning("approximate index (%s, nlist %d): at nprobe %d recall@%d is %.3f on indexed rows and %s on "
                        "the query sample; the target is %.2f (the sample's: %.2f)", self.kind, self.nlist,
                        self.nprobe, k, self.recall_rows, "unmeasured" if self.recall_sample is None else
                        f"{self.recall_sample:.3f}", target, target + SAMPLE_MARGIN)
        return self.recall

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, scores) of the approximate top ``k``, best first; positions index :attr:`ids`."""
        pos, scores = self._search_batch(np.ascontiguousarray(query[None], dtype=np.float32), k, scores=True)
        return pos[0], scores[0]

    def _search_batch(self, queries: np.ndarray, k: int, scores: bool = False):
        """Row-wise positions (and scores) for a batch of queries; PQ candidates re-ranked when vectors are
        attached. Rows may be shorter than ``k`` where fewer vectors were found."""
        fetch = k * self.refine if self.kind == "pq" and self.rerank_vectors is not None else k
        # FAISS parallelises a batch over its queries (parallel_mode 0), a lone query over its cells (1). The mode
        # changes only how the work is shared, never the result, so threads that set it differently on a shared
        # index at the same moment can only cost each other speed
        self.index.parallel_mode = 1 if len(queries) == 1 and probe_threads() else 0
        dist, pos = self.index.search(queries, fetch)
        out_pos, out_scores = [], []
        for q, d, p in zip(queries, dist, pos):
            keep = p >= 0
            p, d = p[keep], d[keep]
            if fetch > k:
                exact = np.asarray(self.rerank_vectors[np.sort(p)], dtype=np.float32) @ q
                p = np.sort(p)
                best = top_k(exact, k)
                p, d = p[best], exact[best]
            out_pos.append(p)
            out_scores.append(d)
        return (out_pos, out_scores) if scores else out_pos

    def info(self) -> dict:
        """What ``terravl index info`` shows about the approximate index."""
        return {"kind": self.kind, "vectors": int(self.index.ntotal), "nlist": self.nlist, "nprobe": self.nprobe,
                "refine": self.refine if self.kind == "pq" else None, "recall_at_10": self.recall,
                "recall_target": self.target, "tune_queries": self.tune_queries,
                "recall_rows": self.recall_rows, "recall_sample": self.recall_sample,
                "sample_queries": self.sample_queries}

    def save(self, folder: Path, version: int) -> None:
        """Save the cache next to the store: the FAISS index in its own file (``ann-*.faiss``, FAISS's format, so a
        reader memory-maps it instead of reading and copying it: a cold search of a million-vector index touches
        only the cells it probes), and ids, settings and measured recall in :data:`CACHE_FILE`, which names that
        file. Both are written under unique names and the small file renamed into place last, so concurrent
        writers and readers (server threads, a CLI run) never see a mix of two builds. Best effort: on a read-only
        or full folder it is kept in memory for this process instead (it is derived data; search must not fail
        for want of a cache)."""
        faiss = load_faiss()

        token = f"{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}"
        tmp = folder / f"{CACHE_FILE}.{token}.tmp"
        data = folder / f"{ANN_PREFIX}{int(version)}-{token}.faiss"
        try:
            faiss.write_index(self.index, str(data))
            with open(tmp, "wb") as fh:
                np.savez(fh, faiss_file=np.array(data.name), ids=self.ids,
                         meta=np.array([int(version), self.nprobe, _FORMAT, self.nlist, self.refine,
                                        int(self.index.ntotal), self.tune_queries, self.sample_queries],
                                       dtype=np.int64),
                         recall=np.array([_nan(self.recall), _nan(self.target), _nan(self.recall_rows),
                                          _nan(self.recall_sample)], dtype=np.float64),
                         kind=np.array(self.kind))
            os.replace(tmp, folder / CACHE_FILE)
            _remove_stale(folder, keep=data.name, version=int(version))
        except (OSError, RuntimeError) as exc:  # faiss raises RuntimeError for I/O errors
            log.warning("%s: approximate-search cache not saved (%s); kept in memory", folder, exc)
            self.keep(folder, version)
            for leftover in (tmp, data):
                try:
                    leftover.unlink(missing_ok=True)
                except OSError:
                    pass

    def keep(self, folder: Path, version: int) -> None:
        """Keep the cache in this process's memory only (a read-only index is never written to)."""
        _UNSAVED[_folder_key(folder)] = (int(version), self)

    @classmethod
    def load(cls, folder: Path, version: int, vectors: np.ndarray | None = None) -> "IVFIndex | None":
        """The cached index if it was built from this version of the store, else None (also for a cache written
        before recall was measured: it is rebuilt, so every index in use has a measured recall). ``vectors`` (the
        indexed rows, in order; may be memory-mapped) are what an IVF-PQ index re-ranks with."""
        faiss = load_faiss()

        unsaved = _UNSAVED.get(_folder_key(folder))
        if unsaved is not None and unsaved[0] == version:
            try:
                return unsaved[1]._attach(vectors)
            except ValueError as exc:  # vectors that do not belong to it: build it again
                log.warning("%s: approximate-search cache does not match the vectors (%s); rebuilding", folder, exc)
                return None
        path = folder / CACHE_FILE
        for attempt in range(2):  # a writer may replace the cache (and remove its old data file) as we read it
            if not path.is_file():
                return None
            try:
                with np.load(path, allow_pickle=False) as saved:
                    meta = [int(x) for x in saved["meta"]]
                    if meta[0] != version:
                        return None
                    if len(meta) < 8 or "recall" not in saved.files:
                        log.info("%s: approximate-search cache predates measured recall; rebuilding", folder)
                        return None
                    recall, target, rows, sample = (_none(x) for x in saved["recall"][:4])
                    if "faiss_file" in saved.files:  # memory-mapped: pages are read as searches touch them
                        data = folder / Path(str(saved["faiss_file"])).name
                        index = faiss.read_index(str(data), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
                    else:  # the format before, index bytes inside this file
                        index = faiss.deserialize_index(saved["index"])
                    found = cls(index, saved["ids"], meta[1], str(saved["kind"]), recall, target, refine=meta[4],
                                tune_queries=meta[6], recall_rows=rows, recall_sample=sample,
                                sample_queries=meta[7])
                if int(found.index.ntotal) != len(found.ids):
                    raise ValueError(f"index holds {found.index.ntotal} vectors, ids {len(found.ids)}")
                found.keep(folder, version)  # read the file once per process, not once per search
                return found._attach(vectors)
            except (OSError, ValueError, KeyError, IndexError, RuntimeError) as exc:  # damaged cache: rebuild it
                if attempt == 0 and isinstance(exc, RuntimeError):
                    continue
                log.warning("%s: approximate-search cache unreadable (%s); rebuilding", folder, exc)
                return None
        return None

    def _attach(self, vectors: np.ndarray | None) -> "IVFIndex":
        if self.kind == "pq" and vectors is not None:
            if len(vectors) != len(self.ids):
                raise ValueError(f"re-rank vectors have {len(vectors)} rows, the index {len(self.ids)}")
            self.rerank_vectors = vectors
        return self

    @classmethod
    def cached(cls, folder: Path, version: int, vectors: np.ndarray, ids: np.ndarray,
               persist: bool = True, kind: str = "auto", target: float = RECALL_TARGET,
               query_sample: "np.ndarray | Callable[[], np.ndarray] | None" = None) -> "IVFIndex":
        """The cache for this version of the store: loaded, or built once (one build per folder at a time, so
        concurrent searches wait for it rather than each building their own) and saved if ``persist``.
        ``query_sample`` (an array, or a function that makes one, called only when building: e.g. the text
        encoder over :data:`TUNING_PROMPTS`) is passed to :meth:`build`."""
        key = _folder_key(folder)
        with _LOCKS_GUARD:
            lock = _BUILD_LOCKS.setdefault(key, threading.Lock())
        with lock:
            found = cls.load(folder, version, vectors)
            if found is not None:
                return found
            sample = query_sample() if callable(query_sample) else query_sample
            built = cls.build(vectors, ids, kind=kind, target=target, query_sample=sample)
            built.save(folder, version) if persist else built.keep(folder, version)
            return built


def describe(folder: Path) -> dict | None:
    """The saved approximate index's settings without loading it (for ``terravl index info``): kind, vectors,
    nlist, nprobe, refine, measured recall@10 and its target, store version; None when there is no cache or it
    cannot be read. A cache from before recall was measured shows ``recall_at_10: None``."""
    path = Path(folder) / CACHE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = [int(x) for x in saved["meta"]]
            out = {"kind": "flat", "vectors": int(len(saved["ids"])), "nlist": None, "nprobe": meta[1],
                   "refine": None, "recall_at_10": None, "recall_target": None, "tune_queries": 0,
                   "recall_rows": None, "recall_sample": None, "sample_queries": 0,
                   "store_version": meta[0], "bytes": path.stat().st_size}
            if "faiss_file" in saved.files:
                data = Path(folder) / Path(str(saved["faiss_file"])).name
                out["bytes"] += data.stat().st_size if data.is_file() else 0
            if len(meta) >= 8 and "recall" in saved.files:
                recall, target, rows, sample = (_none(x) for x in saved["recall"][:4])
                out.update(kind=str(saved["kind"]), vectors=meta[5], nlist=meta[3], recall_at_10=recall,
                           recall_target=target, tune_queries=meta[6], recall_rows=rows, recall_sample=sample,
                           sample_queries=meta[7], refine=meta[4] if str(saved["kind"]) == "pq" else None)
            return out
    except (OSError, ValueError, KeyError, IndexError) as exc:
        log.warning("%s: approximate-search cache unreadable (%s)", folder, exc)
        return None


def _exact_knn(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 16_384) -> list[np.ndarray]:
    """Exact top-``k`` positions of each query, scanning ``vectors`` in blocks (bounded memory at any size)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_p = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), block):
        s = queries @ np.asarray(vectors[start:start + block], dtype=np.float32).T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        best_p = np.concatenate([best_p, part + start], axis=1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s, best_p = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_p, keep, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return list(np.take_along_axis(best_p, order, 1))


def _nan(x: float | None) -> float:
    return np.nan if x is None else float(x)


def _none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _drop_self(found: np.ndarray, row: int, k: int) -> np.ndarray:
    """A leave-one-out answer: the query's own row removed, then the first ``k``."""
    return found[found != row][:k]


CACHE_FILE = "vectors.ann.npz"
"""The approximate-search cache beside an index's database: ids, the store version, the measured recall and the
name of the FAISS index file (``ann-<version>-<token>.faiss``) beside it."""
ANN_PREFIX = "ann-"
STALE_AFTER_S = 600


def _remove_stale(folder: Path, keep: str, version: int) -> None:
    """Remove FAISS files of older caches (a process that memory-mapped one keeps its pages). A file of the same
    version written in the last :data:`STALE_AFTER_S` seconds is left: another process may be about to name it."""
    now = time.time()
    for file in Path(folder).glob(f"{ANN_PREFIX}*.faiss"):
        if file.name == keep:
            continue
        try:
            file_version = int(file.name[len(ANN_PREFIX):].split("-", 1)[0])
            if file_version < version or now - file.stat().st_mtime > STALE_AFTER_S:
                file.unlink()
        except (OSError, ValueError):
            pass
_BUILD_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


_UNSAVED: dict[str, tuple[int, IVFIndex]] = {}
"""Approximate indexes this process holds, by folder: (store version, index), one per folder — loaded from the
cache file once (not at every search), or built for a read-only index whose cache cannot be saved."""


def _folder_key(folder: Path) -> str:
    """One name per index folder however it is spelled (relative, through a symlink): the key of this process's
    caches (:data:`_UNSAVED`) and build locks."""
    return str(Path(folder).resolve())
