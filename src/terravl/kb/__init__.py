"""Knowledge bases of images and text for grounded answers (RS-RAG): one crash-safe SQLite file per knowledge base
holding passages (FTS5/BM25), dense text and image vectors, footprints, dates and sources; hybrid retrieval
(BM25 + dense text + cross-modal image similarity, reciprocal rank fusion, re-ranking)."""

from terravl.kb.build import KBBuildReport, build_kb
from terravl.kb.query import MIN_RELEVANCE, RETRIEVERS, Evidence, Retrieval, retrieve
from terravl.kb.store import KBItem, KBOpenError, KBStore, KBWriteError

__all__ = ["Evidence", "KBBuildReport", "KBItem", "KBOpenError", "KBStore", "KBWriteError", "MIN_RELEVANCE",
           "RETRIEVERS", "Retrieval", "SCENE_CLASSES", "build_kb", "retrieve"]

from pathlib import Path as _Path

SCENE_CLASSES = _Path(__file__).with_name("scene_classes.md")
"""Short factual descriptions of the 51 scene classes of AID (30) and UC Merced (21), one section each (the
section's heading is the class, its label in a knowledge base)."""
