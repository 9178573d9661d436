"""Capabilities, one function each; the CLI and the HTTP service are thin front ends over them."""

from terravl.tasks.caption import caption
from terravl.tasks.change import change
from terravl.tasks.change_ask import ask_change
from terravl.tasks.change_series import change_series
from terravl.tasks.classify import BUILTIN_CLASSES, classify
from terravl.tasks.describe import describe
from terravl.tasks.ground import ground
from terravl.tasks.localize import localize
from terravl.tasks.rag import ask_kb
from terravl.tasks.retrieve import search, search_captions
from terravl.tasks.vqa import ask

__all__ = ["BUILTIN_CLASSES", "ask", "ask_change", "ask_kb", "caption", "change", "change_series", "classify", "describe", "ground", "localize", "search", "search_captions"]
