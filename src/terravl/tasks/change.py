"""Change between two dates of one place (the question of DeltaVLM, MModalCC and the LEVIR-CC captioners): did it
change, where, how much, and from what to what — answered with files a GIS opens.

The two rasters are put on one grid (the before image's; :func:`terravl.io.align.align_pair`), then scored in two
passes over tiles: the first computes each pixel's change score (a :class:`~terravl.tasks.change_detect.ChangeMethod`:
the trained detector or a baseline) and a histogram of the scores over the whole scene, from which the method picks
its threshold; the second turns scores into a probability (``change.tif``) and a mask (``mask.tif``). Only a tile,
a histogram and two small overviews are held at once, so memory does not grow with the scene. Regions, their classes
on each date, each date's caption and the change caption come from the mask and the overviews.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from terravl.errors import InputError, WorkBudgetError
from terravl.io import MIN_VALID_FRACTION, PixelWindow, tile_windows
from terravl.results import ChangeResult
from terravl.tasks.change_outputs import MASK_NODATA, GridWriter, prepare_folder, write_json, write_preview
from terravl.tasks.change_regions import REGION_SIDE, classify_regions, feature_collection, find_regions
from terravl.tasks.change_text import compose_caption

DEFAULT_MAX_PIXELS = 1_000_000_000
"""Largest overlap (pixels on the common grid) a change run takes by default: about 31,600²; a larger one is refused
before any pixel is read (``max_pixels`` raises it). A 20,000² pair runs."""

PREVIEW_SIDE = 1024
"""Longest side of each panel of ``preview.png`` and of the overviews captioned for each date."""

MIN_SIDE = 16
"""Narrowest overlap compared: below this no method has a neighbourhood to look at."""

OUTPUT_FILES = ("change.tif", "mask.tif", "regions.geojson", "preview.png", "change.json")

IN_MEMORY_PIXELS = 16_000_000
"""Scenes up to this many pixels keep their scores in memory between the passes; larger ones in a temporary
compressed GeoTIFF beside the outputs."""

CLASSIFIED_REGIONS = 5
"""The largest regions get a scene class on each date (a zero-shot classification of their crop per date)."""


@dataclass
class _Overview:
    """Nearest-neighbour decimation of the grid by ``step``, filled tile by tile."""

    step: int
    array: np.ndarray

    @classmethod
    def of(cls, width: int, height: int, side: int, channels: int | None, dtype, fill) -> "_Overview":
        step = max(1, math.ceil(max(width, height) / side))
        shape = (math.ceil(height / step), math.ceil(width / step)) + ((channels,) if channels else ())
        return cls(step, np.full(shape, fill, dtype=dtype))

    def paste(self, block: np.ndarray, window: PixelWindow) -> None:
        s = self.step
        r0, c0 = -window.row_off % s, -window.col_off % s
        part = block[r0::s, c0::s]
        top, left = (window.row_off + r0) // s, (window.col_off + c0) // s
        self.array[top:top + part.shape[0], left:left + part.shape[1]] = part


@dataclass
class _CountGrid:
    """Changed pixels per ``step`` × ``step`` cell of the grid, summed exactly tile by tile (cells that straddle
    tiles add up): regions are traced on the cells with any change, and their sizes are exact pixel counts, so a
    1-px-wide change on a 20,000² scene is neither lost nor over-counted."""

    step: int
    counts: np.ndarray

    @classmethod
    def of(cls, width: int, height: int, side: int) -> "_CountGrid":
        step = max(1, math.ceil(max(width, height) / side))
        # a cell holds at most step² changed pixels: uint16 while that fits (sides up to ~1,000,000 px), half the
        # memory of uint32, which very elongated scenes need
        dtype = np.uint16 if step * step <= np.iinfo(np.uint16).max else np.uint32
        return cls(step, np.zeros((math.ceil(height / step), math.ceil(width / step)), dtype=dtype))

    def add(self, changed: np.ndarray, window: PixelWindow) -> None:
        s = self.step
        top, left = window.row_off % s, window.col_off % s
        h, w = changed.shape
        padded = np.zeros((math.ceil((h + top) / s) * s, math.ceil((w + left) / s) * s), dtype=np.int64)
        padded[top:top + h, left:left + w] = changed
        cells = padded.reshape(padded.shape[0] // s, s, padded.shape[1] // s, s).sum(axis=(1, 3))
        r0, c0 = window.row_off // s, window.col_off // s
        self.counts[r0:r0 + cells.shape[0], c0:c0 + cells.shape[1]] += cells.astype(self.counts.dtype)


class _Scores:
    """Scores between the two passes: in memory for ordinary scenes, in a temporary GeoTIFF for huge ones."""

    def __init__(self, width: int, height: int, folder: Path | None):
        self.array = self.tmp = self.writer = None
        if width * height <= IN_MEMORY_PIXELS:
            self.array = np.full((height, width), np.nan, dtype=np.float32)
        else:
            self.tmp = Path(tempfile.mkdtemp(prefix=".terravl-change-", dir=folder))
            try:
                self.writer = GridWriter(self.tmp / "scores.tif", width, height, None, "float32", float("nan"), {})
            except BaseException:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise

    def write(self, data: np.ndarray, window: PixelWindow) -> None:
        if self.array is not None:
            self.array[window.row_off:window.row_off + window.height,
                       window.col_off:window.col_off + window.width] = data
        else:
            self.writer.write(data, window)

    def finish_writing(self) -> None:
        if self.writer is not None:
            self.writer.__exit__(None)
            import rasterio
            import rasterio.errors

            with warnings.catch_warnings():  # the temporary scores have no georeference: none is needed
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self.reader = rasterio.open(self.tmp / "scores.tif")

    def read(self, window: PixelWindow) -> np.ndarray:
        if self.array is not None:
            return self.array[window.row_off:window.row_off + window.height,
                              window.col_off:window.col_off + window.width]
        from rasterio.windows import Window

        return self.reader.read(1, window=Window(window.col_off, window.row_off, window.width, window.height))

    def close(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(Exception):
                self.reader.close()
            with contextlib.suppress(Exception):
                self.writer.dst.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def _fresh_folder(out: Path) -> Path:
    """The output folder, without a previous run's outputs: a run that fails half-way must not leave its new
    change.tif beside an old preview.png that looks like part of it."""
    folder = prepare_folder(out)
    for name in OUTPUT_FILES:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    return folder


def _expand(window: PixelWindow, margin: int, width: int, height: int) -> PixelWindow:
    c0, r0 = max(0, window.col_off - margin), max(0, window.row_off - margin)
    c1 = min(width, window.col_off + window.width + margin)
    r1 = min(height, window.row_off + window.height + margin)
    return PixelWindow(c0, r0, c1 - c0, r1 - r0)


def _progress(total: int, show: bool | None, desc: str):
    from terravl.models.progress import progress_bar

    bar = progress_bar(total, show, desc)
    bar.unit = "tile"
    return bar


def change(before, after, out: str | Path | None = None, method="trained", *, encoder=None, detector=None,
           captioner=None, change_captioner=None, classes: str = "aid", describe: bool = True,
           min_overlap: float = 0.05, min_region_pixels: int = 16, max_regions: int = 100,
           max_pixels: int | None = DEFAULT_MAX_PIXELS, bands="auto", trusted: bool = True,
           labels: tuple[str | None, str | None] = (None, None), progress: bool | None = None) -> ChangeResult:
    """What changed from ``before`` to ``after`` (two rasters of one place, any size, any CRS).

    ``method``: ``trained`` (the shipped change detector, or ``detector``), ``cva`` (change vector analysis on
    radiometrically normalised pixels) or ``embedding`` (distance of sliding-window embeddings), or a method object.
    With ``out``, writes ``change.tif``, ``mask.tif``, ``regions.geojson``, ``preview.png`` and ``change.json``
    there. ``describe`` adds each date's caption and the regions' classes (``classes``: a built-in class list);
    the change caption is composed from the measured change unless ``change_captioner`` (a model from ``terravl
    train change-caption``) is given. Regions under ``min_region_pixels`` are speckle, not change. A pair that does
    not overlap (or less than ``min_overlap`` of the before image) or whose overlap exceeds ``max_pixels`` is
    refused with an :class:`~terravl.errors.InputError` before any pixel is read; ``labels`` name the inputs in the
    result instead of their paths (uploads). A tile with under :data:`~terravl.io.MIN_VALID_FRACTION` of its pixels
    valid on both dates is not compared: its pixels are no data (255 in ``mask.tif``, outside ``valid_pixels``)."""
    from terravl.io.align import align_pair
    from terravl.tasks.change_detect import HIST_BINS, make_method
    from terravl.validation import check_int

    min_region_pixels = check_int(min_region_pixels, "min_region_pixels", 1, 10**9)
    max_regions = check_int(max_regions, "max_regions", 1, 10_000)
    if isinstance(method, str):
        method = make_method(method, encoder=encoder, detector=detector)
    with align_pair(before, after, min_overlap=min_overlap, bands=bands, trusted=trusted) as pair:
        width, height = pair.width, pair.height
        if min(width, height) < MIN_SIDE:
            raise InputError("before and after", f"their overlap is only {width} × {height} pixels; change is "
                                                 f"measured on an overlap of at least {MIN_SIDE} × {MIN_SIDE}")
        if max_pixels is not None and width * height > max_pixels:
            raise WorkBudgetError("before", f"the overlap is {width:,} × {height:,} = {width * height:,} pixels, "
                                            f"over the limit of {max_pixels:,}; cut the rasters to the area of "
                                            "interest or raise the limit (--max-pixels)")
        folder = _fresh_folder(Path(out)) if out is not None else None
        core = max(32, method.tile_size - 2 * method.context)
        windows = [w for _, _, w in tile_windows(width, height, core)]
        views = [_Overview.of(width, height, PREVIEW_SIDE, 3, np.uint8, 0) for _ in range(2)]
        view_valid = _Overview.of(width, height, PREVIEW_SIDE, None, bool, False)
        hist = np.zeros(HIST_BINS, dtype=np.int64)
        edges = np.linspace(*method.score_range, HIST_BINS + 1)
        scores = _Scores(width, height, folder)
        try:
            with _progress(len(windows), progress, "change: scoring") as bar:
                for window in windows:
                    _score_tile(pair, method, window, width, height, scores, hist, edges, views, view_valid)
                    bar.update(1)
            scores.finish_writing()
            if not hist.any():
                raise InputError("before", "no pixel is valid on both dates (nodata, NaN or outside one of the "
                                           "rasters everywhere in the overlap)")
            threshold = float(method.threshold(hist, edges))
            tags = {"method": method.name, "threshold": f"{threshold:.6g}",
                    "before": labels[0] or pair.before.path, "after": labels[1] or pair.after.path}
            cells = _CountGrid.of(width, height, REGION_SIDE)
            preview_mask = _Overview.of(width, height, PREVIEW_SIDE, None, np.uint8, MASK_NODATA)
            counts = _second_pass(method, threshold, windows, scores, width, height, pair.georef, folder, tags,
                                  cells, preview_mask, progress)
        finally:
            scores.close()
        changed_pixels, valid_pixels = counts
        pixel_area = pair.pixel_area_m2()
        regions, region_count = find_regions(cells.counts, cells.step, width, height, valid_pixels,
                                             pair.georef, pixel_area, min_region_pixels, max_regions)
        before_caption = after_caption = None
        if describe:
            if captioner is None:
                import terravl.models as m

                captioner = m.load_captioner(m.DEFAULT_CAPTIONER)
            encoder = encoder or captioner.encoder
            crops = [_region_crops(pair, r.window, views, date) for date in (0, 1)
                     for r in regions[:CLASSIFIED_REGIONS]]
            half = len(crops) // 2
            from terravl.tasks.classify import resolve_labels

            regions = classify_regions(regions, crops[:half], crops[half:], encoder, resolve_labels(None, classes))
            before_caption, after_caption = _date_captions(captioner, views)
        warnings = list(pair.warnings)
        dates = (pair.before.acquired, pair.after.acquired)
        if dates[0] and dates[1] and dates[0] > dates[1]:
            warnings.append(f"the before image is dated {dates[0]}, after the after image ({dates[1]})")
        names = (labels[0] or pair.before.path, labels[1] or pair.after.path)
        grid = {"width": width, "height": height, "window": pair.window.to_dict(),
                "crs": pair.georef.crs_name if pair.georef else None, "resampled": pair.resampled,
                "overlap_fraction": round(pair.overlap_fraction, 6),
                "pixel_area_m2": None if pixel_area is None else round(pixel_area, 6)}
        result = ChangeResult(
            before=names[0], after=names[1], before_date=dates[0], after_date=dates[1], method=method.name,
            threshold=threshold, changed=region_count > 0,
            changed_fraction=changed_pixels / max(valid_pixels, 1), changed_pixels=changed_pixels,
            valid_pixels=valid_pixels,
            changed_area_m2=None if pixel_area is None else changed_pixels * pixel_area,
            region_count=region_count,
            regions=feature_collection(regions, pair.georef, {"before": names[0], "after": names[1]}),
            caption="", caption_source="composed", before_caption=before_caption, after_caption=after_caption,
            grid=grid, warnings=warnings)
        caption, source = compose_caption(result), "composed"
        if change_captioner is not None:
            caption, source = change_captioner.describe([views[0].array], [views[1].array])[0], "model"
        result = result.model_copy(update={"caption": caption, "caption_source": source})
        if folder is not None:
            outputs = {"change": str(folder / "change.tif"), "mask": str(folder / "mask.tif"),
                       "regions": str(write_json(folder / "regions.geojson", result.regions)),
                       "preview": str(write_preview(folder / "preview.png", views[0].array, views[1].array,
                                                    preview_mask.array, view_valid.array))}
            result = result.model_copy(update={"outputs": outputs})
            write_json(folder / "change.json", result.to_dict())
        return result


def _score_tile(pair, method, window: PixelWindow, width: int, height: int, scores: _Scores, hist: np.ndarray,
                edges: np.ndarray, views: list[_Overview], view_valid: _Overview) -> None:
    """Pass 1 for one tile: read it with its context, score it, keep the core's scores and histogram."""
    wide = _expand(window, method.context, width, height)
    b, bv, a, av = pair.read(wide)
    r0, c0 = window.row_off - wide.row_off, window.col_off - wide.col_off
    core = (slice(r0, r0 + window.height), slice(c0, c0 + window.width))
    valid = bv & av
    views[0].paste(b[core], window)
    views[1].paste(a[core], window)
    view_valid.paste(valid[core], window)
    if valid[core].mean() < MIN_VALID_FRACTION:
        return  # nothing to compare here: the stored scores stay NaN (no change measured)
    tile_scores = np.asarray(method.scores(b, a, valid), dtype=np.float32)[core]
    tile_scores = np.where(valid[core], tile_scores, np.nan).astype(np.float32)
    finite = tile_scores[np.isfinite(tile_scores)]
    hist += np.histogram(np.clip(finite, edges[0], edges[-1]), bins=edges)[0]
    scores.write(tile_scores, window)


def _second_pass(method, threshold: float, windows: list[PixelWindow], scores: _Scores, width: int, height: int,
                 georef, folder: Path | None, tags: dict, cells: _CountGrid, preview: _Overview,
                 progress) -> tuple[int, int]:
    """Pass 2: scores → probability and mask, written block by block; returns (changed, valid) pixel counts."""
    changed = valid_count = 0
    with contextlib.ExitStack() as stack:
        writers = None
        if folder is not None:
            writers = (stack.enter_context(GridWriter(folder / "change.tif", width, height, georef, "float32",
                                                      float("nan"), dict(tags, description="change probability"))),
                       stack.enter_context(GridWriter(folder / "mask.tif", width, height, georef, "uint8",
                                                      MASK_NODATA, dict(tags, description="1 changed, 0 unchanged, "
                                                                                          "255 no data"))))
        bar = stack.enter_context(_progress(len(windows), progress, "change: writing"))
        for window in windows:
            block = scores.read(window)
            ok = np.isfinite(block)
            prob = np.where(ok, np.asarray(method.probability(np.nan_to_num(block), threshold), np.float32), np.nan)
            mask = np.where(ok, (prob > 0.5).astype(np.uint8), MASK_NODATA).astype(np.uint8)
            changed += int((mask == 1).sum())
            valid_count += int(ok.sum())
            cells.add(mask == 1, window)
            preview.paste(mask, window)
            if writers is not None:
                writers[0].write(prob.astype(np.float32), window)
                writers[1].write(mask, window)
            bar.update(1)
    return changed, valid_count


def _region_crops(pair, window: PixelWindow, views: list[_Overview], date: int, min_side: int = 64,
                  max_side: int = 512) -> np.ndarray:
    """The region's box on one date, widened to ``min_side`` for context: read at full resolution when small,
    cut from the overview when large (its pixels are what a classifier at 112 px sees anyway)."""
    grow = max(0, min_side - min(window.width, window.height)) // 2
    box = _expand(window, grow, pair.width, pair.height)
    if max(box.width, box.height) <= max_side:
        return pair.read(box)[2 * date]
    view = views[date]
    s = view.step
    part = view.array[box.row_off // s:math.ceil((box.row_off + box.height) / s),
                      box.col_off // s:math.ceil((box.col_off + box.width) / s)]
    return np.ascontiguousarray(part)


def _date_captions(captioner, views: list[_Overview]) -> tuple[str | None, str | None]:
    vectors = captioner.encoder.encode_images([views[0].array, views[1].array], batch_size=2, progress=False)
    before, after = captioner.generate(vectors)
    return before, after


def pair_overviews(before, after, side: int = 512, tile: int = 512, min_overlap: float = 0.05, bands="auto",
                   trusted: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Both dates on the common grid, decimated to ``side`` pixels on the long side, read tile by tile at constant
    memory: what a question about each date's whole scene looks at."""
    from terravl.io.align import align_pair

    with align_pair(before, after, min_overlap=min_overlap, bands=bands, trusted=trusted) as pair:
        views = [_Overview.of(pair.width, pair.height, side, 3, np.uint8, 0) for _ in range(2)]
        for _, _, window in tile_windows(pair.width, pair.height, tile):
            b, _, a, _ = pair.read(window)
            views[0].paste(b, window)
            views[1].paste(a, window)
    return views[0].array, views[1].array
