"""Capabilities, one function each; the CLI and the HTTP service are thin front ends over them."""

from terravl.tasks.classify import BUILTIN_CLASSES, classify
from terravl.tasks.localize import localize
from terravl.tasks.retrieve import search, search_captions

__all__ = ["BUILTIN_CLASSES", "classify", "localize", "search", "search_captions"]
