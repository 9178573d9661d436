"""Capabilities, one function each; the CLI and the HTTP service are thin front ends over them."""

from terravl.lazy import lazy_exports

_EXPORTS = {"caption": "caption", "change": "change", "ask_change": "change_ask", "change_series": "change_series",
            "BUILTIN_CLASSES": "classify", "classify": "classify", "describe": "describe", "ground": "ground",
            "localize": "localize", "ask_kb": "rag", "Reranker": "rerank", "search": "retrieve",
            "search_captions": "retrieve",
            "ask": "vqa"}
lazy_exports(__name__, _EXPORTS)

__all__ = ["BUILTIN_CLASSES", "Reranker", "ask", "ask_change", "ask_kb", "caption", "change", "change_series", "classify", "describe", "ground", "localize", "search", "search_captions"]
