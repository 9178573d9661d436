"""Zero-shot scene classification of images or tiles against free labels or a standard dataset's class list."""

from __future__ import annotations

import numpy as np

from terravl.errors import InputError
from terravl.eval.zeroshot import RS_TEMPLATES, class_embeddings, softmax
from terravl.tasks.inputs import expand_images

BUILTIN_CLASSES: dict[str, list[str]] = {
    "aid": ["Airport", "BareLand", "BaseballField", "Beach", "Bridge", "Center", "Church", "Commercial",
            "DenseResidential", "Desert", "Farmland", "Forest", "Industrial", "Meadow", "MediumResidential",
            "Mountain", "Park", "Parking", "Playground", "Pond", "Port", "RailwayStation", "Resort", "River",
            "School", "SparseResidential", "Square", "Stadium", "StorageTanks", "Viaduct"],
    "ucm": ["agricultural", "airplane", "baseball diamond", "beach", "buildings", "chaparral", "dense residential",
            "forest", "freeway", "golf course", "harbor", "intersection", "medium residential", "mobile home park",
            "overpass", "parking lot", "river", "runway", "sparse residential", "storage tanks", "tennis court"],
    "resisc45": ["airplane", "airport", "baseball diamond", "basketball court", "beach", "bridge", "chaparral",
                 "church", "circular farmland", "cloud", "commercial area", "dense residential", "desert", "forest",
                 "freeway", "golf course", "ground track field", "harbor", "industrial area", "intersection",
                 "island", "lake", "meadow", "medium residential", "mobile home park", "mountain", "overpass",
                 "palace", "parking lot", "railway", "railway station", "rectangular farmland", "river",
                 "roundabout", "runway", "sea ice", "ship", "snowberg", "sparse residential", "stadium",
                 "storage tank", "tennis court", "terrace", "thermal power station", "wetland"],
    "eurosat": ["annual crop", "forest", "herbaceous vegetation", "highway", "industrial buildings", "pasture",
                "permanent crop", "residential buildings", "river", "sea or lake"],
    "whu-rs19": ["airport", "beach", "bridge", "commercial area", "desert", "farmland", "football field", "forest",
                 "industrial area", "meadow", "mountain", "park", "parking lot", "pond", "port", "railway station",
                 "residential area", "river", "viaduct"],
    "patternnet": ["airplane", "baseball field", "basketball court", "beach", "bridge", "cemetery", "chaparral",
                   "christmas tree farm", "closed road", "coastal mansion", "crosswalk", "dense residential",
                   "ferry terminal", "football field", "forest", "freeway", "golf course", "harbor", "intersection",
                   "mobile home park", "nursing home", "oil gas field", "oil well", "overpass", "parking lot",
                   "parking space", "railway", "river", "runway", "runway marking", "shipping yard", "solar panel",
                   "sparse residential", "storage tank", "swimming pool", "tennis court", "transformer station",
                   "wastewater treatment plant"],
}
"""Class lists of the standard scene datasets (``--classes NAME``)."""


def resolve_labels(labels: list[str] | str | None = None, classes: str | None = None) -> list[str]:
    if labels and classes:
        raise InputError("--labels/--classes", "give labels or a class list name, not both")
    if classes:
        key = classes.lower()
        if key not in BUILTIN_CLASSES:
            raise InputError("--classes", f"unknown class list {classes!r}; choose one of {', '.join(BUILTIN_CLASSES)}")
        return list(BUILTIN_CLASSES[key])
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split(",")]
    labels = [x for x in (labels or []) if x]
    if len(labels) < 2:
        raise InputError("--labels", "give at least two labels (comma-separated) or --classes NAME")
    if len(set(labels)) != len(labels):
        raise InputError("--labels", "labels must be distinct")
    return labels


def classify(images: list, encoder, labels: list[str] | str | None = None, classes: str | None = None, k: int = 5,
             templates=RS_TEMPLATES, batch_size: int = 32, tile_size: int = 256,
             whole_below: int | None = None, views: int = 1) -> list[dict]:
    """Per image: ``{path, label, score, top: [{label, probability}]}``; unreadable images get ``error``.

    Directories in ``images`` are walked recursively; rasters larger than ``whole_below`` pixels (default twice
    the tile size) are classified tile by tile, each result with its window and footprint. Probabilities are a softmax over the cosine similarities
    scaled by the model's own learned temperature (as CLIP's zero-shot classifier does with its scale of 100).
    ``views`` > 1 averages each image's embedding over that many flips/rotations (8: all of them), N× the cost."""
    names = resolve_labels(labels, classes)
    items, extra, failed = expand_images(images, tile_size, whole_below or 2 * tile_size)
    if not items and not failed:
        raise InputError("images", "no image files found")
    weights = class_embeddings(encoder, names, templates)
    emb = encoder.encode_images(items, batch_size=batch_size, skip_errors=True, views=views) if items \
        else np.zeros((0, 1))
    probs = softmax(encoder.logit_scale * emb @ weights.T) if len(emb) else np.zeros((0, len(names)))
    results: list[dict] = [{} for _ in items]
    for row, index in enumerate(encoder.report.kept if items else []):
        order = np.argsort(-probs[row])[: max(1, k)]
        results[index] = {**extra[index], "label": names[order[0]], "score": float(probs[row, order[0]]),
                          "top": [{"label": names[j], "probability": float(probs[row, j])} for j in order]}
    for failure in (encoder.report.failed if items else []):
        results[failure["index"]] = {**extra[failure["index"]], "error": failure["error"]}
    return results + failed
