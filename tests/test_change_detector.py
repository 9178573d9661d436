"""TerraVL's trained change detector: the predict contract (shapes, range, padding, statelessness), files,
the synthetic pair generator's masks, training end to end through the CLI, and the shipped weights on real
imagery."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from fakedata import write_karpathy
from terravl.errors import InputError
from terravl.models.change_detector import (DEFAULT_CHANGE_DETECTOR, ChangeDetector, WeightsNotFoundError,
                                            load_change_detector)
from terravl.train.change_synth import PairSynthesizer, SynthSettings

SAMPLES = Path(__file__).resolve().parent.parent / "src" / "terravl" / "samples"
TINY = dict(widths=[8, 16], decoder=8)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _textured_scenes(n: int = 6, size: int = 48) -> np.ndarray:
    """Scenes with smooth texture, so that a region moved within one scene really changes its pixels."""
    rng = np.random.default_rng(1)
    noise = rng.random((n, size, size, 3)).astype(np.float32)
    smooth = ndimage.uniform_filter(noise, size=(1, 5, 5, 1))
    return (smooth * 255).astype(np.uint8)


def test_predict_shapes_range_and_any_size():
    det = ChangeDetector.build(**TINY)
    for h, w in [(16, 16), (37, 50), (100, 23)]:
        p = det.predict(_rgb(h, w, 1), _rgb(h, w, 2))
        assert p.shape == (h, w) and p.dtype == np.float32
        assert np.all((p >= 0) & (p <= 1)) and np.isfinite(p).all()
    out = det.predict_batch([_rgb(20, 30), _rgb(40, 17), _rgb(20, 30, 5)], [_rgb(20, 30, 3), _rgb(40, 17, 4),
                                                                            _rgb(20, 30, 6)])
    assert [o.shape for o in out] == [(20, 30), (40, 17), (20, 30)]
    assert np.allclose(out[0], det.predict(_rgb(20, 30), _rgb(20, 30, 3)), atol=1e-5)  # batching changes nothing
    assert isinstance(det.tile_size, int) and isinstance(det.context, int) and det.context < det.tile_size


def test_predict_refuses_bad_input():
    det = ChangeDetector.build(**TINY)
    with pytest.raises(InputError, match="differs"):
        det.predict(_rgb(20, 20), _rgb(20, 21))
    with pytest.raises(InputError, match="smaller"):
        det.predict(_rgb(8, 40), _rgb(8, 40))
    with pytest.raises(InputError, match="RGB"):
        det.predict(np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8))
    with pytest.raises(InputError):
        det.predict_batch([_rgb(20, 20)], [])


def test_predict_is_stateless_across_calls_and_threads():
    det = ChangeDetector.build(**TINY)
    pairs = [(_rgb(32, 40, i), _rgb(32, 40, i + 10)) for i in range(4)]
    first = [det.predict(a, b) for a, b in pairs]
    with ThreadPoolExecutor(4) as pool:
        again = list(pool.map(lambda ab: det.predict(*ab), pairs * 3))
    for k, p in enumerate(again):
        assert np.allclose(p, first[k % 4], atol=1e-6)
    assert not np.allclose(first[0], first[1])  # the outputs do depend on the input


def test_save_load_round_trip_and_missing(tmp_path):
    det = ChangeDetector.build(**TINY)
    folder = det.save(tmp_path / "m", {"steps": 7})
    again = ChangeDetector.load(folder)
    a, b = _rgb(40, 40, 1), _rgb(40, 40, 2)
    assert np.array_equal(det.predict(a, b), again.predict(a, b))
    assert again.arch.widths == [8, 16] and again.training["steps"] == 7
    assert np.array_equal(load_change_detector(folder).predict(a, b), det.predict(a, b))
    with pytest.raises(WeightsNotFoundError):
        load_change_detector(tmp_path / "nowhere")
    with pytest.raises(WeightsNotFoundError, match="train change-detector"):
        load_change_detector("no-such-detector")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "change_detector.json").write_text("{\"widths\": [8, 16], \"decoder\": 8}")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="unreadable"):
        ChangeDetector.load(tmp_path / "bad")


def _clean(**changes) -> SynthSettings:
    """Synthesis without the nuisances, so that every changed pixel is a synthesised change."""
    base = dict(crop=32, photometric=0.0, max_shift=0, p_jpeg=0.0, p_blur=0.0, p_same_paste=0.0, p_no_change=0.0,
                min_region=6)
    return SynthSettings(**{**base, **changes})


def test_synthetic_masks_are_where_pixels_changed():
    rng = np.random.default_rng(0)
    synth = PairSynthesizer(_textured_scenes(), _clean(p_buildings=0.0))
    changed = 0
    for _ in range(20):
        before, after, mask = synth.pair(rng)
        assert before.shape == after.shape == (32, 32, 3) and mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1}
        diff = np.any(before != after, axis=2)
        assert not np.any(diff & (mask == 0))              # nothing changed outside the mask
        if mask.any():
            changed += 1
            assert diff[mask > 0].mean() > 0.5             # and the mask's pixels did change
    assert changed >= 15

    roofs = PairSynthesizer(_textured_scenes(), _clean(p_buildings=1.0, p_after=1.0))
    for _ in range(10):
        before, after, mask = roofs.pair(rng)
        outside = np.any(before != after, axis=2) & (mask == 0)
        dark, light = after[outside].astype(float), before[outside].astype(float)
        assert np.all(dark <= 0.7 * light + 1)             # outside the roofs only their (unlabelled) shadows

    still = PairSynthesizer(_textured_scenes(), _clean(p_no_change=1.0))
    before, after, mask = still.pair(rng)
    assert not mask.any() and np.array_equal(before, after)


def test_land_cover_changes_are_unlabelled():
    rng = np.random.default_rng(4)
    synth = PairSynthesizer(_textured_scenes(), _clean(p_no_change=1.0, p_landcover=1.0, p_whole_scene=1.0),
                            landcover=np.array([2, 3]))
    before, after, mask = synth.pair(rng)
    assert not mask.any() and np.any(before != after, axis=2).mean() > 0.5


def test_nuisances_change_pixels_but_not_the_mask():
    rng = np.random.default_rng(3)
    synth = PairSynthesizer(_textured_scenes(), SynthSettings(crop=32, p_no_change=1.0, p_same_paste=0.0))
    before, after, mask = synth.pair(rng)
    assert not mask.any() and not np.array_equal(before, after)


def test_train_change_detector_cli_end_to_end(tmp_path, capsys):
    from terravl.cli.main import main

    data = write_karpathy(tmp_path / "data" / "d.json", n_train=8, n_test=4)
    out = tmp_path / "run"
    args = ["train", "change-detector", "--data", data, "--out", out, "--device", "cpu", "--threads", "1",
            "--max-steps", "3", "--batch-size", "2", "--format", "json"]
    for key, value in {"steps_per_epoch": 2, "cache_size": 40, "crop": 32, "val_pairs": 4, "widths": "[8, 16]",
                       "decoder": 8, "warmup_steps": 1, "progress": "false", "min_region": 6}.items():
        args += ["--set", f"{key}={value}"]
    code = main(list(map(str, args)))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["steps"] == 3 and result["best_epoch"]["epoch"] in (1, 2)
    assert "val_F1" in result["best_epoch"]
    assert result["data"]["datasets"][0]["train_images"] == 8
    assert result["data"]["datasets"][0]["validation_images"] == 4
    det = load_change_detector(out / "model")
    assert det.arch.widths == [8, 16] and det.predict(_rgb(33, 35), _rgb(33, 35, 1)).shape == (33, 35)
    training = json.loads((out / "model" / "training.json").read_text())
    assert training["device"] == "cpu" and training["config"]["crop"] == 32

    code = main(list(map(str, args[:-2] + ["--set", "max_images=0", "--set", "nonsense=1"])))
    assert code == 2


def test_shipped_weights_detect_an_obvious_pasted_change():
    """A new building-like block on a real NAIP crop, on a second date that is also brighter: found, and the
    brightness alone is not change."""
    det = load_change_detector(DEFAULT_CHANGE_DETECTOR)
    assert det.n_params() < 1_000_000
    with rasterio.open(SAMPLES / "naip_20090818.tif") as src:
        scene = np.moveaxis(src.read((1, 2, 3)), 0, -1)
    before = np.ascontiguousarray(scene[100:228, 100:228])
    after = before.copy()
    after[40:64, 30:70] = (205, 200, 195)                   # a new light roof
    after[64:68, 32:72] = (after[64:68, 32:72] * 0.5).astype(np.uint8)  # and its shadow
    after = np.clip(after.astype(np.int16) + 12, 0, 255).astype(np.uint8)
    truth = np.zeros(before.shape[:2], bool)
    truth[40:64, 30:70] = True
    prob = det.predict(before, after)
    assert prob[truth].mean() > prob[~truth].mean() + 0.3
    pred = prob >= 0.5
    assert (pred & truth).sum() / max(1, (pred | truth).sum()) > 0.4   # IoU, chance is about the changed fraction
    assert det.predict(before, np.clip(before.astype(np.int16) + 12, 0, 255).astype(np.uint8)).mean() < 0.2


def test_tower_backbone_is_frozen_and_not_saved(tmp_path):
    """backbone=terravl-default-v2: that encoder's frozen CNN tower encodes; only fusion + decoder train, and the
    folder holds only those (the tower comes back from the encoder by name, with its own normalisation). The v3
    default's EfficientNet is refused by name, with the reason."""
    import torch
    from safetensors.torch import load_file

    det = ChangeDetector.build(backbone="terravl-default-v2", tower_stages=2, decoder=8)
    assert det.arch.normalise == "dataset" and det.arch.widths == [32, 64]
    assert 0 < det.n_params(trainable=True) < det.n_params()
    tower_before = {k: v.clone() for k, v in det.net.stages.state_dict().items()}
    det.net.train()
    assert not det.net.stages.training and det.net.fuse.training  # tower BN statistics never re-estimated
    opt = torch.optim.SGD([p for p in det.net.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(2, 3, 32, 32)
    det.net(x, x.flip(-1)).mean().backward()
    opt.step()
    assert all(torch.equal(v, det.net.stages.state_dict()[k]) for k, v in tower_before.items())
    det.net.eval()
    for h, w in [(16, 16), (37, 50)]:
        p = det.predict(_rgb(h, w, 1), _rgb(h, w, 2))
        assert p.shape == (h, w) and np.all((p >= 0) & (p <= 1))
    folder = det.save(tmp_path / "tower")
    saved = load_file(str(folder / "model.safetensors"))
    assert saved and not any(k.startswith("stages.") for k in saved)
    again = load_change_detector(folder)
    assert again.arch == det.arch
    a, b = _rgb(40, 40, 3), _rgb(40, 40, 4)
    assert np.allclose(again.predict(a, b), det.predict(a, b), atol=1e-6)
    with pytest.raises(InputError, match="tower_stages"):
        ChangeDetector.build(backbone="terravl-default-v2", tower_stages=9)
    with pytest.raises(InputError, match="'terravl-default' has no TerraVL CNN image tower"):
        ChangeDetector.build(backbone="terravl-default", tower_stages=2)
