"""How :func:`terravl.tasks.ground` scores each pixel of a tile against an expression: the trained head
(``trained``, :mod:`terravl.models.grounder`) or the training-free baseline (``baseline``).

The baseline, step by step, and why:

1. the tile (resized to the tower's input) goes through the frozen CNN image tower; the last feature map, before
   pooling, goes through the tower's own linear head at every location (the head is linear, so these per-location
   embeddings average to the pooled image embedding the encoder was trained to match with text);
2. each location is compared with the expression *and* with the scene classes of AID and UC Merced (prompt
   ensembles; classes named in the expression left out) and the expression's softmax probability is kept — a raw
   cosine has no scale, a probability against the alternatives says "this looks more like the expression than like
   anything else" and lets the baseline say "nothing here" honestly;
3. the coarse map (1/16 of the input) is upsampled bilinearly and averaged within SLIC superpixels of the tile
   (scikit-image), so the answer follows the image's edges instead of the feature grid;
4. the threshold is automatic: Otsu's on the scene's histogram of probabilities, never below half the scene's best
   score, so a map with one clear peak keeps the peak and a flat map keeps little.

Both methods answer probabilities in [0, 1]. For the trained head (trained with expressions of absent classes) a
region counts as a match when its mean probability is at least :attr:`GroundMethod.floor` (0.5), else the answer
is empty, with the best score shown. The baseline cannot make that call: measured on composites, the best
probabilities of present and absent classes are distributed alike (medians 0.37 and 0.38), so it always answers
its best region and says so in the result's warnings.
"""

from __future__ import annotations

import numpy as np

from terravl.errors import InputError

HEAD_INPUT = 224
"""Side of the square every tile is resized to before the tower (a 150-256 px scene's scale in training)."""


def fill_invalid(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Nodata pixels painted with the valid pixels' mean colour: a black nodata border must not look like an
    object (asphalt, water) to the tower."""
    if valid.all():
        return rgb
    out = rgb.copy()
    if valid.any():
        out[~valid] = rgb[valid].reshape(-1, 3).mean(axis=0).astype(np.uint8)
    return out


def resize(rgb: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    if rgb.shape[0] == side and rgb.shape[1] == side:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((side, side), Image.BILINEAR))


def upsample(score: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (h, w) map resized to (height, width), bilinear, pixel centres aligned."""
    import torch
    from torch.nn import functional as F

    t = torch.from_numpy(np.ascontiguousarray(score, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


class GroundMethod:
    """Scores tiles: ``prepare(expression)`` once, then ``score(rgb, valid, state)`` per tile → (H, W) float32
    probabilities (NaN where invalid)."""

    name = "method"
    tile = 256
    """Core tile side (pixels of the raster) scored at a time; images up to :data:`SINGLE_PASS` are one tile."""
    context = 32
    """Margin read around each core tile so that objects cut by the tile edge are seen whole."""
    floor = 0.5
    warnings: list[str] = []

    def prepare(self, expression: str):
        raise NotImplementedError

    def score(self, rgb: np.ndarray, valid: np.ndarray, state) -> np.ndarray:
        raise NotImplementedError

    def threshold(self, hist: np.ndarray, edges: np.ndarray, best: float) -> float:
        return 0.5


class TrainedMethod(GroundMethod):
    """The trained head: its sigmoid probability, thresholded at the model's own threshold (chosen on validation
    composites when it was trained; 0.5 for older heads)."""

    name = "trained"

    def __init__(self, grounder):
        self.grounder = grounder
        self.warnings = list(grounder.warnings)

    def threshold(self, hist: np.ndarray, edges: np.ndarray, best: float) -> float:
        return float(self.grounder.arch.threshold)

    def prepare(self, expression: str):
        return self.grounder.encoder.encode_texts([expression])[0]

    def score(self, rgb: np.ndarray, valid: np.ndarray, state) -> np.ndarray:
        side = self.grounder.arch.resolution
        h, w = rgb.shape[:2]
        prob = self.grounder.predict(resize(fill_invalid(rgb, valid), side)[None], state)[0]
        out = upsample(prob, h, w)
        out[~valid] = np.nan
        return out


DISTRACTOR_CLASSES = ("aid", "ucm")


class BaselineMethod(GroundMethod):
    """Dense image–text similarity of the frozen tower, calibrated against scene classes, refined with SLIC
    superpixels, thresholded by Otsu (see the module's docstring)."""

    name = "baseline"
    floor = 0.0
    warnings = ["the training-free baseline cannot tell whether the thing is in the picture at all (its best "
                "scores for absent and present classes are alike): its answer is the best-scoring region"]

    def __init__(self, encoder, superpixels: int = 80):
        from terravl.models.grounder import Tower

        self.tower = Tower(encoder)
        self.encoder = encoder
        self.superpixels = superpixels
        self._classes = None

    def _class_bank(self):
        if self._classes is None:
            from terravl.datasets.class_names import BUILTIN_CLASSES, class_phrase
            from terravl.eval.zeroshot import class_embeddings

            names = sorted({class_phrase(c) for key in DISTRACTOR_CLASSES for c in BUILTIN_CLASSES[key]})
            self._classes = (names, class_embeddings(self.encoder, names))
        return self._classes

    def prepare(self, expression: str):
        names, bank = self._class_bank()
        words = set(expression.lower().replace(",", " ").split())
        # a class the expression names is not an alternative to it ("the beach" against "beach")
        keep = [i for i, n in enumerate(names) if not (set(n.split()) & words) and
                not any(w.rstrip("s") == n.rstrip("s") for w in words)]
        query = self.encoder.encode_texts([expression])[0]
        return np.concatenate([query[None], bank[keep]]).astype(np.float32)

    def coarse(self, rgb: np.ndarray, state: np.ndarray) -> np.ndarray:
        """(h, w) probability of the expression against the classes at each location of the last feature map."""
        import torch

        pixels = self.tower.normalise(resize(rgb, HEAD_INPUT)[None])
        _, top = self.tower.maps(pixels)
        with torch.inference_mode():
            dense = self.tower.dense(top)[0]                                   # (D, h, w)
            texts = torch.from_numpy(state).to(dense.device)
            logits = torch.einsum("dhw,kd->khw", dense, texts) * self.encoder.logit_scale
            return torch.softmax(logits, dim=0)[0].float().cpu().numpy()

    def score(self, rgb: np.ndarray, valid: np.ndarray, state) -> np.ndarray:
        h, w = rgb.shape[:2]
        rgb = fill_invalid(rgb, valid)
        prob = upsample(self.coarse(rgb, state), h, w)
        out = superpixel_mean(rgb, prob, self.superpixels)
        out[~valid] = np.nan
        return out

    def threshold(self, hist: np.ndarray, edges: np.ndarray, best: float) -> float:
        # just under the best score at most: a flat map (nothing stands out) still gives its best region
        return min(max(otsu(hist, edges), 0.5 * best), best * 0.999)


def superpixel_mean(rgb: np.ndarray, score: np.ndarray, segments: int) -> np.ndarray:
    """``score`` averaged within SLIC superpixels of ``rgb`` (computed at most 256 px on a side, then scaled)."""
    from skimage.segmentation import slic

    h, w = score.shape
    step = max(1, int(np.ceil(max(h, w) / 256)))
    small = rgb[::step, ::step]
    labels = slic(small, n_segments=segments, compactness=10, start_label=0, channel_axis=-1)
    if step > 1:
        labels = np.repeat(np.repeat(labels, step, axis=0), step, axis=1)[:h, :w]
    sums = np.bincount(labels.ravel(), weights=score.ravel().astype(np.float64))
    counts = np.bincount(labels.ravel())
    return (sums / np.maximum(counts, 1))[labels].astype(np.float32)


def otsu(hist: np.ndarray, edges: np.ndarray) -> float:
    """Otsu's threshold of a histogram (bins between ``edges``)."""
    from skimage.filters import threshold_otsu

    centres = (edges[:-1] + edges[1:]) / 2
    if np.count_nonzero(hist) < 2:
        return float(centres[np.argmax(hist)])
    return float(threshold_otsu(hist=(hist.astype(np.float64), centres)))


def make_method(method: str, encoder=None, grounder=None) -> GroundMethod:
    """``auto``/``trained`` (the shipped head, or ``grounder``), or ``baseline`` (needs only the encoder)."""
    if isinstance(method, GroundMethod):
        return method
    if method not in ("auto", "trained", "baseline"):
        raise InputError("method", f"unknown grounding method {method!r}; choose auto, trained or baseline")
    if method == "baseline":
        if encoder is None:
            import terravl.models as m
            from terravl.models.grounder import GrounderArch

            encoder = m.load(GrounderArch.encoder)  # a CNN tower's feature maps (terravl-default-v2)
        return BaselineMethod(encoder)
    if grounder is None:
        from terravl.models.grounder import load_grounder
        from terravl.models.registry import WeightsNotFoundError

        try:
            grounder = load_grounder(encoder=encoder)
        except WeightsNotFoundError:
            if method == "trained":
                raise
            fallback = make_method("baseline", encoder=encoder)
            fallback.warnings = ["the trained grounder (terravl-grounder) is not installed: the training-free "
                                 "baseline answered", *fallback.warnings]
            return fallback
    return TrainedMethod(grounder)


class SamRefiner:
    """A promptable segmenter of the SAM family (transformers' ``SamModel``) from a folder on disk: each instance
    the trained head finds is given to it as a box prompt, and its mask replaces the head's outline inside that box.
    Never downloaded: only a local folder (``config.json`` + weights) is read."""

    MEAN = np.array([123.675, 116.28, 103.53], np.float32)
    STD = np.array([58.395, 57.12, 57.375], np.float32)

    def __init__(self, folder):
        from pathlib import Path

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise InputError("refiner", f"{folder} is not a SAM model folder (config.json and weights, as "
                                        "save_pretrained writes them); TerraVL never downloads one")
        try:
            from transformers import SamModel
        except ImportError:  # an older transformers without SAM
            raise InputError("refiner", "this transformers has no SamModel; upgrade it to use --refiner") from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # stderr is for TerraVL's own messages
        try:
            self.model = SamModel.from_pretrained(str(folder), local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise InputError("refiner", f"{folder}: not a loadable SAM model ({str(exc).splitlines()[0]})") from None
        self.side = int(self.model.config.vision_config.image_size)

    def masks(self, rgb: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
        """(N, H, W) probabilities for ``boxes`` (x0, y0, x1, y1 in ``rgb``'s pixels)."""
        import torch
        from torch.nn import functional as F

        h, w = rgb.shape[:2]
        pixels = (resize(rgb, self.side).astype(np.float32) - self.MEAN) / self.STD
        sx, sy = self.side / w, self.side / h
        prompts = torch.tensor([[[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes]], dtype=torch.float32)
        with torch.inference_mode():
            out = self.model(pixel_values=torch.from_numpy(pixels).permute(2, 0, 1)[None], input_boxes=prompts,
                             multimask_output=False)
            logits = out.pred_masks[0, :, 0]                                    # (N, h', w')
            up = F.interpolate(logits[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return torch.sigmoid(up).numpy()


class RefinedMethod(GroundMethod):
    """The trained head, its instances' outlines redrawn by a SAM-family refiner (box prompts, tile by tile)."""

    def __init__(self, base: GroundMethod, refiner: SamRefiner, min_pixels: int = 16):
        if not isinstance(base, TrainedMethod):
            raise InputError("refiner", "a refiner redraws the trained head's instances: use it with method "
                                        "trained (or auto with the grounder installed)")
        self.base, self.refiner, self.min_pixels = base, refiner, min_pixels
        self.name = f"{base.name}+refiner"
        self.tile, self.context, self.floor = base.tile, base.context, base.floor
        self.warnings = list(base.warnings)

    def prepare(self, expression: str):
        return self.base.prepare(expression)

    def score(self, rgb: np.ndarray, valid: np.ndarray, state) -> np.ndarray:
        from scipy import ndimage

        score = self.base.score(rgb, valid, state)
        labels, count = ndimage.label(np.nan_to_num(score) > 0.5, structure=np.ones((3, 3), bool))
        boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for i, s in enumerate(ndimage.find_objects(labels))
                 if (labels[s] == i + 1).sum() >= self.min_pixels]
        if not boxes:
            return score
        out = score.copy()
        for (x0, y0, x1, y1), prob in zip(boxes, self.refiner.masks(fill_invalid(rgb, valid), boxes)):
            box = (slice(y0, y1), slice(x0, x1))
            inside = prob[box] > 0.5
            out[box] = np.where(inside, np.maximum(score[box], 0.501), np.minimum(score[box], 0.499))
        out[~valid] = np.nan
        return out
