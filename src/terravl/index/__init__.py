"""The archive index: tiles' vectors and metadata in a crash-safe SQLite store, with exact and approximate
nearest-neighbour search."""

from terravl.index.build import BuildReport, build_index, expand_sources
from terravl.index.store import (IndexCorruptError, IndexOpenError, IndexStore, IndexWriteError, TileRow,
                                 check_index)
from terravl.index.vectors import ANN_THRESHOLD, IVFIndex, exact_search, top_k

__all__ = ["ANN_THRESHOLD", "BuildReport", "IVFIndex", "IndexCorruptError", "IndexOpenError", "IndexStore",
           "IndexWriteError", "TileRow", "build_index", "check_index", "exact_search", "expand_sources", "top_k"]
