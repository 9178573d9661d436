"""``terravl datasets build captions``: image–caption pairs for a user's own region from rasters and vector data.

SkyScript's recipe on a user's files: cut the rasters into tiles (the tiler of ``terravl tiles``), place the
whitelisted vector features (OpenStreetMap or any OGR file, reprojected to each raster's CRS, in pixel coordinates)
on the tile grid, weigh every kind of object by the share of the tile it covers (areas) or its length over the
tile's side (lines), and write one to three captions per tile from the objects over ``min_coverage``. Optionally an
encoder scores each caption against its chip and the pairs under ``min_score`` are dropped (SkyScript's filter).

Memory: vector features stream one at a time and leave only per-tile sums behind (tiles × object kinds); pixels
are read tile by tile. The output is Karpathy caption JSON (``captions.json``, with ``objects`` = what the vector
data puts in the tile, ``class`` = the one covering most of it), the chips under ``images/``, ``tiles.geojson`` (where each chip is)
and the dataset card (``card.json`` and ``README.md``) — ``terravl train clip --data OUT`` and ``terravl train
caption --data OUT`` read it as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import ProjError

from terravl.datasets.builder.tags import Whitelist, load_whitelist
from terravl.datasets.builder.text import TileObject, compose
from terravl.datasets.builder.vectors import Feature, UnsortedOsmError, VectorSource
from terravl.errors import InputError, OutputError
from terravl.io.georef import PixelWindow
from terravl.io.tiling import check_tile_size, tile_windows
from terravl.results import Problem

POINT_WEIGHT = 0.05
"""Weight of one point feature (a storage tank mapped as a node) in its tile."""
LINE_SALIENCE = 0.3
"""Lines are ordered by 0.3 × their weight: a road crossing the whole tile (weight 1.0) is named after an area
covering a third of it, so the main object (``class``) is what fills the image."""
SPLIT_BLOCK = 4
"""Tiles are put in splits by blocks of SPLIT_BLOCK × SPLIT_BLOCK neighbours, so that a validation tile's
neighbour (nearly the same ground) is not in the training split."""


@dataclass
class _Cell:
    """What lies in one tile: per noun, the summed weight, the number of features, and the rule."""

    objects: dict[str, list] = field(default_factory=dict)

    def add(self, feature: Feature, weight: float) -> None:
        rule = feature.rule
        entry = self.objects.setdefault(rule.noun, [0.0, 0, rule, feature.kind])
        entry[0] += weight
        entry[1] += 1

    def ordered(self, min_coverage: float) -> list[TileObject]:
        out = [TileObject(noun, rule.plural, rule.mass, kind, min(1.0, weight), count)
               for noun, (weight, count, rule, kind) in self.objects.items() if min(1.0, weight) >= min_coverage]
        return sorted(out, key=lambda o: (-o.coverage * (LINE_SALIENCE if o.kind == "line" else 1.0), o.noun))


class _Grid:
    """One raster's tile grid in pixel coordinates, and what the vector features put in each tile."""

    def __init__(self, path: Path, stem: str, info, size: int):
        self.path, self.stem, self.info, self.size = path, stem, info, size
        georef = info.georef
        self.crs = CRS.from_wkt(georef.crs_wkt)
        self.inverse = ~georef.transform
        self.width, self.height = info.width, info.height
        self.windows = {(r, c): w for r, c, w in tile_windows(info.width, info.height, size)}
        self.rows = 1 + max(r for r, _ in self.windows)
        self.cols = 1 + max(c for _, c in self.windows)
        self.cells: dict[tuple[int, int], _Cell] = defaultdict(_Cell)
        self.per_vector: Counter = Counter()
        self._transformers: dict[str, Transformer] = {}
        self._bounds: dict[str, tuple | None] = {}
        self.extent = shapely.box(0, 0, info.width, info.height)

    def snapshot(self) -> tuple:
        """The per-tile sums, copied (to undo a vector file that has to be read again)."""
        cells = {k: {n: list(v) for n, v in c.objects.items()} for k, c in self.cells.items()}
        return cells, Counter(self.per_vector)

    def restore(self, state: tuple) -> None:
        cells, per_vector = state
        self.cells = defaultdict(_Cell, {k: _Cell(objects) for k, objects in cells.items()})
        self.per_vector = per_vector

    def bounds_in(self, crs: CRS) -> tuple[float, float, float, float] | None:
        """The raster's bounds in ``crs`` (None when they cannot be transformed)."""
        key = crs.to_wkt()
        if key not in self._bounds:
            from pyproj import Transformer as T

            xs = [0, self.width]
            ys = [0, self.height]
            t = self.info.georef.transform
            corners = [t @ (x, y) for x in xs for y in ys]
            minx, miny = min(c[0] for c in corners), min(c[1] for c in corners)
            maxx, maxy = max(c[0] for c in corners), max(c[1] for c in corners)
            try:
                box = T.from_crs(self.crs, crs, always_xy=True).transform_bounds(minx, miny, maxx, maxy, densify_pts=21)
                self._bounds[key] = box if all(np.isfinite(box)) else None
            except ProjError:
                self._bounds[key] = None
        return self._bounds[key]

    def place(self, feature: Feature, crs: CRS) -> bool:
        """Add ``feature`` (in ``crs``) to the tiles it touches; whether it touches this raster at all."""
        bounds = self.bounds_in(crs)
        fb = shapely.bounds(feature.geometry)
        if bounds is not None and (fb[0] > bounds[2] or fb[2] < bounds[0] or fb[1] > bounds[3] or fb[3] < bounds[1]):
            return False
        key = crs.to_wkt()
        tr = self._transformers.get(key)
        if tr is None:
            tr = self._transformers[key] = Transformer.from_crs(crs, self.crs, always_xy=True)
        inv = self.inverse

        def to_pixels(coords: np.ndarray) -> np.ndarray:
            x, y = tr.transform(coords[:, 0], coords[:, 1])
            x, y = np.asarray(x), np.asarray(y)
            return np.column_stack([inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f])

        try:
            geom = shapely.transform(feature.geometry, to_pixels)
        except ProjError:
            return False
        coords = shapely.get_coordinates(geom)
        if not len(coords) or not np.isfinite(coords).all():
            return False
        if feature.kind == "area" and not shapely.is_valid(geom):
            geom = shapely.make_valid(geom)
        geom = shapely.intersection(geom, self.extent)
        if shapely.is_empty(geom):
            return False
        minx, miny, maxx, maxy = shapely.bounds(geom)
        size = self.size
        placed = False
        for r in range(max(0, int(miny // size)), min(self.rows, int(maxy // size) + 1)):
            for c in range(max(0, int(minx // size)), min(self.cols, int(maxx // size) + 1)):
                w = self.windows[(r, c)]
                part = shapely.intersection(geom, shapely.box(w.col_off, w.row_off, w.col_off + w.width,
                                                              w.row_off + w.height))
                weight = _weight(part, feature.kind, w)
                if weight > 0:
                    self.cells[(r, c)].add(feature, weight)
                    placed = True
        return placed


def _weight(part, kind: str, window: PixelWindow) -> float:
    if shapely.is_empty(part):
        return 0.0
    if kind == "area":
        return float(shapely.area(part)) / float(window.width * window.height)
    if kind == "line":  # over the tile's longer real side: a line crossing an edge tile counts whole too
        return float(shapely.length(part)) / float(max(window.width, window.height))
    return POINT_WEIGHT * int(shapely.get_num_geometries(part))


@dataclass
class CaptionBuild:
    """What a caption build did: the numbers of the dataset card, and the problems (each a file and a reason)."""

    out_dir: str
    images: int = 0
    captions: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    tags: dict[str, dict] = field(default_factory=dict)
    skipped_tiles: dict[str, int] = field(default_factory=dict)
    tiles_seen: int = 0
    rasters: list[dict] = field(default_factory=list)
    vectors: list[dict] = field(default_factory=list)
    filter: dict | None = None
    problems: list[Problem] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "images": self.images, "captions": self.captions, "splits": self.splits,
                "tags": self.tags, "tiles_seen": self.tiles_seen, "skipped_tiles": self.skipped_tiles,
                "rasters": self.rasters, "vectors": self.vectors, "filter": self.filter, "files": self.files,
                "parameters": self.parameters, "problems": [p.to_dict() for p in self.problems]}


def build_captions(rasters: list[str | Path], vectors: list[str | Path], out_dir: str | Path, tile_size: int = 256,
                   min_coverage: float = 0.05, filter_model: str | None = None, min_score: float | None = None,
                   val_fraction: float = 0.1, test_fraction: float = 0.1, vector_crs: str | None = None,
                   whitelist: str | Path | None = None, seed: int = 0,
                   log: Callable[[str], None] | None = None) -> CaptionBuild:
    """Build the caption set in ``out_dir`` (see the module docstring); bad inputs become problems, the rest go on.

    Raises :class:`InputError` only when nothing could be built at all (no raster or no vector file usable, or no
    tile with a caption) and :class:`OutputError` when ``out_dir`` cannot be written."""
    log = log or (lambda _: None)
    check_tile_size(tile_size)
    if not 0 <= min_coverage <= 1:
        raise InputError("min_coverage", f"must be between 0 and 1, got {min_coverage}")
    if (filter_model is None) != (min_score is None):
        raise InputError("min_score", "give --filter-model and --min-score together")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InputError("val_fraction", "val and test fractions must be in [0, 1) and leave some training data")
    if vector_crs:
        try:
            CRS.from_user_input(vector_crs)
        except Exception:  # noqa: BLE001 - pyproj's CRSError and friends
            raise InputError("vector_crs", f"{vector_crs!r} is not a CRS pyproj knows (try EPSG:4326)") from None
    rules: Whitelist = load_whitelist(str(whitelist) if whitelist else None)
    out = Path(out_dir)
    result = CaptionBuild(str(out))
    result.parameters = {"tile_size": tile_size, "min_coverage": min_coverage, "filter_model": filter_model,
                         "min_score": min_score, "val_fraction": val_fraction, "test_fraction": test_fraction,
                         "vector_crs": vector_crs, "whitelist": rules.source, "seed": seed}
    grids = _open_rasters(rasters, tile_size, result)
    sources = _open_vectors(vectors, rules, vector_crs, result)
    for source in sources:
        log(f"reading {source.path}")
        _place_all(source, grids, result)
    if not grids or not sources:
        raise InputError("rasters" if not grids else "vectors", "no usable " + ("raster" if not grids else
                         "vector file") + "; " + "; ".join(f"{p.path}: {p.error}" for p in result.problems[:5]))
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(out, f"cannot write here ({exc.strerror or exc})") from None
    entries = _write_chips(grids, out, min_coverage, seed, result, log)
    if filter_model is not None:
        entries = _filter(entries, out, filter_model, float(min_score), result, log)
    if not entries:
        raise InputError("vectors", "no tile got a caption: " + (", ".join(f"{k}: {v}" for k, v in
                                                                    result.skipped_tiles.items()) or "no tiles"))
    _assign_splits(entries, val_fraction, test_fraction, seed)
    _summarise(entries, result)
    _write_outputs(entries, out, result, rules)
    return result


def _open_rasters(rasters, size: int, result: CaptionBuild) -> list[_Grid]:
    from terravl.io.raster import raster_info

    grids, stems = [], set()
    for path in rasters:
        path = Path(path)
        try:
            info = raster_info(path)
        except InputError as exc:
            result.problems.append(Problem(str(path), exc.message))
            continue
        if info.georef is None:
            result.problems.append(Problem(str(path), "raster has no CRS or georeference: vector features cannot "
                                                      "be placed on it (skipped)"))
            continue
        stem, n = path.stem, 1
        while stem in stems:
            n += 1
            stem = f"{path.stem}_{n}"
        stems.add(stem)
        grids.append(_Grid(path, stem, info, size))
        result.rasters.append({"path": str(path), "crs": info.georef.crs_name, "width": info.width,
                               "height": info.height, "tiles": len(grids[-1].windows),
                               "sha256": _sha256(path), "bytes": path.stat().st_size})
    return grids


def _open_vectors(vectors, rules: Whitelist, vector_crs: str | None, result: CaptionBuild) -> list[VectorSource]:
    sources = []
    for path in vectors:
        try:
            source = VectorSource(path, rules, vector_crs)
        except InputError as exc:
            result.problems.append(Problem(str(path), exc.message))
            continue
        if source.crs is None:
            result.problems.append(Problem(str(path), "vector file has no CRS (a Shapefile without .prj?): give "
                                                      "--vector-crs EPSG:… to say what its coordinates are (skipped)"))
            result.vectors.append({**source.stats.to_dict(), "sha256": _sha256(source.path), "used": 0,
                                   "status": "skipped: no CRS"})
            continue
        if source.assumed:
            result.problems.append(Problem(str(path), f"vector file has no CRS; read as {vector_crs} "
                                                      "(--vector-crs)"))
        sources.append(source)
    return sources


def _place_all(source: VectorSource, grids: list[_Grid], result: CaptionBuild) -> None:
    """Stream ``source``'s features onto every raster grid; report files and raster pairs that do not overlap."""
    boxes = [g.bounds_in(source.crs) for g in grids]
    known = [b for b in boxes if b is not None]
    bbox = (min(b[0] for b in known), min(b[1] for b in known), max(b[2] for b in known),
            max(b[3] for b in known)) if known else None
    reprojected = {g.info.georef.crs_name for g in grids if not g.crs.equals(source.crs)}
    saved = [g.snapshot() for g in grids]
    try:
        used = _stream(source, grids, bbox)
    except UnsortedOsmError as exc:
        for grid, state in zip(grids, saved):
            grid.restore(state)
        source.restart_unsorted()
        result.problems.append(Problem(str(source.path), f"{exc.message}: read again with closed ways as areas and "
                                                         "multipolygon relations skipped (sort it with `osmium sort` "
                                                         "to keep them)"))
        try:
            used = _stream(source, grids, bbox)
        except InputError as again:
            used = 0
            result.problems.append(Problem(str(source.path), again.message))
    except InputError as exc:
        used = 0
        result.problems.append(Problem(str(source.path), exc.message))
    stats = source.stats
    if stats.repaired:
        result.problems.append(Problem(str(source.path), f"{stats.repaired} invalid geometr"
                                       f"{'y' if stats.repaired == 1 else 'ies'} repaired with make_valid (e.g. "
                                       f"{stats.examples['repaired invalid geometry'][0]})"))
    for reason in ("invalid geometry that could not be repaired", "empty geometry", "nodes missing from the extract",
                   "geometry could not be built"):
        if stats.skipped.get(reason):
            result.problems.append(Problem(str(source.path), f"{stats.skipped[reason]} feature(s) skipped: {reason} "
                                                             f"(e.g. {stats.examples[reason][0]})"))
    if stats.features_read and not stats.whitelisted:
        result.problems.append(Problem(str(source.path), f"none of its {stats.features_read} features has a "
                                                         "whitelisted tag (see the tag whitelist)"))
    elif stats.whitelisted and not used:
        result.problems.append(Problem(str(source.path), "no whitelisted feature overlaps any raster: the raster(s) "
                                                         "and this vector file do not overlap"))
    elif used:
        for grid in grids:
            if not grid.per_vector[str(source.path)]:
                result.problems.append(Problem(f"{grid.path} and {source.path}", "do not overlap (no whitelisted "
                                                                                 "feature falls inside the raster)"))
    if source.assumed:
        stats_crs = f"{stats.crs} (assumed: --vector-crs)"
    else:
        stats_crs = stats.crs
    result.vectors.append({**stats.to_dict(), "crs": stats_crs, "sha256": _sha256(source.path),
                           "bytes": source.path.stat().st_size, "used": used,
                           "reprojected_to": sorted(reprojected), "status": "read"})


def _stream(source: VectorSource, grids: list[_Grid], bbox) -> int:
    """Place every feature of ``source`` on the grids; how many fell inside some raster."""
    used = 0
    for feature in source.features(bbox):
        hit = False
        for grid in grids:
            if grid.place(feature, source.crs):
                grid.per_vector[str(source.path)] += 1
                hit = True
        if hit:
            used += 1
        else:
            source.stats.skip("outside every raster", feature.ident)
    return used


def _write_chips(grids: list[_Grid], out: Path, min_coverage: float, seed: int, result: CaptionBuild,
                 log: Callable[[str], None]) -> list[dict]:
    """Second pass, over pixels: write the chip of every tile that has objects and valid pixels."""
    from PIL import Image

    from terravl.io.tiling import iter_tiles

    skipped: Counter = Counter()
    entries: list[dict] = []
    for grid in grids:
        log(f"writing chips of {grid.path}")
        wanted = {}
        for key in grid.windows:
            cell = grid.cells.get(key)
            result.tiles_seen += 1
            if cell is None:
                skipped["no vector feature in the tile"] += 1
                continue
            objects = cell.ordered(min_coverage)
            if not objects:
                skipped["features cover less than min-coverage"] += 1
                continue
            wanted[key] = objects
        if not wanted:
            continue
        try:
            for tile in iter_tiles(grid.path, grid.size):
                objects = wanted.get((tile.row, tile.col))
                if objects is None:
                    continue
                if not tile.has_data:
                    skipped["no valid pixels (nodata)"] += 1
                    continue
                name = f"{grid.stem}_r{tile.row:04d}_c{tile.col:04d}.png"
                try:
                    Image.fromarray(tile.array, "RGB").save(out / "images" / name, compress_level=1)
                except OSError as exc:
                    raise OutputError(out / "images" / name, f"cannot write ({exc.strerror or exc})") from None
                tile_seed = int(hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()[:8], 16)
                entries.append({
                    "filename": name, "filepath": "images", "class": objects[0].noun,
                    "objects": [o.noun for o in objects],
                    "counts": {o.noun: o.count for o in objects if o.kind != "line" and not o.mass},
                    "coverage": {o.noun: round(o.coverage, 4) for o in objects},
                    "captions": compose(objects, tile_seed),
                    "source": str(grid.path), "row": tile.row, "col": tile.col, "window": tile.window.to_dict(),
                    "crs": grid.info.georef.crs_name, "bounds": [round(v, 3) for v in
                                                                  grid.info.georef.window_bounds(tile.window)],
                    "footprint": tile.footprint, "_stem": grid.stem,
                    "_features": {o.noun: o.count for o in objects}})
        except InputError as exc:
            result.problems.append(Problem(str(grid.path), exc.message))
    result.skipped_tiles = dict(sorted(skipped.items()))
    return entries


def _filter(entries: list[dict], out: Path, model_name: str, min_score: float, result: CaptionBuild,
            log: Callable[[str], None]) -> list[dict]:
    """SkyScript's filter: score every caption against its chip with an encoder and drop those under
    ``min_score``; a tile left with no caption is dropped (its chip removed)."""
    from terravl.models import load

    log(f"scoring {len(entries)} chips with {model_name}")
    encoder = load(model_name)
    images = encoder.encode_images([out / "images" / e["filename"] for e in entries])
    texts = [c for e in entries for c in e["captions"]]
    text_emb = encoder.encode_texts(texts) if texts else np.zeros((0, images.shape[1]), np.float32)
    scores_all: list[float] = []
    kept, dropped_captions = [], 0
    k = 0
    for i, entry in enumerate(entries):
        n = len(entry["captions"])
        scores = (text_emb[k:k + n] @ images[i]).tolist()
        k += n
        scores_all += scores
        keep = [(c, s) for c, s in zip(entry["captions"], scores) if s >= min_score]
        dropped_captions += n - len(keep)
        if keep:
            entry["captions"] = [c for c, _ in keep]
            entry["scores"] = [round(s, 4) for _, s in keep]
            kept.append(entry)
        else:
            (out / "images" / entry["filename"]).unlink(missing_ok=True)
    removed = len(entries) - len(kept)
    if removed:
        result.skipped_tiles["caption–image similarity below min-score"] = removed
    arr = np.asarray(scores_all, dtype=np.float64)
    result.filter = {"model": getattr(encoder, "source", model_name), "min_score": min_score,
                     "captions_scored": len(scores_all), "captions_dropped": dropped_captions,
                     "tiles_scored": len(entries), "tiles_dropped": removed,
                     "score_quantiles": {q: round(float(np.quantile(arr, float(q))), 4)
                                         for q in ("0.05", "0.25", "0.5", "0.75", "0.95")} if arr.size else {}}
    return kept


def _assign_splits(entries: list[dict], val_fraction: float, test_fraction: float, seed: int) -> None:
    """train / val / test by blocks of neighbouring tiles (ordered by a seeded hash); with fewer than 3 blocks,
    tile by tile. val and test each get at least one block when their fraction is above 0 and there are enough."""
    def block(e: dict) -> str:
        return f"{e['_stem']}:{e['row'] // SPLIT_BLOCK}:{e['col'] // SPLIT_BLOCK}"

    groups = sorted({block(e) for e in entries})
    by_tile = len(groups) < 3
    if by_tile:
        groups = [e["filename"] for e in entries]
    order = sorted(groups, key=lambda g: hashlib.sha1(f"{seed}:{g}".encode()).hexdigest())
    n = len(order)
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 and n >= 3 else 0
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 and n >= 3 else 0
    split_of = {g: ("val" if i < n_val else "test" if i < n_val + n_test else "train") for i, g in enumerate(order)}
    for e in entries:
        e["split"] = split_of[e["filename"] if by_tile else block(e)]


def _summarise(entries: list[dict], result: CaptionBuild) -> None:
    result.images = len(entries)
    result.captions = sum(len(e["captions"]) for e in entries)
    result.splits = dict(sorted(Counter(e["split"] for e in entries).items()))
    tags: dict[str, dict] = {}
    for e in entries:
        for noun in e["objects"]:
            t = tags.setdefault(noun, {"tiles": 0, "features": 0, "main_object": 0})
            t["tiles"] += 1
            t["features"] += e["_features"][noun]
        tags[e["class"]]["main_object"] += 1
    result.tags = dict(sorted(tags.items(), key=lambda kv: (-kv[1]["tiles"], kv[0])))


def _write_outputs(entries: list[dict], out: Path, result: CaptionBuild, rules: Whitelist) -> None:
    """captions.json (Karpathy), tiles.geojson and the card, each written whole then renamed."""
    from terravl.datasets.builder.card import write_card

    images, features = [], []
    sentid = 0
    for imgid, e in enumerate(entries):
        sentences = []
        for caption in e["captions"]:
            sentences.append({"raw": caption, "tokens": caption.split(), "imgid": imgid, "sentid": sentid})
            sentid += 1
        item = {"filename": e["filename"], "filepath": e["filepath"], "imgid": imgid, "split": e["split"],
                "class": e["class"], "objects": e["objects"], "counts": e["counts"], "coverage": e["coverage"],
                "sentences": sentences, "sentids": [s["sentid"] for s in sentences], "source": e["source"],
                "window": e["window"], "crs": e["crs"], "bounds": e["bounds"]}
        if "scores" in e:
            item["scores"] = e["scores"]
        images.append(item)
        features.append({"type": "Feature", "geometry": e["footprint"],
                         "properties": {"file": e["filename"], "split": e["split"], "class": e["class"],
                                        "captions": e["captions"], "source": e["source"], "row": e["row"],
                                        "col": e["col"]}})
    name = out.name or "captions"
    _atomic_json(out / "captions.json", {"dataset": name, "builder": "terravl datasets build captions",
                                         "images": images})
    _atomic_json(out / "tiles.geojson", {"type": "FeatureCollection", "features": features})
    result.files = {"captions": str(out / "captions.json"), "images": str(out / "images"),
                    "tiles": str(out / "tiles.geojson"), "card": str(out / "card.json"),
                    "readme": str(out / "README.md")}
    write_card(out, result, rules)


def _atomic_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(path, f"cannot write ({exc.strerror or exc})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
