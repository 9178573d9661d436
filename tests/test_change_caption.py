"""``terravl train change-caption`` end to end on a fake LEVIR-CC written here: training through the CLI, the
saved change captioner describing pairs, its test-split predictions scored by ``terravl eval change``, and clear
errors for malformed datasets and for folders that are not change captioners."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from terravl.cli.main import main
from terravl.errors import InputError
from terravl.models.change_captioner import ChangeCaptioner, fuse, load_change_captioner
from terravl.train.change_caption import ChangeCaptionTrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SAME = "the scene is the same as before"
CORNERS = {"top left": (0, 0), "top right": (0, 32), "bottom left": (32, 0), "bottom right": (32, 32)}
TINY = dict(epochs=3, batch_size=4, threads=1, progress=False, n_embd=32, n_layer=1, n_head=2, hidden=64,
            views=2, vocab_min_frequency=1, warmup_steps=2, max_tokens=10, beams=1, lr=0.01, dropout=0.0,
            meteor=False)


def _scene(seed: int) -> np.ndarray:
    """A smooth random 64×64 'ground' image: what a before date looks like."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 200, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((64, 64), Image.BILINEAR))


def _with_building(scene: np.ndarray, corner: str) -> np.ndarray:
    y, x = CORNERS[corner]
    out = scene.copy()
    out[y + 6: y + 26, x + 6: x + 26] = (250, 250, 250)
    return out


def write_levir_cc(root: Path) -> Path:
    """12 pairs (6 train, 3 val, 3 test): changed ones gain a white square in a corner, unchanged ones repeat."""
    plan = [("train", "top left"), ("train", None), ("train", "bottom right"), ("train", None),
            ("train", "top right"), ("train", "bottom left"), ("val", "top left"), ("val", None),
            ("val", "bottom right"), ("test", "top right"), ("test", None), ("test", "bottom left")]
    images = []
    for i, (split, corner) in enumerate(plan):
        name = f"{split}_{i:06d}.png"
        before = _scene(i)
        after = before if corner is None else _with_building(before, corner)
        for side, array in (("A", before), ("B", after)):
            (root / "images" / split / side).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / "images" / split / side / name)
        text = SAME if corner is None else f"a building appears in the {corner}"
        sentences = [{"raw": f" {text} ."}, {"raw": text}, {"raw": text.capitalize()}, {"raw": f"{text} ."}]
        images.append({"filename": name, "filepath": split, "split": split, "imgid": i,
                       "changeflag": int(corner is not None), "sentences": sentences})
    (root / "LevirCCcaptions.json").write_text(json.dumps({"images": images}))
    return root


def _run(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _sets(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in ("--set", f"{k}={'null' if v is None else v}")]


def test_train_describe_predict_and_score_on_fake_levir_cc(tmp_path, tiny_model, capsys):
    data = write_levir_cc(tmp_path / "levir")
    run = tmp_path / "run"
    code, out, err = _run(["train", "change-caption", "--dataset", data, "--out", run, "--encoder", tiny_model,
                           "--device", "cpu", "--format", "json", *_sets(TINY)], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == f"{run}/model" and result["best_epoch"]["epoch"] in (1, 2, 3)
    assert "val_CIDEr" in result["best_epoch"] and result["data"]["train_pairs"] == 6
    assert set(result["scores"]) == {"all", "changed", "unchanged"}

    predictions = json.loads(Path(result["predictions"]).read_text())
    assert sorted(p["image_id"] for p in predictions) == ["test_000009", "test_000010", "test_000011"]
    assert all(isinstance(p["caption"], str) and p["caption"] for p in predictions)
    code, out, err = _run(["eval", "change", "--dataset", data, "--predictions", result["predictions"],
                           "--no-meteor", "--format", "json"], capsys)
    assert code == 0, err
    scored = json.loads(out)
    assert scored["pairs"] == 3 and scored["scores"]["all"]["CIDEr"] == pytest.approx(result["scores"]["all"]["CIDEr"])

    model = load_change_captioner(run / "model")
    assert isinstance(model, ChangeCaptioner) and model.settings["task"] == "change-caption"
    assert model.settings["feature_dim"] == 4 * model.settings["encoder_dim"] == 4 * 32
    scene = _scene(99)  # a scene never seen in training
    befores, afters = [scene, scene], [scene, _with_building(scene, "top left")]
    texts = model.describe(befores, afters)
    assert len(texts) == 2 and all(isinstance(t, str) and t.strip() for t in texts)
    assert model.describe(befores, afters) == texts  # stateless: the same pairs, the same captions
    assert texts[0] == SAME  # identical dates: the fused difference is zero, as in every unchanged training pair
    assert "building" in texts[1]
    assert model.describe([], []) == []

    # `terravl change --change-captioner`: the trained sentence replaces the composed one
    from PIL import Image

    Image.fromarray(scene).save(tmp_path / "before.png")
    Image.fromarray(_with_building(scene, "top left")).save(tmp_path / "after.png")
    code, out, err = _run(["change", tmp_path / "before.png", tmp_path / "after.png", "--method", "cva",
                           "--no-describe", "--change-captioner", run / "model", "--format", "json"], capsys)
    assert code == 0, err
    changed = json.loads(out)
    assert changed["caption_source"] == "model" and changed["caption"] == texts[1]
    with pytest.raises(InputError, match="after images"):
        model.describe([scene], [])

    # the follow-up for a saved model: the same captions as the run's own (limit_eval leaves out the scoring,
    # which is eval_change's, tested above)
    code, out, err = _run(["train", "change-caption", "--dataset", data, "--out", tmp_path / "again",
                           "--predict-with", run / "model", "--device", "cpu", "--format", "json",
                           "--set", "limit_eval=3", "--set", "progress=false"], capsys)
    assert code == 0, err
    again = json.loads(out)
    assert again["predictions"] == str(tmp_path / "again" / "predictions-test.json") and again["scores"] is None
    assert json.loads(Path(again["predictions"]).read_text()) == predictions
    code, _, err = _run(["train", "change-caption", "--dataset", data, "--out", tmp_path / "again",
                         "--predict-with", tmp_path, "--device", "cpu"], capsys)
    assert code == 2 and "not a change captioner" in err and str(tmp_path) in err


@pytest.mark.parametrize("content, expected", [("{\"images\": [", "invalid JSON at line 1"),
                                               ("{\"images\": 3}", "expected an object with an 'images' list")])
def test_malformed_dataset_is_exit_2_naming_the_file(tmp_path, tiny_model, capsys, content, expected):
    data = write_levir_cc(tmp_path / "levir")
    (data / "LevirCCcaptions.json").write_text(content)
    code, out, err = _run(["train", "change-caption", "--dataset", data, "--out", tmp_path / "run", "--encoder",
                           tiny_model, "--device", "cpu", *_sets(TINY)], capsys)
    assert code == 2 and out == ""
    assert str(data / "LevirCCcaptions.json") in err and expected in err and "Traceback" not in err


def test_a_split_without_images_and_unknown_settings_are_clear_errors(tmp_path, tiny_model, capsys):
    data = write_levir_cc(tmp_path / "levir")
    for side in ("A", "B"):
        for file in (data / "images" / "train" / side).iterdir():
            file.unlink()
    code, _, err = _run(["train", "change-caption", "--dataset", data, "--out", tmp_path / "run", "--encoder",
                         tiny_model, "--device", "cpu", *_sets(TINY)], capsys)
    assert code == 2 and "no pairs with captions and both images" in err and "'train'" in err
    code, _, err = _run(["train", "change-caption", "--dataset", data, "--set", "vqa=true"], capsys)
    assert code == 2 and "vqa" in err
    code, _, err = _run(["train", "change-caption", "--dataset", tmp_path / "nowhere"], capsys)
    assert code == 2 and "nowhere" in err


def test_load_change_captioner_refuses_what_is_not_one(tmp_path):
    with pytest.raises(InputError, match="no such change captioner folder"):
        load_change_captioner(tmp_path / "missing")
    with pytest.raises(InputError, match="not a change captioner"):
        load_change_captioner(tmp_path)
    with pytest.raises(InputError, match="not a change captioner"):
        load_change_captioner("terravl-captioner")  # the shipped single-image captioner


def test_fusion_keeps_both_dates_and_their_signed_and_absolute_difference():
    a, b = np.array([[1.0, 2.0]], np.float32), np.array([[3.0, 1.0]], np.float32)
    assert fuse(a, b).tolist() == [[1, 2, 3, 1, 2, -1, 2, 1]]
    assert fuse(a, b, "diff").tolist() == [[2, -1, 2, 1]]
    with pytest.raises(InputError, match="not a fusion"):
        fuse(a, b, "sum")


def test_code_defaults_equal_the_shipped_config():
    values = yaml.safe_load((CONFIGS / "terravl-change-captioner.yaml").read_text())
    defaults = ChangeCaptionTrainConfig()
    drift = {k: (getattr(defaults, k), v) for k, v in values.items() if getattr(defaults, k) != v}
    assert not drift, f"code default != yaml (code, yaml): {drift}"
    assert asdict(ChangeCaptionTrainConfig.from_dict(values)) == asdict(defaults)
    assert defaults.data is None and defaults.device == "auto"
