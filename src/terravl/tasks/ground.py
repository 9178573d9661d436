"""Visual grounding and referring segmentation (GeoPix, SkyEyeGPT): where in the picture is "the storage tanks next
to the river"? Answered as a mask (GeoTIFF), polygons with their area (GeoJSON), a box per object and a score.

The raster is scored tile by tile (a tile and its margin resized to the tower's input; each tile's core kept), in
the way :func:`terravl.tasks.change` measures change, and with its helpers: scores are held in memory for ordinary
images and in a temporary GeoTIFF for huge ones (``_Scores``), matched pixels are counted per cell of a bounded grid
(``_CountGrid``) and traced into regions with areas and WGS84 outlines (``find_regions``), the files are written
block by block (``GridWriter``). Memory does not grow with the raster.

A region is an *instance*: a connected set of matched pixels, scored by its mean probability. The best instance is
the answer by default, every instance with ``all=True``. Nothing over the method's floor is an honest empty answer
(``found: false``) that still shows the best score seen.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from terravl.errors import InputError, WorkBudgetError
from terravl.io import MIN_VALID_FRACTION, PixelWindow, tile_windows
from terravl.results import Result
from terravl.tasks.change import _CountGrid, _expand, _Overview, _progress, _Scores
from terravl.tasks.change_outputs import MASK_NODATA, GridWriter, prepare_folder, write_json
from terravl.tasks.change_regions import REGION_SIDE, feature_collection, find_regions
from terravl.tasks.ground_methods import GroundMethod, make_method
from terravl.validation import MAX_QUERY_CHARS, check_int, check_text

MIN_SIDE = 32
"""Smallest image side grounded: below it the tower's last feature map is a single location."""
TOWER_SIDE = 112
"""The image tower's training input: smaller images are upsampled, with a warning."""
SINGLE_PASS = 320
"""Images up to this side are scored whole (resized to the head's input); larger ones tile by tile, each tile and
its margin (256 + 2 × 32 = 320 px) resized the same way: every pixel is seen at about the same scale."""
DEFAULT_MAX_PIXELS = 1_000_000_000
HIST_BINS = 256
PREVIEW_SIDE = 1024
OUTPUT_FILES = ("mask.tif", "score.tif", "regions.geojson", "preview.png", "ground.json")
MASK_SELECTED, MASK_OTHER = 1, 2


class GroundResult(Result):
    """Where an expression is in one image (:func:`terravl.tasks.ground`).

    ``instances`` (best first) each have a ``score`` (mean probability), a pixel ``window`` (the box), ``box``
    (its WGS84 polygon, None without a georeference), ``pixels``, ``area_m2`` and ``position``; ``regions`` is the
    same as a GeoJSON FeatureCollection of their outlines (WGS84, or pixel coordinates when the image has no
    georeference: ``coordinates`` says which). ``found`` is false when nothing matched: ``best_score`` is then the
    best seen anywhere, to show how far it was."""

    path: str
    expression: str
    method: str
    found: bool
    best_score: float
    threshold: float
    floor: float
    instances: list[dict]
    matches: int
    regions: dict
    coordinates: str
    crs: str | None = None
    width: int
    height: int
    outputs: dict | None = None
    warnings: list[str] = []

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()  # every result has the same keys


def check_expression(expression: str | bytes | None) -> str:
    """The expression as ``check_text`` reads it (non-empty, printable, at most 500 characters)."""
    return check_text(expression, "expression", MAX_QUERY_CHARS)


def ground(image: str | Path, expression: str, encoder=None, *, all: bool = False, out: str | Path | None = None,
           method: str | GroundMethod = "auto", grounder=None, min_region_pixels: int = 16,
           max_instances: int = 50, max_pixels: int | None = DEFAULT_MAX_PIXELS, bands="auto",
           trusted: bool = True, label: str | None = None, progress: bool | None = None,
           refiner=None) -> GroundResult:
    """Find what ``expression`` refers to in ``image`` (a raster of any size).

    ``method``: ``trained`` (the shipped head, or ``grounder``), ``baseline`` (training-free dense similarity of
    ``encoder``'s tower) or ``auto`` (trained when its weights are here). Returns the best instance, or every
    instance (up to ``max_instances``) with ``all``. With ``out``, writes ``mask.tif`` (1 the answer, 2 other
    matches, 0 none, 255 no data; georeferenced like the input), ``score.tif`` (probability), ``regions.geojson``,
    ``preview.png`` and ``ground.json``. ``refiner``: a SAM-family model folder (or a
    :class:`~terravl.tasks.ground_methods.SamRefiner`) that redraws the trained head's instances from their boxes.
    Regions under ``min_region_pixels`` are speckle. An image over
    ``max_pixels`` is refused before any pixel is read; ``label`` names the image instead of its path (uploads)."""
    from terravl.io import open_raster, raster_info
    from terravl.io.align import AlignedPair

    expression = check_expression(expression)
    min_region_pixels = check_int(min_region_pixels, "min_region_pixels", 1, 10**9)
    max_instances = check_int(max_instances, "max_instances", 1, 1000)
    untrusted = {} if trusted else {"trusted": False}
    info = raster_info(image, **untrusted)
    width, height = info.width, info.height
    name = label or info.path
    if min(width, height) < MIN_SIDE:
        raise InputError(name, f"is {width} × {height} pixels; grounding needs at least {MIN_SIDE} × {MIN_SIDE}")
    if max_pixels is not None and width * height > max_pixels:
        raise WorkBudgetError(name, f"{width:,} × {height:,} = {width * height:,} pixels is over the limit of "
                                    f"{max_pixels:,}; cut the raster to the area of interest or raise the limit")
    warnings: list[str] = []
    if min(width, height) < TOWER_SIDE:
        warnings.append(f"the image is {width} × {height} pixels, smaller than the image tower's input "
                        f"({TOWER_SIDE} px): it was upsampled, and small objects may be missed")
    if info.georef is None:
        warnings.append("the image has no georeference: boxes and regions are in pixel coordinates (col, row)")
    if isinstance(method, str):
        method = make_method(method, encoder=encoder, grounder=grounder)
    if refiner is not None:
        from terravl.tasks.ground_methods import RefinedMethod, SamRefiner

        method = RefinedMethod(method, refiner if isinstance(refiner, SamRefiner) else SamRefiner(refiner))
    warnings.extend(method.warnings)
    state = method.prepare(expression)
    single = max(width, height) <= SINGLE_PASS
    core = max(width, height) if single else method.tile
    margin = 0 if single else method.context
    windows = [w for _, _, w in tile_windows(width, height, core)]
    folder = _fresh_folder(Path(out)) if out is not None else None
    view = _Overview.of(width, height, PREVIEW_SIDE, 3, np.uint8, 0)
    hist = np.zeros(HIST_BINS, dtype=np.int64)
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    from terravl.io.gdalenv import acquire_block_cache, release_block_cache

    acquire_block_cache()  # GDAL's block cache capped for every pass (the scores and outputs too), not the read only
    scores = _Scores(width, height, folder)
    best = 0.0
    try:
        with open_raster(image, bands=bands, **untrusted) as src, \
                _progress(len(windows), progress, "ground: scoring") as bar:
            for window in windows:
                wide = _expand(window, margin, width, height)
                rgb, valid = src.read_rgb(wide)
                r0, c0 = window.row_off - wide.row_off, window.col_off - wide.col_off
                core_rgb = rgb[r0:r0 + window.height, c0:c0 + window.width]
                view.paste(core_rgb, window)
                if valid.mean() < MIN_VALID_FRACTION:
                    block = np.full((window.height, window.width), np.nan, dtype=np.float32)
                else:
                    block = method.score(np.ascontiguousarray(rgb), valid, state)
                    block = np.ascontiguousarray(block[r0:r0 + window.height, c0:c0 + window.width], np.float32)
                ok = np.isfinite(block)
                if ok.any():
                    hist += np.histogram(np.clip(block[ok], 0, 1), bins=edges)[0]
                    best = max(best, float(block[ok].max()))
                scores.write(block, window)
                bar.update(1)
        scores.finish_writing()
        if not hist.any():
            raise InputError(name, "no valid pixels (nodata, NaN or fully transparent everywhere)")
        threshold = float(method.threshold(hist, edges, best))
        cells = _CountGrid.of(width, height, REGION_SIDE)
        sums = np.zeros(cells.counts.shape, dtype=np.float32)  # per cell: at most step² scores ≤ 1
        valid_pixels = 0
        for window in windows:
            block = scores.read(window)
            ok = np.isfinite(block)
            matched = ok & (block > threshold)
            valid_pixels += int(ok.sum())
            cells.add(matched, window)
            _add_sums(sums, cells.step, np.where(matched, block, 0.0), window)
        pixel_area = AlignedPair.pixel_area_m2(SimpleNamespace(georef=info.georef, width=width, height=height))
        regions, total = find_regions(cells.counts, cells.step, width, height, valid_pixels, info.georef,
                                      pixel_area, min_region_pixels, 1000)
        labels, order = _ranked_labels(cells.counts, min_region_pixels)
        label_sums = np.bincount(labels.ravel(), weights=sums.ravel(), minlength=int(labels.max()) + 1)
        region_scores = [float(label_sums[label] / max(r.pixels, 1)) for r, label in zip(regions, order)]
        ranked = sorted(range(len(regions)), key=lambda i: (-region_scores[i], -regions[i].pixels))
        matching = [i for i in ranked if region_scores[i] >= method.floor]
        chosen = matching if all else matching[:1]
        chosen = chosen[:max_instances]
        best_score = max(region_scores) if region_scores else best
        instances = [_instance(rank, regions[i], region_scores[i], info.georef)
                     for rank, i in enumerate(chosen, start=1)]
        collection = feature_collection([regions[i] for i in chosen], info.georef,
                                        {"image": name, "expression": expression, "method": method.name})
        for feature, inst in zip(collection["features"], instances):
            props = feature["properties"]
            for key in ("class_before", "class_after"):
                props.pop(key, None)
            props.update(rank=inst["rank"], score=round(inst["score"], 4))
        if info.georef is None:
            collection["properties"]["coordinates"] = "pixel (col, row) of the image: it has no georeference"
        result = GroundResult(
            path=name, expression=expression, method=method.name, found=bool(chosen),
            best_score=round(float(best_score), 4), threshold=round(threshold, 4), floor=method.floor,
            instances=instances, matches=len(matching), regions=collection,
            coordinates="wgs84" if info.georef is not None else "pixel",
            crs=info.georef.crs_name if info.georef else None, width=width, height=height, warnings=warnings)
        if folder is not None:
            selected = np.zeros(len(order) + 1, dtype=bool)
            other = np.zeros(len(order) + 1, dtype=bool)
            for i in range(len(regions)):
                (selected if i in chosen else other)[i + 1] = True
            rank_of = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int32)
            rank_of[order] = np.arange(1, len(order) + 1, dtype=np.int32)
            result = _write_outputs(folder, result, scores, windows, threshold, rank_of[labels], cells.step,
                                    selected, other, info.georef, view, tags={"expression": expression,
                                                                              "method": method.name,
                                                                              "image": name})
    finally:
        scores.close()
        release_block_cache()
    return result


def _fresh_folder(out: Path) -> Path:
    folder = prepare_folder(out)
    for name in OUTPUT_FILES:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    return folder


def _add_sums(grid: np.ndarray, step: int, values: np.ndarray, window: PixelWindow) -> None:
    """Sum ``values`` into the ``step`` × ``step`` cells of ``grid`` (as ``_CountGrid.add`` counts pixels)."""
    top, left = window.row_off % step, window.col_off % step
    h, w = values.shape
    padded = np.zeros((math.ceil((h + top) / step) * step, math.ceil((w + left) / step) * step), dtype=np.float64)
    padded[top:top + h, left:left + w] = values
    cells = padded.reshape(padded.shape[0] // step, step, padded.shape[1] // step, step).sum(axis=(1, 3))
    r0, c0 = window.row_off // step, window.col_off // step
    grid[r0:r0 + cells.shape[0], c0:c0 + cells.shape[1]] += cells.astype(grid.dtype)


def _ranked_labels(counts: np.ndarray, min_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """The cell labels and the label of each region :func:`find_regions` returns, in its order (the same
    labelling, sizes and stable sort, so region ``i`` is label ``order[i]``)."""
    from scipy import ndimage

    labels, count = ndimage.label(counts > 0, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return labels, np.zeros(0, dtype=np.int64)
    changed = counts > 0
    sizes = np.bincount(labels[changed], weights=counts[changed], minlength=count + 1)[1:].round().astype(np.int64)
    kept = np.flatnonzero(sizes >= max(1, min_pixels)) + 1
    order = kept[np.argsort(-sizes[kept - 1], kind="stable")][:1000]
    return labels, order


def _instance(rank: int, region, score: float, georef) -> dict:
    w = region.window
    return {"rank": rank, "score": round(score, 4), "pixels": region.pixels,
            "area_m2": None if region.area_m2 is None else round(region.area_m2, 1),
            "percent": round(100 * region.fraction, 3), "position": region.position, "window": w.to_dict(),
            "box": georef.footprint(w) if georef is not None else None,
            "centre": [round(region.centre[0], 1), round(region.centre[1], 1)]}


def _write_outputs(folder: Path, result: GroundResult, scores: _Scores, windows: list[PixelWindow],
                   threshold: float, cell_rank: np.ndarray, step: int, selected: np.ndarray, other: np.ndarray,
                   georef, view: _Overview, tags: dict) -> GroundResult:
    """mask.tif, score.tif, regions.geojson, preview.png and ground.json, block by block."""
    width, height = result.width, result.height
    mask_view = _Overview.of(width, height, PREVIEW_SIDE, None, np.uint8, 0)
    with contextlib.ExitStack() as stack:
        mask_out = stack.enter_context(GridWriter(
            folder / "mask.tif", width, height, georef, "uint8", MASK_NODATA,
            dict(tags, description="1 the answer, 2 other matches, 0 no match, 255 no data")))
        score_out = stack.enter_context(GridWriter(
            folder / "score.tif", width, height, georef, "float32", float("nan"),
            dict(tags, threshold=f"{threshold:.6g}", description="probability that the pixel is what the expression "
                                                                 "refers to")))
        for window in windows:
            block = scores.read(window)
            ok = np.isfinite(block)
            rows = np.arange(window.row_off, window.row_off + window.height) // step
            cols = np.arange(window.col_off, window.col_off + window.width) // step
            ranks = cell_rank[np.ix_(rows, cols)]
            matched = ok & (block > threshold)
            mask = np.zeros(block.shape, dtype=np.uint8)
            mask[matched & selected[ranks]] = MASK_SELECTED
            mask[matched & other[ranks]] = MASK_OTHER
            mask[~ok] = MASK_NODATA
            mask_out.write(mask, window)
            score_out.write(block.astype(np.float32), window)
            mask_view.paste(mask, window)
    write_json(folder / "regions.geojson", result.regions)
    _write_preview(folder / "preview.png", view.array, mask_view.array, result)
    outputs = {name: str(folder / name) for name in OUTPUT_FILES}
    result = result.model_copy(update={"outputs": outputs})
    write_json(folder / "ground.json", result.to_dict())
    return result


def _write_preview(path: Path, image: np.ndarray, mask: np.ndarray, result: GroundResult) -> Path:
    """``image | image with the answer``: selected instances tinted red and boxed, other matches yellow."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    from terravl.errors import OutputError

    overlay = image.astype(np.float32)
    for value, colour in ((MASK_SELECTED, (230, 57, 70)), (MASK_OTHER, (255, 209, 102))):
        hit = mask == value
        overlay[hit] = 0.5 * overlay[hit] + 0.5 * np.array(colour, dtype=np.float32)
        overlay[hit & ~ndimage.binary_erosion(hit)] = colour
    panel = Image.fromarray(overlay.astype(np.uint8))
    draw = ImageDraw.Draw(panel)
    sy, sx = image.shape[0] / result.height, image.shape[1] / result.width
    for inst in result.instances:
        w = inst["window"]
        draw.rectangle([w["col_off"] * sx, w["row_off"] * sy, (w["col_off"] + w["width"]) * sx - 1,
                        (w["row_off"] + w["height"]) * sy - 1], outline=(255, 255, 255), width=2)
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    strip = np.concatenate([image, gap, np.asarray(panel)], axis=1)
    part = path.with_name(path.name + ".part")
    try:
        Image.fromarray(strip).save(part, format="PNG")
        part.replace(path)
    except OSError as exc:
        raise OutputError(path, f"cannot write ({exc.strerror or exc})") from None
    return path
