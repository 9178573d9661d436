"""Changed regions: connected parts of a change mask as polygons with an area, a share of the scene, a position in
words and a scene class on each date — the facts a change caption and a change question are answered from.

Regions are found on the mask at a bounded resolution (:data:`REGION_SIDE` pixels on the long side, full resolution
below that), so a 20,000² scene costs the same few megabytes as a 4,000² one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from affine import Affine

from terravl.io.georef import GeoReference, PixelWindow

REGION_SIDE = 4096
"""Longest side of the mask that regions are traced on; larger scenes are traced on a decimated mask."""

POSITIONS = (("top-left", "top", "top-right"), ("left", "central", "right"), ("bottom-left", "bottom", "bottom-right"))
"""A scene cut in thirds each way: where a region's centre lies, in words."""


@dataclass(frozen=True)
class Region:
    """One changed region. ``pixels`` and ``window`` are on the full-resolution grid of the pair."""

    id: int
    pixels: int
    fraction: float
    area_m2: float | None
    window: PixelWindow
    centre: tuple[float, float]
    position: str
    geometry: dict
    class_before: str | None = None
    class_after: str | None = None


def position_words(col: float, row: float, width: int, height: int) -> str:
    """Where (col, row) lies in a width × height scene, in thirds: "top-left", "central", "bottom"…"""
    c = min(2, max(0, int(3 * col / max(width, 1))))
    r = min(2, max(0, int(3 * row / max(height, 1))))
    return POSITIONS[r][c]


def readable(label: str) -> str:
    """A class name as words: ``DenseResidential`` → ``dense residential``, ``parking lot`` stays."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", label).replace("_", " ").lower()


def find_regions(counts: np.ndarray, scale: int, width: int, height: int, valid_pixels: int,
                 georef: GeoReference | None, pixel_area_m2: float | None, min_pixels: int,
                 max_regions: int) -> tuple[list[Region], int]:
    """The changed regions of a ``width`` × ``height`` grid, from ``counts``: changed pixels per ``scale`` ×
    ``scale`` cell (at ``scale`` 1, the mask itself). A region is a connected set of cells with any change; its
    size is the exact number of changed pixels in them (its outline follows cells, so above ``scale`` 1 it is drawn
    at that resolution). Regions smaller than ``min_pixels`` are dropped (speckle, not change). Returns the
    ``max_regions`` largest, largest first, and the count of all kept."""
    from rasterio.features import shapes
    from scipy import ndimage
    from shapely.geometry import mapping, shape
    from shapely.ops import unary_union

    labels, count = ndimage.label(counts > 0, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return [], 0
    changed = counts > 0  # weights of the changed cells only: no float copy of the whole grid
    sizes = np.bincount(labels[changed], weights=counts[changed], minlength=count + 1)[1:].round().astype(np.int64)
    kept = np.flatnonzero(sizes >= max(1, min_pixels)) + 1
    order = kept[np.argsort(-sizes[kept - 1], kind="stable")]
    shown = order[:max_regions]
    remap = np.zeros(count + 1, dtype=np.int32)
    remap[shown] = np.arange(1, len(shown) + 1, dtype=np.int32)
    ranked = remap[labels]
    pixel_to_map = (georef.transform if georef else Affine.identity()) @ Affine.scale(scale)
    step = abs(pixel_to_map.a) or 1.0
    parts: dict[int, list] = {}
    for geom, value in shapes(ranked, mask=ranked > 0, connectivity=8, transform=pixel_to_map):
        parts.setdefault(int(value), []).append(shape(geom))
    boxes = ndimage.find_objects(ranked)
    centres = ndimage.center_of_mass(counts, ranked, range(1, len(shown) + 1))  # weighted by changed pixels
    regions = []
    for rank, label in enumerate(shown, start=1):
        box = boxes[rank - 1]
        window = PixelWindow(box[1].start * scale, box[0].start * scale,
                             min(width, box[1].stop * scale) - box[1].start * scale,
                             min(height, box[0].stop * scale) - box[0].start * scale)
        row, col = ((c + 0.5) * scale for c in centres[rank - 1])
        pixels = int(sizes[label - 1])
        # half a pixel: drops the staircase's collinear vertices (GeoJSON 5-10× smaller), keeps every corner
        geometry = mapping(unary_union(parts.get(rank, [])).simplify(0.5 * step, preserve_topology=True))
        if georef is not None:
            geometry = _to_wgs84(geometry, georef.crs_wkt)
        regions.append(Region(rank, pixels, pixels / max(valid_pixels, 1),
                              None if pixel_area_m2 is None else pixels * pixel_area_m2, window, (col, row),
                              position_words(col, row, width, height), geometry))
    return regions, len(order)


def _to_wgs84(geometry: dict, crs_wkt: str) -> dict:
    from rasterio.warp import transform_geom

    return transform_geom(crs_wkt, "EPSG:4326", geometry)


def classify_regions(regions: list[Region], crops_before: list[np.ndarray], crops_after: list[np.ndarray],
                     encoder, labels: list[str]) -> list[Region]:
    """Zero-shot scene class of each region's crop on each date (the default encoder and prompts of
    :func:`terravl.tasks.classify`); ``regions`` beyond the crops given keep no class."""
    from dataclasses import replace

    from terravl.eval.zeroshot import RS_TEMPLATES, class_embeddings, softmax

    if not crops_before:
        return regions
    weights = class_embeddings(encoder, labels, RS_TEMPLATES)
    vectors = encoder.encode_images(crops_before + crops_after, batch_size=32, progress=False)
    best = np.argmax(softmax(encoder.logit_scale * vectors @ weights.T), axis=1)
    n = len(crops_before)
    named = [replace(r, class_before=readable(labels[best[i]]), class_after=readable(labels[best[n + i]]))
             for i, r in enumerate(regions[:n])]
    return named + regions[n:]


def feature_collection(regions: list[Region], georef: GeoReference | None, source: dict) -> dict:
    """GeoJSON of the regions: WGS84 polygons when the pair is georeferenced, pixel coordinates otherwise (said in
    the collection's ``properties.coordinates``, as a GIS user needs to know)."""
    features = []
    for r in regions:
        props = {"id": r.id, "area_m2": None if r.area_m2 is None else round(r.area_m2, 1), "pixels": r.pixels,
                 "percent": round(100 * r.fraction, 3), "position": r.position, "window": r.window.to_dict(),
                 "class_before": r.class_before, "class_after": r.class_after}
        features.append({"type": "Feature", "geometry": r.geometry, "properties": props})
    if georef is None:
        source = {**source, "coordinates": "pixel (col, row) of the before image: it has no georeference"}
    return {"type": "FeatureCollection", "features": features, "properties": source}
