"""Change detection scores on LEVIR-CD-style pairs: precision, recall, F1 and IoU of the change class.

The LEVIR-CD convention (Chen & Shi 2020; BIT, ChangeFormer): the confusion counts of every pixel of every pair are
summed first and the scores computed once from the sums ("pooled pixels"), so a big pair weighs more than a small
one and a pair without change adds only false positives. Each method runs through
:func:`terravl.tasks.change_detect.detect_arrays`, the path the scene task takes, with the threshold chosen on the
pair itself.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import numpy as np

from terravl.errors import InputError, TerraVLError
from terravl.results import Problem


def confusion_counts(pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None) -> dict[str, int]:
    """True/false positives and negatives of the change class (``True`` = changed) over the ``valid`` pixels."""
    pred, true = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and reference {true.shape} differ in shape")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        pred, true = pred[valid], true[valid]
    tp = int(np.count_nonzero(pred & true))
    fp = int(np.count_nonzero(pred & ~true))
    fn = int(np.count_nonzero(~pred & true))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(pred.size) - tp - fp - fn}


def change_scores(counts: dict[str, int]) -> dict[str, float]:
    """Precision, recall, F1, IoU of the change class and overall accuracy from (summed) confusion counts.

    An empty denominator gives 0 (as scikit-learn's ``zero_division=0``): no predicted change → precision 0."""
    tp, fp, fn, tn = (counts[k] for k in ("tp", "fp", "fn", "tn"))

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"precision": precision, "recall": recall, "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "iou": ratio(tp, tp + fp + fn), "overall_accuracy": ratio(tp + tn, tp + fp + fn + tn)}


def read_mask(path: str | Path) -> np.ndarray:
    """A change mask image as bool (H, W): any non-zero value is change (LEVIR-CD stores 0/255, some copies 0/1)."""
    from terravl.errors import RasterReadError
    from terravl.io.raster import open_pillow

    path = Path(path)
    if not path.is_file():
        raise RasterReadError(path, "no such mask file")
    try:
        img = open_pillow(str(path))
        img.load()
        data = np.asarray(img)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise RasterReadError(path, f"unreadable mask ({exc.__class__.__name__}: {exc})") from exc
    if data.ndim == 3:
        data = data[..., :3].max(axis=-1)
    return data > 0


def _read_pair(record) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """before, after (H, W, 3) uint8, valid (H, W) bool and the reference mask; typed errors name the file."""
    from terravl.io.raster import read_image

    before, after = read_image(record.before).with_data(), read_image(record.after).with_data()
    if before.array.shape != after.array.shape:
        raise InputError(record.after, f"size {after.array.shape[1]}×{after.array.shape[0]} differs from the "
                                       f"before image's {before.array.shape[1]}×{before.array.shape[0]}")
    mask = read_mask(record.mask)
    if mask.shape != before.array.shape[:2]:
        raise InputError(record.mask, f"mask size {mask.shape[1]}×{mask.shape[0]} differs from the image size "
                                      f"{before.array.shape[1]}×{before.array.shape[0]}")
    return before.array, after.array, before.valid & after.valid, mask


def evaluate_change_detection(dataset: str | Path, methods: Iterable[str] = ("trained", "cva", "embedding"),
                              split: str | None = None, encoder=None, detector=None, limit: int | None = None,
                              method_options: dict[str, dict] | None = None) -> dict:
    """Pooled-pixel precision, recall, F1 and IoU of the change class for each method on a LEVIR-CD folder.

    ``dataset``: a folder in LEVIR-CD layout (:class:`terravl.datasets.levir_cd.LevirCD`); ``split`` keeps one
    split (default: every pair). ``encoder`` / ``detector`` are passed to
    :func:`~terravl.tasks.change_detect.make_method` (``detector`` may also be a path or registry name of a saved
    detector); ``method_options`` gives a method its constructor options (``{"cva": {"sigma": 1}}``). A pair that
    cannot be read (a missing or corrupt image or mask, sizes that differ) is a problem naming the file, and the
    rest go on. The result: ``scores`` per method (with the summed counts and seconds), ``pairs``, ``problems``.
    """
    from terravl.datasets.levir_cd import LevirCD
    from terravl.tasks.change_detect import METHODS, detect_arrays, make_method

    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise InputError("methods", f"unknown change method {unknown[0]!r}; choose from {', '.join(METHODS)}"
                         if unknown else "no method given")
    if not Path(dataset).is_dir():
        raise InputError(dataset, "not a folder (a LEVIR-CD dataset has A/, B/ and label/ folders)")
    reader = LevirCD(dataset, split=split)
    problems: list[Problem] = [Problem(p.path, p.error) for p in reader.problems]
    records = []
    for record in reader.records:
        if record.mask is None:
            problems.append(Problem(str(record.before), "no change mask in label/; pair not scored"))
        else:
            records.append(record)
    records = records[:limit]
    if not records:
        raise InputError(dataset, "no pairs with change masks" + (f" in split {split!r}" if split else ""))

    if isinstance(detector, (str, Path)) and "trained" in methods:
        from terravl.models.change_detector import load_change_detector

        detector = load_change_detector(detector)
    options = method_options or {}
    made = OrderedDict((name, make_method(name, encoder=encoder, detector=detector, **options.get(name, {})))
                       for name in methods)
    totals = {name: {"tp": 0, "fp": 0, "fn": 0, "tn": 0} for name in methods}
    seconds = {name: 0.0 for name in methods}
    pairs = 0
    for record in records:
        try:
            before, after, valid, truth = _read_pair(record)
        except TerraVLError as exc:
            problems.append(Problem.of(getattr(exc, "source", record.before), exc))
            continue
        for name, method in made.items():
            start = time.perf_counter()
            _, mask = detect_arrays(before, after, valid, method=method)
            seconds[name] += time.perf_counter() - start
            for key, value in confusion_counts(mask, truth, valid).items():
                totals[name][key] += value
        pairs += 1
    if not pairs:
        raise InputError(dataset, f"none of the {len(records)} pairs could be read (first problem: "
                                  f"{problems[-1].path}: {problems[-1].error})")
    scores = OrderedDict()
    for name in methods:
        scores[name] = {**change_scores(totals[name]), **totals[name], "seconds": round(seconds[name], 3)}
    return {"task": "change-detection", "dataset": str(dataset), "split": split, "pairs": pairs,
            "changed_pixels": totals[methods[0]]["tp"] + totals[methods[0]]["fn"],
            "pixels": sum(totals[methods[0]].values()), "protocol": "pooled pixels (LEVIR-CD)",
            "scores": dict(scores), "problems": [p.to_dict() for p in problems]}
