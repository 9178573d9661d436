"""The archive index: tiles' vectors and metadata in a crash-safe SQLite store, with exact and approximate
nearest-neighbour search."""

from terravl.lazy import lazy_exports

_EXPORTS = {"BuildReport": "build", "build_index": "build", "expand_sources": "build",
            "IndexCorruptError": "store", "IndexOpenError": "store", "IndexStore": "store", "IndexWriteError": "store",
            "TileRow": "store", "check_index": "store",
            "ANN_THRESHOLD": "vectors", "IVFIndex": "vectors", "exact_search": "vectors", "top_k": "vectors"}
lazy_exports(__name__, _EXPORTS)

__all__ = ["ANN_THRESHOLD", "BuildReport", "IVFIndex", "IndexCorruptError", "IndexOpenError", "IndexStore",
           "IndexWriteError", "TileRow", "build_index", "check_index", "exact_search", "expand_sources", "top_k"]
