"""Capabilities, one function each; the CLI and the HTTP service are thin front ends over them."""

from terravl.tasks.caption import caption
from terravl.tasks.classify import BUILTIN_CLASSES, classify
from terravl.tasks.localize import localize
from terravl.tasks.retrieve import search, search_captions
from terravl.tasks.vqa import ask

__all__ = ["BUILTIN_CLASSES", "ask", "caption", "classify", "localize", "search", "search_captions"]
