"""The archive index: tiles' vectors and metadata in a crash-safe SQLite store, with exact and approximate
nearest-neighbour search."""

import importlib

_EXPORTS = {"BuildReport": "build", "build_index": "build", "expand_sources": "build",
            "IndexCorruptError": "store", "IndexOpenError": "store", "IndexStore": "store", "IndexWriteError": "store",
            "TileRow": "store", "check_index": "store",
            "ANN_THRESHOLD": "vectors", "IVFIndex": "vectors", "exact_search": "vectors", "top_k": "vectors"}


def __getattr__(name: str):
    """Imported on first use: searching an index needs the store and vectors, not the builder's raster stack."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'terravl.index' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"terravl.index.{module}"), name)
    globals()[name] = value
    return value


__all__ = ["ANN_THRESHOLD", "BuildReport", "IVFIndex", "IndexCorruptError", "IndexOpenError", "IndexStore",
           "IndexWriteError", "TileRow", "build_index", "check_index", "exact_search", "expand_sources", "top_k"]
