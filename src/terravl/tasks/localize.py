"""Semantic localisation (as in GeoRSCLIP): where in a large scene is "the text"? Windows slide over the raster at
one or more scales; each is scored against the text; the scores become a georeferenced heat map (GeoTIFF) and the
best windows, after non-maximum suppression, become GeoJSON polygons."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from terravl.io import PixelWindow, iter_tiles, raster_info


def _iou(a: PixelWindow, b: PixelWindow) -> float:
    x0, y0 = max(a.col_off, b.col_off), max(a.row_off, b.row_off)
    x1 = min(a.col_off + a.width, b.col_off + b.width)
    y1 = min(a.row_off + a.height, b.row_off + b.height)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union else 0.0


def localize(raster: str | Path, query: str, encoder, out: str | Path | None = None, scales=(256,),
             stride: float = 0.5, top: int = 5, batch_size: int = 32, max_heat_side: int = 1024) -> dict:
    """Score windows of ``raster`` against ``query``; write the heat map to ``out`` (GeoTIFF) if given.

    ``stride`` is the step between windows as a fraction of the window size. Returns ``{"query", "windows",
    "heatmap", "regions"}`` where ``regions`` is a GeoJSON FeatureCollection of the ``top`` windows."""
    info = raster_info(raster)
    text = encoder.encode_texts([query])[0]
    factor = max(1, math.ceil(max(info.width, info.height) / max_heat_side))
    hh, hw = math.ceil(info.height / factor), math.ceil(info.width / factor)
    heat_sum = np.zeros((hh, hw), dtype=np.float64)
    heat_n = np.zeros((hh, hw), dtype=np.int32)
    scored: list[tuple[float, object]] = []
    for size in scales:
        size = int(min(size, max(info.width, info.height)))
        overlap = min(size - 1, int(round(size * (1 - stride))))
        batch = []
        for tile in iter_tiles(raster, size, overlap):
            batch.append(tile)
            if len(batch) == batch_size:
                scored += _score(batch, encoder, text)
                batch = []
        if batch:
            scored += _score(batch, encoder, text)
    for score, tile in scored:
        w = tile.window
        r0, c0 = w.row_off // factor, w.col_off // factor
        r1, c1 = math.ceil((w.row_off + w.height) / factor), math.ceil((w.col_off + w.width) / factor)
        heat_sum[r0:r1, c0:c1] += score
        heat_n[r0:r1, c0:c1] += 1
    heat = np.where(heat_n > 0, heat_sum / np.maximum(heat_n, 1), np.nan).astype(np.float32)
    regions = _regions(scored, top)
    result = {"query": query, "path": str(raster), "windows": len(scored), "heatmap": None,
              "heatmap_scale": factor, "regions": regions}
    if out is not None:
        result["heatmap"] = str(_write_heat(heat, info, factor, Path(out), query))
    return result


def _score(tiles, encoder, text) -> list[tuple[float, object]]:
    emb = encoder.encode_images([t.array for t in tiles], batch_size=len(tiles), progress=False)
    return [(float(s), t) for s, t in zip(emb @ text, tiles)]


def _regions(scored, top: int) -> dict:
    chosen = []
    for score, tile in sorted(scored, key=lambda x: -x[0]):
        if all(_iou(tile.window, other.window) < 0.3 for _, other in chosen):
            chosen.append((score, tile))
        if len(chosen) >= top:
            break
    features = [{"type": "Feature", "geometry": tile.footprint,
                 "properties": {"rank": rank + 1, "score": score, "window": tile.window.to_dict(),
                                "source": tile.source, "crs": tile.georef.crs_name if tile.georef else None}}
                for rank, (score, tile) in enumerate(chosen)]
    return {"type": "FeatureCollection", "features": features}


def _write_heat(heat: np.ndarray, info, factor: int, out: Path, query: str) -> Path:
    import rasterio
    from affine import Affine

    out.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": heat.shape[1], "height": heat.shape[0], "count": 1, "dtype": "float32",
               "nodata": float("nan"), "compress": "deflate"}
    if info.georef is not None:
        profile.update(crs=info.georef.crs_wkt, transform=info.georef.transform @ Affine.scale(factor, factor))
    tmp = out.with_suffix(out.suffix + ".part")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(heat, 1)
        dst.update_tags(query=query, source=info.path, description="cosine similarity of windows to the query")
    tmp.replace(out)
    return out
