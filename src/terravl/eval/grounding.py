"""Grounding benchmark: referring segmentation scored as RRSIS-D does (LAVT's protocol) and boxes as RSVG does.

* ``mIoU``: the mean over expressions of the IoU of the predicted and target masks;
* ``oIoU`` (overall IoU): total intersection over total union, summed over every expression (large targets weigh
  more);
* ``P@0.5`` / ``P@0.7`` / ``P@0.9``: the share of expressions whose mask IoU is at least 0.5 / 0.7 / 0.9;
* ``box_acc@0.5``: the share of expressions whose predicted box (the answer's box) has IoU at least 0.5 with the
  target box (RSVG / TransVG's Acc@0.5); ``box_miou`` is the mean box IoU.

An expression with no answer (nothing found) counts as IoU 0. Every prediction is made by
:func:`terravl.tasks.ground` itself on an image file, as a user's call would be: the benchmark measures what users
get. Data: the fixed composite benchmark (:func:`terravl.datasets.composites.benchmark`, held-apart images only),
or a user's RRSIS-D or RSVG / DIOR-RSVG folder.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from terravl.errors import DatasetFormatError, InputError
from terravl.results import Problem

THRESHOLDS = (0.5, 0.7, 0.9)


def box_iou(a, b) -> float:
    """IoU of two (x0, y0, x1, y1) boxes (None: 0)."""
    if a is None or b is None:
        return 0.0
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Scores:
    """Accumulates per-expression intersections, unions and box IoUs; :meth:`summary` gives the table."""

    def __init__(self):
        self.inter: list[int] = []
        self.union: list[int] = []
        self.boxes: list[float] = []

    def add(self, pred: np.ndarray | None, target: np.ndarray | None, pred_box, target_box) -> None:
        if pred is not None and target is not None:
            self.inter.append(int((pred & target).sum()))
            self.union.append(int((pred | target).sum()))
        self.boxes.append(box_iou(pred_box, target_box))

    def summary(self) -> dict:
        out: dict = {"n": len(self.boxes)}
        if self.union:
            ious = np.array([i / u if u else 1.0 for i, u in zip(self.inter, self.union)])
            out.update(miou=float(ious.mean()), oiou=float(sum(self.inter) / max(sum(self.union), 1)))
            out.update({f"p@{t}": float((ious >= t).mean()) for t in THRESHOLDS})
        boxes = np.array(self.boxes) if self.boxes else np.zeros(0)
        out["box_acc@0.5"] = float((boxes >= 0.5).mean()) if boxes.size else 0.0
        out["box_miou"] = float(boxes.mean()) if boxes.size else 0.0
        return out


def _predict(image: Path, expression: str, method, folder: Path) -> tuple[np.ndarray, tuple | None]:
    """(mask of the answer, its box) from :func:`terravl.tasks.ground` run on the file, as a user would."""
    import warnings

    import rasterio
    import rasterio.errors

    from terravl.tasks.ground import MASK_SELECTED, ground

    result = ground(image, expression, method=method, out=folder, progress=False)
    with warnings.catch_warnings():  # a composite has no georeference, nor its mask
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(folder / "mask.tif") as src:
            mask = src.read(1) == MASK_SELECTED
    if not result.instances:
        return mask, None
    w = result.instances[0]["window"]
    return mask, (w["col_off"], w["row_off"], w["col_off"] + w["width"], w["row_off"] + w["height"])


def open_grounding_dataset(path: Path):
    """An RRSIS-D or RSVG / DIOR-RSVG reader for ``path``, recognised by its layout."""
    from terravl.datasets.rrsis import RRSISDataset
    from terravl.datasets.rsvg import RSVGDataset

    path = Path(path)
    if not path.exists():
        raise InputError(str(path), "no such dataset folder")
    for reader in (RRSISDataset, RSVGDataset):
        if reader.detect(path):
            return reader(path)
    raise DatasetFormatError(path, "not an RRSIS-D folder (refs(unc).p + instances.json) nor an RSVG / DIOR-RSVG "
                                   "folder (Annotations/*.xml); for the composite benchmark leave --dataset out")


def evaluate_grounding(methods: dict, dataset: Path | None = None, data_root: Path | None = None,
                       split: str | None = None, n: int | None = None, seed: int | None = None,
                       limit: int | None = None, log=None, examples: Path | None = None) -> dict:
    """Score each of ``methods`` (name → :class:`~terravl.tasks.ground_methods.GroundMethod`) on the composite
    benchmark (``dataset`` None: built from ``data_root``, ``n`` composites with ``seed``) or a user's dataset.
    ``examples``: a folder for ``ground-KIND.png``, the first three composites of each kind of expression with the
    first method's answers (composite benchmark only)."""
    from PIL import Image

    problems: list[Problem] = []
    if dataset is None:
        from terravl.datasets import composites as comp

        if data_root is None:
            raise InputError("dataset", "give a grounding dataset, or the shared data folder for the composite "
                                        "benchmark")
        items = comp.benchmark(data_root, n or comp.BENCHMARK_SIZE, comp.BENCHMARK_SEED if seed is None else seed)
        about = {"dataset": "composites", "splits": comp.BENCHMARK_SPLITS, "n": len(items),
                 "seed": comp.BENCHMARK_SEED if seed is None else seed}
    else:
        reader = open_grounding_dataset(dataset)
        records = [r for r in reader.records if split is None or r.split == split]
        problems += [Problem(p.path, p.error) for p in reader.problems]
        items = records
        about = {"dataset": str(dataset), "format": reader.format, "split": split, "n": len(items)}
    if limit:
        items = items[:limit]
        about["n"] = len(items)
    scores: dict = {}
    shown: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="terravl-ground-eval-") as tmp:
        tmp = Path(tmp)
        image_file = tmp / "composite.png"
        for name, method in methods.items():
            total, by_kind, started = Scores(), {}, time.perf_counter()
            for i, item in enumerate(items):
                if dataset is None:
                    Image.fromarray(item.image).save(image_file)
                    path, expression, target, target_box = image_file, item.expression, item.mask, item.box
                else:
                    path, expression = item.image, item.expression
                    target, target_box = None, item.box
                try:
                    pred, pred_box = _predict(path, expression, method, tmp / "out")
                    if dataset is not None and item.has_mask:
                        from terravl.datasets.rrsis import decode_mask

                        target = decode_mask(item, *pred.shape)
                except InputError as exc:
                    if name == next(iter(methods)):
                        problems.append(Problem(str(path), exc.message, i))
                    continue
                total.add(pred, target, pred_box, target_box)
                if dataset is None:
                    by_kind.setdefault(item.kind, Scores()).add(pred, target, pred_box, target_box)
                    if examples is not None and name == next(iter(methods)) and len(shown.get(item.kind, [])) < 3:
                        shown.setdefault(item.kind, []).append((item, pred))
                if log and (i + 1) % 100 == 0:
                    log(f"{name}: {i + 1}/{len(items)}")
            scores[name] = {**total.summary(), "seconds": time.perf_counter() - started}
            if by_kind:
                scores[name]["kinds"] = {k: s.summary() for k, s in sorted(by_kind.items())}
    result = {**about, "scores": scores, "problems": [p.to_dict() for p in problems]}
    if examples is not None and shown:
        result["examples"] = {kind: str(example_panel(Path(examples) / f"ground-{kind}.png", rows,
                                                      next(iter(methods))))
                              for kind, rows in shown.items()}
    return result


def example_panel(path: Path, rows: list, method: str) -> Path:
    """One PNG: each composite with the target outlined in white and the answer tinted red, its expression and
    IoU written under it."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    tiles = []
    for item, pred in rows:
        img = item.image.astype(np.float32)
        img[pred] = 0.45 * img[pred] + 0.55 * np.array([230, 57, 70], np.float32)
        edge = item.mask & ~ndimage.binary_erosion(item.mask, iterations=2)
        img[edge] = 255
        union = (pred | item.mask).sum()
        iou = (pred & item.mask).sum() / union if union else 0.0
        canvas = Image.new("RGB", (item.image.shape[1], item.image.shape[0] + 46), "white")
        canvas.paste(Image.fromarray(img.astype(np.uint8)), (0, 0))
        draw = ImageDraw.Draw(canvas)
        words, lines = item.expression.split(), [""]
        for w in words:
            if len(lines[-1]) + len(w) + 1 > 36 and lines[-1]:
                lines.append("")
            lines[-1] = (lines[-1] + " " + w).strip()
        text = "\n".join(lines[:2] + ([f"{method}: IoU {iou:.2f}"]))
        draw.multiline_text((3, item.image.shape[0] + 2), text, fill=(0, 0, 0), spacing=1)
        tiles.append(np.asarray(canvas))
    gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    strip = np.concatenate(sum(([t, gap] for t in tiles), [])[:-1], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(path)
    return path
