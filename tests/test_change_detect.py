"""Per-tile change methods (trained wrapper, CVA, embedding distance) and the LEVIR-CD change-detection evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from terravl.errors import InputError
from terravl.eval.change_detection import change_scores, confusion_counts, evaluate_change_detection
from terravl.tasks.change_detect import (HIST_BINS, METHODS, ChangeMethod, CVAMethod, EmbeddingMethod, TrainedMethod,
                                        detect_arrays, make_method, otsu_threshold, piecewise_probability,
                                        score_histogram)


def _texture(seed: int, size: int = 128) -> np.ndarray:
    """A smooth random RGB texture (uint8): something like ground, with structure at several scales."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    layers = [gaussian_filter(rng.normal(size=(size, size, 3)), (s, s, 0)) * s for s in (1, 3, 8)]
    img = sum(layers)
    img = (img - img.mean()) / img.std()
    return np.clip(110 + 35 * img, 0, 255).astype(np.uint8)


def _pasted_pair(seed: int = 0, size: int = 128, box=(40, 40, 48)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """before, after (= before with a square of another scene pasted, plus mild noise) and the true mask."""
    rng = np.random.default_rng(seed)
    before = _texture(seed, size)
    other = np.clip(_texture(seed + 100, size).astype(np.int16) + 60, 0, 255).astype(np.uint8)
    after = before.copy()
    r, c, s = box
    after[r:r + s, c:c + s] = other[r:r + s, c:c + s]
    after = np.clip(after + rng.normal(0, 2, after.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((size, size), bool)
    truth[r:r + s, c:c + s] = True
    return before, after, truth


def _f1(mask: np.ndarray, truth: np.ndarray) -> float:
    return change_scores(confusion_counts(mask, truth))["f1"]


@pytest.fixture(scope="module")
def tiny_detector():
    from terravl.models.change_detector import ChangeDetector

    import torch

    torch.manual_seed(0)
    return ChangeDetector.build(widths=[4, 8], decoder=4)


# -- metrics -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_pooled_scores_match_sklearn(seed):
    from sklearn.metrics import accuracy_score, jaccard_score, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    preds = [rng.random((17, 23)) < rng.uniform(0.05, 0.6) for _ in range(4)]
    truths = [rng.random((17, 23)) < rng.uniform(0.05, 0.6) for _ in range(4)]
    totals = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for p, t in zip(preds, truths):
        for k, v in confusion_counts(p, t).items():
            totals[k] += v
    ours = change_scores(totals)
    y_pred = np.concatenate([p.ravel() for p in preds])
    y_true = np.concatenate([t.ravel() for t in truths])
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
    assert ours["precision"] == pytest.approx(p) and ours["recall"] == pytest.approx(r)
    assert ours["f1"] == pytest.approx(f)
    assert ours["iou"] == pytest.approx(jaccard_score(y_true, y_pred))
    assert ours["overall_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))


def test_confusion_counts_respect_valid_and_empty_denominators():
    pred = np.array([[True, True], [False, False]])
    true = np.array([[True, False], [True, False]])
    valid = np.array([[True, False], [True, True]])
    assert confusion_counts(pred, true, valid) == {"tp": 1, "fp": 0, "fn": 1, "tn": 1}
    nothing = change_scores(confusion_counts(np.zeros((3, 3), bool), np.zeros((3, 3), bool)))
    assert nothing["precision"] == nothing["recall"] == nothing["f1"] == nothing["iou"] == 0.0
    assert nothing["overall_accuracy"] == 1.0


# -- threshold and probability -----------------------------------------------------------------------------------

def test_otsu_threshold_splits_two_modes_and_honours_floor_and_degenerate_histograms():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.2, 0.03, 5000), rng.normal(0.7, 0.03, 1000)]).astype(np.float32)
    hist, edges = score_histogram(scores, (0.0, 1.0))
    assert hist.sum() == scores.size and len(edges) == HIST_BINS + 1
    t = otsu_threshold(hist, edges)
    assert (scores[:5000] > t).mean() < 0.01 and (scores[5000:] <= t).mean() < 0.01
    assert otsu_threshold(hist, edges, floor=0.65) == 0.65
    # nothing to split: no pixel, or every pixel in one bin → top of the range (no change)
    assert otsu_threshold(np.zeros(HIST_BINS), edges) == 1.0
    one = np.zeros(HIST_BINS)
    one[3] = 100
    assert otsu_threshold(one, edges) == 1.0
    # out-of-range and NaN scores: clipped into the end bins, NaN left out
    hist, _ = score_histogram(np.array([-1.0, 2.0, np.nan, 0.5]), (0.0, 1.0))
    assert hist.sum() == 3 and hist[0] == 1 and hist[-1] == 1


def test_probability_is_monotone_with_threshold_at_one_half():
    scores = np.array([0.0, 0.1, 0.3, 0.31, 0.9, 1.0, 5.0, np.nan], dtype=np.float32)
    p = piecewise_probability(scores, 0.3, (0.0, 1.0))
    assert p.dtype == np.float32 and p[2] == pytest.approx(0.5)
    assert p[0] == 0.0 and p[5] == 1.0 and p[6] == 1.0 and np.isnan(p[7])
    assert np.all(np.diff(p[:7]) >= 0)
    for method in (CVAMethod(), TrainedMethod(object())):
        assert method.probability(np.array([0.4, 0.5, 0.6], np.float32), 0.5)[1] == pytest.approx(0.5)
    # a threshold at the top of the range flags nothing
    assert not np.any(piecewise_probability(np.array([0.2, 1.0]), 1.0, (0.0, 1.0)) > 0.5)


# -- change vector analysis ---------------------------------------------------------------------------------------

def test_cva_finds_a_pasted_square():
    before, after, truth = _pasted_pair()
    prob, mask = detect_arrays(before, after, method="cva")
    assert prob.dtype == np.float32 and prob.shape == truth.shape and mask.dtype == bool
    assert np.nanmin(prob) >= 0 and np.nanmax(prob) <= 1
    assert _f1(mask, truth) > 0.8


def test_cva_ignores_a_global_brightness_and_contrast_change():
    before = _texture(3)
    after = np.clip(before.astype(np.float32) * 1.3 + 25, 0, 255).astype(np.uint8)  # brighter, more contrast
    after = np.clip(after + np.random.default_rng(1).normal(0, 2, after.shape), 0, 255).astype(np.uint8)
    _, mask = detect_arrays(before, after, method="cva")
    assert mask.mean() < 0.01
    # the same pair without the normalisation would be change everywhere: the test can fail
    raw = np.abs(after.astype(np.float32) - before).mean(axis=-1)
    assert (raw > 20).mean() > 0.5


def test_cva_invalid_pixels_are_nan_and_never_change():
    before, after, truth = _pasted_pair(seed=2)
    valid = np.ones(truth.shape, bool)
    valid[:, :20] = False                       # a nodata strip
    after[:, :20] = 0                           # …with fill values that differ between the dates
    method = make_method("cva")
    scores = method.scores(before, after, valid)
    assert np.isnan(scores[:, :20]).all() and np.isfinite(scores[:, 20:]).all()
    prob, mask = detect_arrays(before, after, valid, method=method)
    assert np.isnan(prob[:, :20]).all() and not mask[:, :20].any()
    assert _f1(mask, truth) > 0.8
    nothing = np.zeros(truth.shape, bool)
    prob, mask = detect_arrays(before, after, nothing, method=method)
    assert np.isnan(prob).all() and not mask.any()


def test_identical_dates_show_no_change():
    image = _texture(5)
    for name in ("cva",):
        _, mask = detect_arrays(image, image.copy(), method=name)
        assert not mask.any()


# -- embedding distance ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder():
    import terravl.models as m

    return m.load(m.DEFAULT_MODEL)


def test_embedding_finds_a_pasted_scene(encoder, samples):
    """Real scenes: a 64 px square of a Landsat scene pasted into a NAIP crop is found (coarse edges: a window)."""
    from terravl.io.raster import read_image

    naip = read_image(samples / "naip_20090818.tif").array[:192, :192]
    landsat = read_image(samples / "landsat7_rgb.tif").array[300:364, 300:364]
    after = naip.copy()
    after[64:128, 96:160] = landsat
    truth = np.zeros(naip.shape[:2], bool)
    truth[64:128, 96:160] = True
    method = make_method("embedding", encoder=encoder, window=32, stride=16)
    assert isinstance(method, ChangeMethod) and method.context == 16
    prob, mask = detect_arrays(naip, after, method=method)
    assert np.isfinite(prob).all() and _f1(mask, truth) > 0.6
    valid = np.ones(truth.shape, bool)
    valid[:40] = False
    scores = method.scores(naip, after, valid)
    assert np.isnan(scores[:40]).all() and np.isfinite(scores[40:]).all() and scores.dtype == np.float32


def test_embedding_windows_cover_every_pixel_of_odd_sizes():
    class Fake:
        """Embeds a window by its mean colour: enough to check the window bookkeeping."""

        def __init__(self):
            self.calls = 0

        def encode_images(self, crops, batch_size=32, progress=None):
            self.calls += 1
            v = np.array([np.r_[c.reshape(-1, 3).mean(0), 40.0] for c in crops], np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    fake = Fake()
    method = EmbeddingMethod(fake, window=16, stride=8, normalise=False)
    before = np.full((37, 29, 3), 100, np.uint8)
    after = before.copy()
    after[30:, 20:] = 250
    scores = method.scores(before, after, np.ones((37, 29), bool))
    assert fake.calls == 1 and np.isfinite(scores).all()
    assert scores[-1, -1] > 0 and scores[0, 0] == 0
    small = method.scores(before[:10, :12], after[:10, :12], np.ones((10, 12), bool))  # smaller than a window
    assert small.shape == (10, 12) and np.isfinite(small).all()


# -- trained wrapper and factory ---------------------------------------------------------------------------------

def test_trained_wrapper_passes_probabilities_through(tiny_detector):
    method = make_method("trained", detector=tiny_detector)
    assert isinstance(method, TrainedMethod) and isinstance(method, ChangeMethod)
    assert method.tile_size == tiny_detector.tile_size and method.context == tiny_detector.context
    assert method.threshold(np.ones(HIST_BINS), np.linspace(0, 1, HIST_BINS + 1)) == 0.5
    before, after, _ = _pasted_pair(size=64, box=(10, 10, 20))
    valid = np.ones((64, 64), bool)
    valid[:8] = False
    direct = tiny_detector.predict(before, after)
    prob, mask = detect_arrays(before, after, valid, method=method)
    assert np.isnan(prob[:8]).all() and not mask[:8].any()
    assert np.all((prob[8:] >= 0) & (prob[8:] <= 1))
    np.testing.assert_array_equal(mask, np.nan_to_num(prob) > 0.5)
    # all valid: exactly the detector's own probability, and the mask is probability > 0.5
    prob, mask = detect_arrays(before, after, method=method)
    np.testing.assert_allclose(prob, direct, atol=1e-6)
    np.testing.assert_array_equal(mask, direct > 0.5)


def test_make_method_and_detect_arrays_refuse_bad_input():
    assert METHODS == ("trained", "cva", "embedding")
    with pytest.raises(InputError) as err:
        make_method("magic")
    assert err.value.source == "method"
    image = _texture(0, 32)
    with pytest.raises(InputError, match="differs"):
        detect_arrays(image, image[:16], method="cva")
    with pytest.raises(InputError, match="uint8"):
        detect_arrays(image.astype(np.float32), image, method="cva")
    with pytest.raises(InputError, match="valid"):
        detect_arrays(image, image, np.ones((3, 3), bool), method="cva")


# -- evaluation --------------------------------------------------------------------------------------------------

def _write_levir_cd(root: Path, n: int = 3) -> Path:
    """A tiny LEVIR-CD folder: pasted squares as changes, one unchanged pair."""
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        before, after, truth = _pasted_pair(seed=i, size=64, box=(8 + 4 * i, 16, 24))
        if i == n - 1:
            after, truth = before.copy(), np.zeros_like(truth)
        name = f"test_{i}_0000_0000.png"
        Image.fromarray(before).save(root / "A" / name)
        Image.fromarray(after).save(root / "B" / name)
        Image.fromarray(truth.astype(np.uint8) * 255).save(root / "label" / name)
    return root


def test_evaluate_change_detection_pools_pixels_and_reports_bad_files(tmp_path):
    root = _write_levir_cd(tmp_path / "cd")
    result = evaluate_change_detection(root, methods=["cva"])
    assert result["pairs"] == 3 and result["problems"] == [] and result["pixels"] == 3 * 64 * 64
    cva = result["scores"]["cva"]
    assert cva["tp"] + cva["fn"] == result["changed_pixels"] > 0 and cva["f1"] > 0.7
    assert sum(cva[k] for k in ("tp", "fp", "fn", "tn")) == result["pixels"]
    (root / "B" / "test_1_0000_0000.png").write_bytes(b"not a png")               # corrupt after image
    (root / "label" / "test_0_0000_0000.png").unlink()                              # missing mask
    result = evaluate_change_detection(root, methods=["cva"])
    assert result["pairs"] == 1
    paths = " ".join(p["path"] for p in result["problems"])
    assert "B/test_1_0000_0000.png" in paths and "test_0_0000_0000.png" in paths
    with pytest.raises(InputError, match="unknown change method"):
        evaluate_change_detection(root, methods=["cva", "nope"])
    with pytest.raises(InputError, match="not a folder"):
        evaluate_change_detection(tmp_path / "missing", methods=["cva"])


def test_cli_change_detection_end_to_end(tmp_path, capsys, tiny_detector):
    from terravl.cli.main import main

    root = _write_levir_cd(tmp_path / "cd")
    Image.fromarray(np.zeros((64, 48), np.uint8)).save(root / "label" / "test_1_0000_0000.png")  # wrong size
    detector = tiny_detector.save(tmp_path / "detector")
    out = tmp_path / "res.json"
    code = main(["eval", "change-detection", "--dataset", str(root), "--methods", "trained,cva",
                 "--detector", str(detector), "--out", str(out), "--format", "json"])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert code == 0 and result["pairs"] == 2 and list(result["scores"]) == ["trained", "cva"]
    assert "label/test_1_0000_0000.png" in captured.err and "mask size" in captured.err
    assert json.loads(out.read_text())["scores"]["cva"]["f1"] == result["scores"]["cva"]["f1"]
    for name in ("trained", "cva"):
        assert set(result["scores"][name]) >= {"precision", "recall", "f1", "iou", "overall_accuracy"}
    code = main(["eval", "change-detection", "--dataset", str(root), "--methods", "cva"])
    table = capsys.readouterr().out
    assert code == 0 and "cva" in table and "F1" in table
    code = main(["eval", "change-detection", "--dataset", str(root), "--methods", "cva,bogus"])
    assert code == 2 and "bogus" in capsys.readouterr().err


def test_cli_change_detection_on_shared_levir_samples(shared_data, capsys):
    from terravl.cli.main import main

    folder = shared_data / "levir_cd_samples"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    code = main(["eval", "change-detection", "--dataset", str(folder), "--methods", "cva", "--format", "json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["pairs"] == 11 and result["problems"] == []
    assert result["pixels"] == 11 * 256 * 256
    cva = result["scores"]["cva"]
    assert 0 < cva["f1"] < 1 and cva["iou"] == pytest.approx(cva["f1"] / (2 - cva["f1"]))
