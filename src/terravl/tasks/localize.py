"""Semantic localisation (as in GeoRSCLIP): where in a large scene is "the text"? Windows slide over the raster at
one or more scales; each is scored against the text; the scores become a georeferenced heat map (GeoTIFF) and the
best windows, after non-maximum suppression, become GeoJSON polygons."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from typing import Sequence

from terravl.errors import InputError, TerraVLError, WorkBudgetError
from terravl.io import BAND_PROFILES, PixelWindow, iter_tiles, raster_info
from terravl.validation import MAX_K, check_bands, check_int, check_scales, check_text


def _iou(a: PixelWindow, b: PixelWindow) -> float:
    x0, y0 = max(a.col_off, b.col_off), max(a.row_off, b.row_off)
    x1 = min(a.col_off + a.width, b.col_off + b.width)
    y1 = min(a.row_off + a.height, b.row_off + b.height)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union else 0.0


def count_windows(width: int, height: int, scales: Sequence[int], stride: float) -> int:
    """How many windows :func:`localize` scores on a ``width`` × ``height`` raster: the work a request asks for.
    Counted, not listed (the grid of :func:`~terravl.io.tile_windows`): a header claiming 10^10 pixels costs
    nothing to count."""
    total = 0
    for size in scales:
        size = int(min(size, max(width, height)))
        step = size - min(size - 1, int(round(size * (1 - stride))))
        total += (1 + -(-max(0, height - size) // step)) * (1 + -(-max(0, width - size) // step))
    return total


def localize(raster: str | Path, query: str, encoder, out: str | Path | None = None, scales=(256,),
             stride: float = 0.5, top: int = 5, batch_size: int = 32, max_heat_side: int = 1024,
             max_windows: int | None = None, trusted: bool = True, bands="auto", label: str | None = None) -> dict:
    """Score windows of ``raster`` against ``query``; write the heat map to ``out`` (GeoTIFF) if given.

    ``stride`` is the step between windows as a fraction of the window size. Returns ``{"query", "windows",
    "heatmap", "regions"}`` where ``regions`` is a GeoJSON FeatureCollection of the ``top`` windows. Memory is
    bounded by design: tiles are scored a batch at a time and only each window's score and position are kept (a
    few dozen bytes), never its pixels. ``max_windows`` is a work budget: a request for more windows is refused
    (:class:`~terravl.errors.WorkBudgetError`) before any pixel is read. ``bands`` chooses the bands of a
    multispectral raster (default: what the file says). ``label`` names the raster in the regions and the heat map's
    tags instead of its path (a service's temporary upload file)."""
    query = check_text(query, "query")
    bands = check_bands(bands, BAND_PROFILES)
    scales = check_scales(scales)
    top = check_int(top, "top", 1, MAX_K)
    if not 0.05 <= float(stride) <= 1.0:
        raise InputError("stride", "must be between 0.05 and 1 (a fraction of the window size)")
    untrusted = {} if trusted else {"trusted": False}  # uploads: only self-contained formats are decoded
    info = raster_info(raster, **untrusted)
    windows = count_windows(info.width, info.height, scales, stride)
    if max_windows is not None and windows > max_windows:
        raise WorkBudgetError("scales", f"{windows:,} windows on {info.width} × {info.height} pixels exceeds this "
                                        f"service's budget of {max_windows:,}; use larger window sizes or a smaller "
                                        "image")
    text = encoder.encode_texts([query])[0]
    factor = max(1, math.ceil(max(info.width, info.height) / max_heat_side))
    hh, hw = math.ceil(info.height / factor), math.ceil(info.width / factor)
    heat_sum = np.zeros((hh, hw), dtype=np.float64)
    heat_n = np.zeros((hh, hw), dtype=np.int32)
    scores: list[float] = []
    places: list[PixelWindow] = []
    for size in scales:
        size = int(min(size, max(info.width, info.height)))
        overlap = min(size - 1, int(round(size * (1 - stride))))
        batch = []
        for tile in iter_tiles(raster, size, overlap, bands=bands, **untrusted):
            if not tile.has_data:  # nodata, NaN or outside the scene: nothing to score
                continue
            batch.append(tile)
            if len(batch) == batch_size:
                _score(batch, encoder, text, scores, places)
                batch = []
        if batch:
            _score(batch, encoder, text, scores, places)
    if not scores:
        raise InputError(str(raster), "no valid pixels (every window is nodata)")
    for score, w in zip(scores, places):
        r0, c0 = w.row_off // factor, w.col_off // factor
        r1, c1 = math.ceil((w.row_off + w.height) / factor), math.ceil((w.col_off + w.width) / factor)
        heat_sum[r0:r1, c0:c1] += score
        heat_n[r0:r1, c0:c1] += 1
    heat = np.where(heat_n > 0, heat_sum / np.maximum(heat_n, 1), np.nan).astype(np.float32)
    regions = _regions(scores, places, top, info, label or info.path)
    result = {"query": query, "path": str(raster), "windows": len(scores), "heatmap": None,
              "heatmap_scale": factor, "regions": regions}
    if out is not None:
        result["heatmap"] = str(_write_heat(heat, info, factor, Path(out), query, label or info.path))
    return result


def _score(tiles, encoder, text, scores: list[float], places: list[PixelWindow]) -> None:
    """Score a batch of tiles and keep only (score, window): the pixels are dropped with the batch."""
    emb = encoder.encode_images([t.array for t in tiles], batch_size=len(tiles), progress=False)
    scores.extend(float(s) for s in emb @ text)
    places.extend(t.window for t in tiles)


def _regions(scores: list[float], places: list[PixelWindow], top: int, info, source: str) -> dict:
    chosen: list[tuple[float, PixelWindow]] = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        window = places[i]
        if all(_iou(window, other) < 0.3 for _, other in chosen):
            chosen.append((scores[i], window))
        if len(chosen) >= top:
            break
    georef = info.georef
    features = [{"type": "Feature", "geometry": georef.footprint(window) if georef else None,
                 "properties": {"rank": rank + 1, "score": score, "window": window.to_dict(),
                                "source": source, "crs": georef.crs_name if georef else None}}
                for rank, (score, window) in enumerate(chosen)]
    return {"type": "FeatureCollection", "features": features}


def _write_heat(heat: np.ndarray, info, factor: int, out: Path, query: str, source: str) -> Path:
    import rasterio
    import rasterio.errors
    from affine import Affine

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TerraVLError(f"{out}: cannot create its folder ({exc.strerror or exc})") from None
    profile = {"driver": "GTiff", "width": heat.shape[1], "height": heat.shape[0], "count": 1, "dtype": "float32",
               "nodata": float("nan"), "compress": "deflate"}
    if info.georef is not None:
        profile.update(crs=info.georef.crs_wkt, transform=info.georef.transform @ Affine.scale(factor, factor))
    tmp = out.with_suffix(out.suffix + ".part")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(heat, 1)
            dst.update_tags(query=query, source=source, description="cosine similarity of windows to the query")
        tmp.replace(out)
    except (OSError, UnicodeError, rasterio.errors.RasterioError) as exc:  # UnicodeError: a non-UTF-8 name
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise TerraVLError(f"{out}: cannot write the heat map ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from None
    return out
