"""What a knowledge base is built from, one reader per kind of source, each yielding :class:`~terravl.kb.store.KBItem`
or a :class:`~terravl.results.Problem` per bad item, so that one bad record never stops a build.

Kinds: image files and rasters (large rasters tile by tile, as the index cuts them; an optional sidecar
``NAME.json`` or ``NAME.md`` beside an image gives its text, location and date), text files (Markdown, plain
text, CSV or JSONL records with optional ``lon``/``lat``/``bbox``/``date``/``url``), Karpathy caption JSON (images
with their captions and scene class) and TerraVL archive indexes (their tiles, vectors reused when the model is
the same). Folders are walked recursively.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from terravl.datasets.records import IMAGE_SUFFIXES
from terravl.errors import InputError
from terravl.kb.store import KBItem
from terravl.kb.text import (TEXT_SUFFIXES, check_lon_lat, check_record_bbox, check_record_date, chunk,
                             decode_text, markdown_sections)
from terravl.paths import shown
from terravl.results import Problem

TEXT_FIELDS = ("text", "description", "content", "caption", "body", "summary", "notes")
"""Columns (CSV) or keys (JSONL, sidecars) that hold a record's text; the first present is used."""
LABEL_MARKER = "<!-- terravl-kb: label-by-heading -->"
"""First line of a Markdown file whose sections each describe one class: each section's heading becomes its
passages' label (the shipped scene-class descriptions use it)."""
HASH_LIMIT = 64 << 20
"""Files up to this size are identified by the sha1 of their bytes; larger ones by size and modification time."""


@dataclass(frozen=True)
class Source:
    """One source to read: ``kind`` is image, text, karpathy or index; ``key`` identifies it in the sources table
    (a caption file read for one split is a different source from the same file read whole)."""

    path: Path
    kind: str
    key: str


def expand(paths, split: str | None = None) -> Iterator[Source | Problem]:
    """The sources named by ``paths`` (files or folders, folders walked recursively, sorted)."""
    for given in paths:
        path = Path(given)
        if path.is_dir():
            if (path / "index.sqlite").is_file():
                yield _source(path, "index", split)
                continue
            files = sorted(p for p in path.rglob("*") if p.is_file())
            image_stems = {p.with_suffix("") for p in files if p.suffix.lower() in IMAGE_SUFFIXES}
            for file in files:
                suffix = file.suffix.lower()
                if file.with_suffix("") in image_stems and suffix in (".json", ".md"):
                    continue  # a sidecar: read with its image
                if any(part.endswith(".idx") or part == "index.sqlite" for part in file.parts[len(path.parts):]):
                    continue
                if suffix in IMAGE_SUFFIXES or suffix in TEXT_SUFFIXES or suffix == ".json":
                    yield _classify(file, split)
        elif path.is_file():
            yield _classify(path, split)
        else:
            yield Problem(shown(path), "no such file or folder")


def _classify(path: Path, split: str | None) -> Source | Problem:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return _source(path, "image", None)
    if suffix in TEXT_SUFFIXES:
        return _source(path, "text", None)
    if suffix == ".json":
        from terravl.datasets.karpathy import find_caption_json

        if find_caption_json(path) is not None:
            return _source(path, "karpathy", split)
        return Problem(shown(path), "JSON file that is neither Karpathy caption JSON nor an image's sidecar; "
                                    "give records as JSONL (one object per line) instead")
    return Problem(shown(path), f"unsupported file type {suffix or '(none)'}: give images, .md, .txt, .csv, "
                                f".jsonl, Karpathy caption JSON or a TerraVL index folder")


def _source(path: Path, kind: str, split: str | None) -> Source:
    resolved = str(path.resolve())
    return Source(path, kind, resolved + (f"?split={split}" if split and kind == "karpathy" else ""))


def fingerprint(source: Source) -> str:
    """The content identity of a source: sha1 of a file's bytes (size and time for huge files); an index's folder,
    creation time and version."""
    if source.kind == "index":
        from terravl.index.store import IndexStore

        with IndexStore(source.path, readonly=True) as store:
            meta = store.meta()
        return f"index:{source.key}:{meta.get('created')}:{meta.get('version', 0)}"
    st = source.path.stat()
    if st.st_size > HASH_LIMIT:
        return f"stat:{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha1()
    with open(source.path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() + (source.key[source.key.rfind("?split="):] if "?split=" in source.key else "")


def read(source: Source, tile_size: int = 256, split: str | None = None, model: str | None = None
         ) -> Iterator[KBItem | Problem]:
    """The items of one source (and a problem for each bad item); an unreadable source is one problem."""
    try:
        if source.kind == "image":
            yield from _image_items(source.path, tile_size)
        elif source.kind == "text":
            yield from _text_items(source.path)
        elif source.kind == "karpathy":
            yield from _karpathy_items(source.path, split)
        else:
            yield from _index_items(source.path, model)
    except InputError as exc:
        yield Problem(shown(exc.source if exc.source else source.path), shown(exc.message))
    except Exception as exc:  # noqa: BLE001 - one bad source must not stop the build
        yield Problem(shown(source.path), shown(f"{exc.__class__.__name__}: {exc}"))


def _text_key(*parts) -> str:
    return "text:" + hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()


def _centre(footprint: dict | None, bbox) -> tuple[float | None, float | None]:
    if bbox is not None:
        return (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    return None, None


# -- images ----------------------------------------------------------------------------------------------------
def _image_items(path: Path, tile_size: int) -> Iterator[KBItem | Problem]:
    from terravl.index.build import items_of
    from terravl.index.store import bbox_of

    side = _sidecar(path)
    if isinstance(side, Problem):
        yield side
        side = {}
    source = str(path.resolve())
    for unit in items_of(path, tile_size, 0, 2 * tile_size):
        row = unit.row
        bbox = side.get("bbox") or bbox_of(row.footprint)
        lon, lat = side.get("lon"), side.get("lat")
        if lon is None:
            lon, lat = _centre(row.footprint, bbox)
        acquired = (row.acquired or "")[:10] or None
        yield KBItem("image", "image:" + row.content_hash, source, json.dumps(row.window) if row.window else "",
                     side.get("title") or path.name, side.get("text"), side.get("url"), lon, lat, bbox,
                     row.footprint, side.get("date") or acquired, side.get("label"), image=unit.array)


def _sidecar(path: Path) -> dict | Problem:
    """The text and fields of an image's sidecar (``NAME.json`` object or ``NAME.md`` text), {} without one."""
    for suffix in (".json", ".md"):
        side = path.with_suffix(suffix)
        if not side.is_file():
            continue
        where = shown(side)
        try:
            text = decode_text(side.read_bytes(), where)
            if suffix == ".md":
                return {"text": " ".join(text.split())}
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(where, f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
            if not isinstance(record, dict):
                raise InputError(where, "sidecar JSON must be an object")
            return _fields(record, where, need_text=False)
        except InputError as exc:
            return Problem(exc.source, exc.message + " (image indexed without its sidecar)")
        except OSError as exc:
            return Problem(where, f"cannot read ({exc.strerror or exc}) (image indexed without its sidecar)")
    return {}


def _fields(record: dict, where: str, need_text: bool = True) -> dict:
    """A record's text and optional fields, checked: an :class:`InputError` naming ``where`` for bad coordinates,
    bbox or date, or (``need_text``) no text."""
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    text = next((lowered[k] for k in TEXT_FIELDS if k in lowered and lowered[k] not in (None, "")), None)
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    if text is not None and not isinstance(text, str):
        text = str(text)
    if need_text and (text is None or not text.strip()):
        raise InputError(where, "no text (empty " + "/".join(TEXT_FIELDS[:3]) + ")")
    lon, lat = check_lon_lat(lowered.get("lon", lowered.get("longitude")),
                             lowered.get("lat", lowered.get("latitude")), where)
    bbox = check_record_bbox(lowered.get("bbox"), where)
    date = check_record_date(lowered.get("date", lowered.get("acquired")), where)
    if bbox is not None and lon is None:
        lon, lat = _centre(None, bbox)
    label = lowered.get("label", lowered.get("class"))
    title = lowered.get("title", lowered.get("name"))
    url = lowered.get("url", lowered.get("link"))
    return {"text": " ".join(text.split()) if text else None, "lon": lon, "lat": lat, "bbox": bbox, "date": date,
            "label": str(label).strip() or None if label not in (None, "") else None,
            "title": str(title).strip() if title not in (None, "") else None,
            "url": str(url).strip() if url not in (None, "") else None}


# -- text files ------------------------------------------------------------------------------------------------
def _text_items(path: Path) -> Iterator[KBItem | Problem]:
    where = shown(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(where, f"cannot read ({exc.strerror or exc})") from None
    text = decode_text(data, where)
    source = str(path.resolve())
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_items(text, where, source)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_items(text, where, source)
    elif suffix in (".md", ".markdown"):
        labelled = text.lstrip().startswith(LABEL_MARKER)
        for heading, level, body in markdown_sections(text):
            label = _heading_label(heading) if labelled and heading and level >= 2 else None
            for n, piece in enumerate(chunk(body.replace(LABEL_MARKER, ""))):
                ref = f"§ {heading}" if heading else f"part {n + 1}"
                title = heading.split(" › ")[-1] if heading else path.stem
                yield KBItem("text", _text_key(source, heading, piece), source, ref, title, piece,
                             label=label)
    else:
        for n, piece in enumerate(chunk(text)):
            yield KBItem("text", _text_key(source, piece), source, f"part {n + 1}", path.stem, piece)


def _heading_label(heading: str) -> str:
    """``Scene classes › dense residential (AID)`` → ``dense residential``: the class a section describes."""
    from terravl.datasets.class_names import class_phrase

    name = re.sub(r"\s*\([^)]*\)\s*$", "", heading.split(" › ")[-1])
    return class_phrase(name)


def _record_items(fields: dict, source: str, ref: str) -> Iterator[KBItem]:
    for n, piece in enumerate(chunk(fields["text"])):
        yield KBItem("text", _text_key(piece, fields["lon"], fields["lat"], fields["bbox"], fields["date"],
                                       fields["url"], fields["label"]), source, ref + (f" part {n + 1}" if n else ""),
                     fields["title"], piece, fields["url"], fields["lon"], fields["lat"], fields["bbox"], None,
                     fields["date"], fields["label"])


def _csv_items(text: str, where: str, source: str) -> Iterator[KBItem | Problem]:
    try:
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip().lower() for c in (reader.fieldnames or []) if c]
    except csv.Error as exc:
        raise InputError(where, f"unreadable CSV ({exc})") from None
    if not any(c in TEXT_FIELDS for c in columns):
        raise InputError(where, f"CSV has no text column (one of {', '.join(TEXT_FIELDS)}); columns: "
                                f"{', '.join(columns[:10]) or 'none'}")
    if ("lon" in columns) != ("lat" in columns):
        raise InputError(where, "CSV has a lon column without lat (or lat without lon); give both")
    try:
        for n, row in enumerate(reader, start=2):
            at = f"{where}#row {n}"
            if None in row:
                yield Problem(at, "more values than columns (record skipped)")
                continue
            try:
                fields = _fields(row, at)
            except InputError as exc:
                yield Problem(exc.source, exc.message + " (record skipped)")
                continue
            yield from _record_items(fields, source, f"row {n}")
    except csv.Error as exc:
        yield Problem(where, f"CSV unreadable from here on ({exc})")


def _jsonl_items(text: str, where: str, source: str) -> Iterator[KBItem | Problem]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        at = f"{where}#line {n}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            yield Problem(at, f"invalid JSON ({getattr(exc, 'msg', exc)}) (record skipped)")
            continue
        if not isinstance(record, dict):
            yield Problem(at, "not a JSON object (record skipped)")
            continue
        try:
            fields = _fields(record, at)
        except InputError as exc:
            yield Problem(exc.source, exc.message + " (record skipped)")
            continue
        yield from _record_items(fields, source, f"line {n}")


# -- caption datasets and indexes ------------------------------------------------------------------------------
def _karpathy_items(path: Path, split: str | None) -> Iterator[KBItem | Problem]:
    """Each image of the caption JSON (of ``split``, if given) with its captions as text, its scene class as
    label and its object labels (UCM's multi-labels) named in the text."""
    from terravl.datasets.class_names import class_phrase
    from terravl.datasets.karpathy import KarpathyCaptions
    from terravl.index.build import content_hash
    from terravl.io import read_image

    dataset = KarpathyCaptions(path, split=split)
    for problem in dataset.problems:
        yield Problem(shown(problem.path), shown(problem.error))
    for record in dataset.records:
        where = f"{shown(path)}#{record.filename}"
        if record.path is None:
            yield Problem(where, "image file not found (record skipped)")
            continue
        try:
            image = read_image(record.path)
        except InputError as exc:
            yield Problem(where, exc.message)
            continue
        captions = [" ".join(c.split()).rstrip(" .") + "." for c in record.captions]
        text = " ".join(dict.fromkeys(captions))
        label = class_phrase(record.label) if record.label else None
        if record.tags:
            text += " Objects: " + ", ".join(t.replace("-", " ") for t in record.tags) + "."
        array = image.array
        yield KBItem("image", "image:" + content_hash(array), str(record.path.resolve()),
                     f"captions: {path.name}", record.filename, text, label=label, image=array)


def _index_items(path: Path, model: str | None) -> Iterator[KBItem | Problem]:
    """The tiles of a TerraVL index: their vectors are reused when the index was built with the knowledge base's
    model; otherwise each tile's pixels are read again from its source and embedded."""
    from terravl.index.store import IndexStore, bbox_of
    from terravl.io import read_window_rgb

    with IndexStore(path, readonly=True) as store:
        same = store.model == model
        ids, vectors = store.vectors()
        rows = store.rows(ids)
        for n, tile_id in enumerate(ids):
            row = rows[int(tile_id)]
            bbox = bbox_of(row.footprint)
            lon, lat = _centre(row.footprint, bbox)
            item = KBItem("image", "image:" + row.content_hash, row.source,
                          json.dumps(row.window) if row.window else "", Path(row.source).name, None, None, lon, lat,
                          bbox, row.footprint, (row.acquired or "")[:10] or None, None)
            if same:
                item.image_vec = vectors[n].copy()
            else:
                try:
                    item.image = read_window_rgb(row.source, row.window)
                except InputError as exc:
                    yield Problem(f"{shown(path)}#tile {tile_id}", f"{exc.message} (tile skipped)")
                    continue
            yield item
