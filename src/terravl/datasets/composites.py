"""Referring-segmentation composites: scenes of other classes placed as regions inside a host scene, with an
expression that refers to one region and that region's mask as the target.

Why composites: no referring-segmentation set ships with TerraVL's data, but two captioned scene sets do (RSICD on
AID, UCM-Captions on UC Merced). A region cut from a scene of class B into a scene of class A is an object whose
class, captions, size and position are all known, so an expression can name it in three ways:

* ``class``: its class phrase — "the storage tanks", "a dense residential area";
* ``caption``: one of its scene's own captions — "many buildings and green trees are around a playground";
* ``spatial``: its class phrase qualified by where or how large it is — "the beach in the top right", "the larger
  of the two parking lots", "the forest on the left" (when two regions share a class, only the qualifier tells).

Regions are rectangles, ellipses or random polygons of varied size (a fifth to three fifths of the side), aspect and
position, filled with a random crop of the donor scene. Host and donors come from the same dataset (one sensor and
scale per composite) and have different classes, except the two regions of a pair.

Training composites come from the ``train`` splits only; the benchmark (:func:`benchmark`) is built with a fixed
seed from the held-apart images only: ``rsicd_aid`` test and ``ucm_captions`` val.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from terravl.datasets.class_names import class_phrase

SIZE = 224
KINDS = ("caption", "class", "spatial")
TRAIN_SPLITS = {"rsicd_aid": "train", "ucm_captions": "train"}
BENCHMARK_SPLITS = {"rsicd_aid": "test", "ucm_captions": "val"}
DATASET_FILES = {"rsicd_aid": "rsicd_aid/dataset_rsicd_aid.json", "ucm_captions": "ucm_captions/dataset_ucm_captions.json"}
BENCHMARK_SEED = 20260516
BENCHMARK_SIZE = 600

_AREA_WORDS = {"residential", "industrial", "commercial", "agricultural", "parking", "center", "chaparral", "bare land",
               "resort", "school", "square"}
_POSITION_TEXT = {"top-left": "top left", "top-right": "top right", "bottom-left": "bottom left",
                  "bottom-right": "bottom right", "central": "centre", "top": "top", "bottom": "bottom",
                  "left": "left", "right": "right"}


@dataclass(frozen=True)
class Scene:
    """One captioned scene that can be a host or a donor."""

    path: Path
    label: str          # readable class phrase
    captions: tuple[str, ...]
    dataset: str


@dataclass
class Composite:
    """A composite image, the expression and its target mask (all False for a negative: nothing matches)."""

    image: np.ndarray               # (S, S, 3) uint8
    mask: np.ndarray                # (S, S) bool
    expression: str
    kind: str                       # caption | class | spatial
    target: str                     # the class the expression refers to
    host: str
    dataset: str
    negative: bool = False
    regions: list[dict] = field(default_factory=list)

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) of the target mask, exclusive ends, or None when empty."""
        return mask_box(self.mask)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def noun(label: str) -> str:
    """A class phrase as a noun: "dense residential" → "dense residential area", "beach" stays."""
    last = label.split()[-1] if label else label
    return f"{label} area" if last in _AREA_WORDS or label in _AREA_WORDS else label


def plural(label: str) -> str:
    word = noun(label)
    if word.endswith("s"):
        return word
    if word.endswith(("ch", "sh", "x")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def load_scenes(data_root: str | Path, splits: dict[str, str]) -> list[Scene]:
    """The scenes of each dataset's split (``{"rsicd_aid": "train", …}``) under ``data_root`` (shared/data)."""
    from terravl.datasets.karpathy import KarpathyCaptions

    scenes = []
    for name, split in splits.items():
        reader = KarpathyCaptions(Path(data_root) / DATASET_FILES[name], split=split)
        for r in reader:
            if r.path is not None and r.label and r.captions:
                scenes.append(Scene(Path(r.path), class_phrase(r.label), tuple(r.captions), name))
    return scenes


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))


def _shape_mask(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A rectangle, an ellipse or a random star-shaped polygon filling a width × height box."""
    from PIL import Image, ImageDraw

    kind = rng.choice(["rect", "ellipse", "polygon"], p=[0.35, 0.3, 0.35])
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    if kind == "rect":
        draw.rectangle([0, 0, width - 1, height - 1], fill=1)
    elif kind == "ellipse":
        draw.ellipse([0, 0, width - 1, height - 1], fill=1)
    else:
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.6, 1.0, n)
        xs = (width - 1) / 2 * (1 + radii * np.cos(angles))
        ys = (height - 1) / 2 * (1 + radii * np.sin(angles))
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=1)
    return np.asarray(img, dtype=bool)


def _position(mask: np.ndarray) -> str:
    from terravl.tasks.change_regions import position_words

    rows, cols = np.nonzero(mask)
    return _POSITION_TEXT[position_words(cols.mean(), rows.mean(), mask.shape[1], mask.shape[0])]


class CompositeMaker:
    """Draws composites from ``scenes`` (one dataset per composite); ``negative_rate`` of them name a class that
    is not in the picture and have an empty target."""

    def __init__(self, scenes: list[Scene], size: int = SIZE, negative_rate: float = 0.0):
        self.size = size
        self.negative_rate = negative_rate
        self.by_dataset: dict[str, dict[str, list[Scene]]] = {}
        for s in scenes:
            self.by_dataset.setdefault(s.dataset, {}).setdefault(s.label, []).append(s)
        self.datasets = sorted(self.by_dataset)
        if not self.datasets:
            raise ValueError("no scenes to build composites from")

    def _place(self, rng, canvas: np.ndarray, taken: np.ndarray, scene: Scene, scale: tuple[float, float]
               ) -> np.ndarray | None:
        s = self.size
        for _ in range(20):
            side = rng.uniform(*scale) * s
            aspect = rng.uniform(0.6, 1.6)
            w = int(np.clip(side * np.sqrt(aspect), 24, s - 4))
            h = int(np.clip(side / np.sqrt(aspect), 24, s - 4))
            x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
            shape = _shape_mask(rng, w, h)
            if (taken[y:y + h, x:x + w] & shape).sum() > 0.02 * shape.sum():
                continue
            donor = _load_rgb(scene.path)
            dh, dw = donor.shape[:2]
            crop = rng.uniform(0.5, 1.0)
            cw, ch = max(8, int(dw * crop)), max(8, int(dh * crop))
            cx, cy = int(rng.integers(0, dw - cw + 1)), int(rng.integers(0, dh - ch + 1))
            patch = _resize(donor[cy:cy + ch, cx:cx + cw], w, h)
            region = np.zeros((s, s), dtype=bool)
            region[y:y + h, x:x + w] = shape
            canvas[region] = patch[shape]
            taken |= region
            return region
        return None

    def make(self, rng: np.random.Generator, kind: str | None = None) -> Composite:
        """One composite; ``kind`` (caption, class, spatial) or a random one."""
        while True:
            made = self._try(rng, kind or str(rng.choice(KINDS)))
            if made is not None:
                return made

    def _try(self, rng, kind: str) -> Composite | None:
        dataset = self.datasets[int(rng.integers(len(self.datasets)))]
        classes = self.by_dataset[dataset]
        names = sorted(classes)
        host_label = names[int(rng.integers(len(names)))]
        host = classes[host_label][int(rng.integers(len(classes[host_label])))]
        canvas = _resize(_load_rgb(host.path), self.size, self.size).copy()
        taken = np.zeros((self.size, self.size), dtype=bool)
        others = [n for n in names if n != host_label]
        order = rng.permutation(len(others))
        pair = kind == "spatial" and rng.random() < 0.5
        n_regions = int(rng.integers(1, 3)) if not pair else int(rng.integers(0, 2))
        regions: list[tuple[Scene, np.ndarray]] = []
        target_label = others[order[0]]
        if pair:
            members = classes[target_label]
            if len(members) < 2:
                return None
            picks = rng.choice(len(members), 2, replace=False)
            big = self._place(rng, canvas, taken, members[picks[0]], (0.4, 0.6))
            small = self._place(rng, canvas, taken, members[picks[1]], (0.2, 0.3))
            if big is None or small is None:
                return None
            regions += [(members[picks[0]], big), (members[picks[1]], small)]
            extra = [others[order[1]]] if n_regions else []
        else:
            extra = [others[i] for i in order[:n_regions + 1]]
        for label in extra:
            members = classes[label]
            scene = members[int(rng.integers(len(members)))]
            region = self._place(rng, canvas, taken, scene, (0.25, 0.6))
            if region is None:
                return None
            regions.append((scene, region))
        later = np.zeros_like(taken)
        for i in range(len(regions) - 1, -1, -1):  # what each region shows: later regions may cover a little of it
            scene, region = regions[i]
            visible = region & ~later
            if visible.sum() < 0.7 * region.sum():  # mostly hidden: not a region an expression can name
                return None
            regions[i] = (scene, visible)
            later |= region
        present = {host_label} | {s.label for s, _ in regions}
        info = [{"class": s.label, "box": mask_box(m)} for s, m in regions]
        if self.negative_rate and rng.random() < self.negative_rate:
            absent = [n for n in names if n not in present and not _overlaps(n, present)]
            if not absent:
                return None
            label = absent[int(rng.integers(len(absent)))]
            text = _class_text(rng, label)
            return Composite(canvas, np.zeros_like(taken), text, "class", label, host_label, dataset, True, info)
        if pair:
            scene, mask = regions[0] if rng.random() < 0.5 else regions[1]
            text = _pair_text(rng, scene.label, mask, regions[0][1], regions[1][1])
        else:
            scene, mask = regions[0]
            if kind == "caption":
                text = scene.captions[int(rng.integers(len(scene.captions)))]
            elif kind == "class":
                text = _class_text(rng, scene.label)
            else:
                text = f"the {noun(scene.label)} in the {_position(mask)}"
        return Composite(canvas, mask.copy(), text, kind, scene.label, host_label, dataset, False, info)


def _overlaps(label: str, present: set[str]) -> bool:
    words = set(label.split())
    return any(words & set(p.split()) for p in present)


def _class_text(rng, label: str) -> str:
    templates = ("the {}", "{}", "the {} in the image", "find the {}", "a {}")
    return templates[int(rng.integers(len(templates)))].format(noun(label))


def _pair_text(rng, label: str, mask: np.ndarray, first: np.ndarray, second: np.ndarray) -> str:
    """"the larger/smaller of the two …", or the side that tells them apart."""
    other = second if mask is first else first
    if rng.random() < 0.5:
        larger = mask.sum() > other.sum()
        return f"the {'larger' if larger else 'smaller'} of the two {plural(label)}"
    (r0, c0), (r1, c1) = (np.argwhere(m).mean(axis=0) for m in (mask, other))
    if abs(c0 - c1) >= abs(r0 - r1):
        side = "left" if c0 < c1 else "right"
    else:
        side = "top" if r0 < r1 else "bottom"
    word = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}[side]
    return f"the {noun(label)} {word}"


def composites(scenes: list[Scene], n: int, seed: int, size: int = SIZE, negative_rate: float = 0.0,
               balanced: bool = True) -> list[Composite]:
    """``n`` composites drawn with ``seed`` (kinds in turn when ``balanced``)."""
    maker = CompositeMaker(scenes, size, negative_rate)
    rng = np.random.default_rng(seed)
    return [maker.make(rng, KINDS[i % len(KINDS)] if balanced else None) for i in range(n)]


def benchmark(data_root: str | Path, n: int = BENCHMARK_SIZE, seed: int = BENCHMARK_SEED) -> list[Composite]:
    """The fixed composite benchmark: ``n`` composites (a third of each kind) from rsicd_aid test and
    ucm_captions val only, with ``seed``: the same list on every machine."""
    return composites(load_scenes(data_root, BENCHMARK_SPLITS), n, seed)
