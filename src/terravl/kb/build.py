"""``kb build`` / ``kb add``: read sources, embed their items and commit them batch by batch.

Each batch is one SQLite transaction; a source read to its end is recorded (path and content hash) right after
the batch holding its last items. So a killed build keeps every committed batch, and a re-run skips finished
sources without reading them and items already present (by key) without embedding them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from terravl.kb.sources import Source, expand, fingerprint, read
from terravl.kb.store import KBItem, KBStore, KBWriteError, encoder_text_side, encoder_weights
from terravl.paths import shown
from terravl.results import Problem


@dataclass
class KBBuildReport:
    """What a build did: sources read, skipped (already in the knowledge base) or refused as duplicates; items
    added or already present; and every problem, in the order met."""

    sources: int = 0
    sources_skipped: int = 0
    items_seen: int = 0
    added: int = 0
    skipped_existing: int = 0
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"sources": self.sources, "sources_skipped": self.sources_skipped, "items_seen": self.items_seen,
                "added": self.added, "skipped_existing": self.skipped_existing,
                "problems": [p.to_dict() for p in self.problems]}


class _Builder:
    def __init__(self, store: KBStore, encoder, batch_size: int, progress):
        self.store, self.encoder, self.batch_size, self.progress = store, encoder, batch_size, progress
        self.batch: list[KBItem] = []
        self.finished: list[tuple[str, str, int]] = []
        self.report = KBBuildReport()

    def problem(self, problem: Problem) -> None:
        self.report.problems.append(problem)
        self.store.log_problem(problem.path, problem.error)

    def item(self, item: KBItem) -> None:
        self.report.items_seen += 1
        self.batch.append(item)
        if len(self.batch) >= self.batch_size:
            self.commit()

    def commit(self) -> None:
        """Embed the batch's new items and commit them with the sources finished so far."""
        batch, self.batch = self.batch, []
        known = self.store.known_keys(i.key for i in batch)
        fresh, seen = [], set()
        for item in batch:
            if item.key not in known and item.key not in seen:
                seen.add(item.key)
                fresh.append(item)
        texts = [i for i in fresh if i.text]
        if texts:
            vectors = self.encoder.encode_texts([_embed_text(i) for i in texts])
            for item, vec in zip(texts, vectors):
                item.text_vec = vec
        images = [i for i in fresh if i.image is not None]
        if images:
            encoded = self.encoder.encode_batch([i.image for i in images], batch_size=len(images), progress=False)
            for row, n in enumerate(encoded.kept):
                images[n].image_vec = encoded.vectors[row]
            for problem in encoded.problems:
                bad = images[problem.index]
                self.problem(Problem(shown(bad.source), f"cannot embed ({problem.error})"))
                fresh.remove(bad)
        for item in fresh:
            item.image = None
        added = self.store.add(fresh)
        for path, digest, count in self.finished:
            self.store.finish_source(path, digest, count)
        self.finished = []
        self.report.added += added
        self.report.skipped_existing += len(batch) - added
        if self.progress is not None:
            self.progress(len(batch))


def _embed_text(item: KBItem) -> str:
    """What the text vector is computed from: the title (a heading names the subject) and the passage."""
    if item.title and item.kind == "text" and item.title not in (item.text or ""):
        return f"{item.title}: {item.text}"
    return item.text or ""


def build_kb(sources: Iterable[str | Path], encoder, out: str | Path, split: str | None = None,
             tile_size: int = 256, batch_size: int = 64,
             progress: Callable[[int], None] | None = None) -> KBBuildReport:
    """Read ``sources`` into the knowledge base ``out`` (created with ``encoder``'s name if absent), returning
    what was done. ``split`` keeps only that split of Karpathy caption JSON sources. A write that fails stops the
    build with :class:`KBWriteError` saying how many items of this run were committed (they stay; re-run to
    resume); bad items are reported and skipped."""
    model = encoder.source or encoder.name
    store = KBStore(out, create=True, model=model, dim=encoder.embed_dim, weights=encoder_weights(encoder),
                    text_side=encoder_text_side(encoder))
    try:
        store.check_encoder(encoder)  # adding to a knowledge base: the same model and weights
    except BaseException:
        store.close()
        raise
    builder = _Builder(store, encoder, batch_size, progress)
    report = builder.report
    given: dict[str, str] = {}
    hashes: dict[str, str] = {}
    try:
        for source in expand(sources, split):
            if isinstance(source, Problem):
                builder.problem(source)
                continue
            report.sources += 1
            try:
                source.key.encode("utf-8")
            except UnicodeEncodeError:
                builder.problem(Problem(shown(source.path), "the file name is not valid UTF-8 (skipped; rename it)"))
                continue
            if source.key in given:
                builder.problem(Problem(shown(source.path), "duplicate source: given twice; read once"))
                continue
            given[source.key] = ""
            try:
                digest = fingerprint(source)
            except Exception as exc:  # noqa: BLE001 - unreadable: the reader would say the same
                builder.problem(Problem(shown(source.path), f"cannot read ({getattr(exc, 'message', exc)})"))
                continue
            if store.source_hash(source.key) == digest:
                report.sources_skipped += 1
                continue
            twin = hashes.get(digest) or store.source_with_hash(digest)
            if twin is not None and twin != source.key:
                builder.problem(Problem(shown(source.path), f"duplicate source: same content as {shown(twin)} "
                                                            f"(skipped)"))
                continue
            hashes[digest] = source.key
            count, bad = 0, 0
            for thing in read(source, tile_size, split, model):
                if isinstance(thing, Problem):
                    bad += 1
                    builder.problem(thing)
                else:
                    count += 1
                    builder.item(thing)
            if count or not bad:  # a source that gave nothing but problems is read (and reported) again
                builder.finished.append((source.key, digest, count))
        if builder.batch or builder.finished:
            builder.commit()
    except KBWriteError as exc:
        error = KBWriteError(exc.source, f"{exc.message} ({report.added} items of this run were committed and "
                                         f"kept; re-run to resume)")
        error.report = report  # type: ignore[attr-defined]
        raise error from None
    finally:
        store.close()
    return report


def kb_vectors_ok(store: KBStore) -> bool:
    """Whether every stored vector is finite (a cheap sanity check for ``kb info``)."""
    return all(np.isfinite(store.vectors(kind).matrix).all() for kind in ("text", "image"))


__all__ = ["KBBuildReport", "Source", "build_kb", "kb_vectors_ok"]
