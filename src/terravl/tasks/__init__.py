"""Capabilities, one function each; the CLI and the HTTP service are thin front ends over them."""

import importlib
import sys
import types

_EXPORTS = {"caption": "caption", "change": "change", "ask_change": "change_ask", "change_series": "change_series",
            "BUILTIN_CLASSES": "classify", "classify": "classify", "describe": "describe", "ground": "ground",
            "localize": "localize", "ask_kb": "rag", "search": "retrieve", "search_captions": "retrieve",
            "ask": "vqa"}


class _Capabilities(types.ModuleType):
    """Each capability is imported on first use, so a front end that needs one does not import them all (a text
    search then never loads PyTorch). Several capabilities share their module's name (``change`` in
    ``terravl.tasks.change``): importing such a module sets the package attribute to the module, so the names are
    answered here, always with the function."""

    def __getattribute__(self, name: str):
        module = _EXPORTS.get(name)
        if module is not None:
            return getattr(importlib.import_module(f"terravl.tasks.{module}"), name)
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _Capabilities

__all__ = ["BUILTIN_CLASSES", "ask", "ask_change", "ask_kb", "caption", "change", "change_series", "classify", "describe", "ground", "localize", "search", "search_captions"]
