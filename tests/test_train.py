import json

import pytest
import torch

import terravl.models as m
from fakedata import write_karpathy
from terravl.train.clip import TrainConfig, train
from terravl.train.loop import warmup_cosine

TINY = dict(widths=(8, 16), depths=(1, 1), embed_dim=32, resolution=32, cache_resolution=40, batch_size=8,
            lr=5e-3, warmup_epochs=0.0, class_prompt_prob=0.0, threads=1, progress=False)


@pytest.fixture()
def fake_captions(tmp_path):
    return write_karpathy(tmp_path / "data" / "d.json", n_train=16, n_test=4)


def test_training_lowers_the_loss_and_exports_a_loadable_model(tmp_path, fake_captions):
    cfg = TrainConfig(data=str(fake_captions), out=str(tmp_path / "run"), epochs=8, **TINY)
    info = train(cfg, log=lambda _: None)
    losses = [h["loss"] for h in info["history"]]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert {"mR", "zeroshot_top1"} <= set(info["scores"])
    folder = tmp_path / "run" / "model"
    training = json.loads((folder / "training.json").read_text())
    assert training["data"]["train_images"] == 16 and len(training["data"]["train_images_sha256"]) == 64
    encoder = m.load(folder)
    emb = encoder.encode_images([fake_captions.parent / "imgs" / "scene_0.jpg"])
    assert emb.shape == (1, 32) and abs(float((emb ** 2).sum()) - 1) < 1e-5
    assert encoder.encode_texts(["a forest"]).shape == (1, 32)


def test_two_datasets_train_together_from_an_existing_model_and_score_apart(tmp_path, fake_captions):
    """Issue 19: rsicd_aid + ucm_captions in one run, each scored on its own evaluation split and classes; squashed
    class names share the readable class of the other dataset; multi-labels become a caption; ``init`` fine-tunes."""
    second = write_karpathy(tmp_path / "ucm" / "u.json", n_train=12, n_test=4)
    doc = json.loads(second.read_text())
    for item in doc["images"]:
        item["class"] = "forest" if item["class"] == "Forest" else "denseresidential"
        item["split"] = "val" if item["split"] == "test" else "train"
        item["labels"] = ["trees", "bare-soil"]
    second.write_text(json.dumps(doc))
    base = TrainConfig(data=str(fake_captions), out=str(tmp_path / "base"), epochs=1, memory=False, **TINY)
    train(base, log=lambda _: None)
    cfg = TrainConfig.from_dict(dict(data=[str(fake_captions), str(second)], eval_split=["test", "val"],
                                     init=str(tmp_path / "base" / "model"), label_captions=True,
                                     out=str(tmp_path / "both"), epochs=2, **{**TINY, "widths": (99, 99)}))
    from terravl.train.clip import prepare_data

    table, train_split, evaluations, _ = prepare_data(cfg)
    assert table.classes == ["beach", "dense residential", "forest"]
    assert [e.name for e in evaluations] == ["data", "ucm"] and [len(e.paths) for e in evaluations] == [4, 4]
    assert [table.classes[c] for c in evaluations[1].class_ids] == ["dense residential", "forest"]
    assert "an aerial image with trees and bare soil" in table.strings
    info = train(cfg, log=lambda _: None)
    assert {"data:mR", "ucm:mR", "data:zeroshot_top1", "ucm:zeroshot_top1", "mean_mR"} <= set(info["scores"])
    assert info["data"]["train_images"] == 16 + 12 - 1 and set(info["data"]["eval_images"]) == {"data", "ucm"}
    model = m.load(tmp_path / "both" / "model")
    assert model.model.config["image"]["widths"] == [8, 16]     # the architecture comes from ``init``
    start = m.load(tmp_path / "base" / "model").model.image_tower.state_dict()
    assert any(not torch.equal(v, model.model.image_tower.state_dict()[k]) for k, v in start.items())


def test_resume_reaches_the_same_state_as_an_uninterrupted_run(tmp_path, fake_captions):
    straight = TrainConfig(data=str(fake_captions), out=str(tmp_path / "a"), epochs=2, **TINY)
    train(straight, log=lambda _: None)
    first = TrainConfig(data=str(fake_captions), out=str(tmp_path / "b"), epochs=2, stop_after_epochs=1, **TINY)
    train(first, log=lambda _: None)
    halfway = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert halfway["state"]["epoch"] == 1 and halfway["state"]["step"] == 2  # 16 images, batches of 8
    assert halfway["schedule"]["_last_lr"][0] == TINY["lr"] * warmup_cosine(2, 0, 4)
    second = TrainConfig(data=str(fake_captions), out=str(tmp_path / "b"), epochs=2, **TINY)
    train(second, resume=True, log=lambda _: None)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["state"]["step"] == b["state"]["step"]
    assert [h["loss"] for h in a["state"]["history"]] == [h["loss"] for h in b["state"]["history"]]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key  # bit for bit, not merely close


def test_a_cpu_run_is_repeatable_bit_for_bit_and_the_seed_matters(tmp_path, fake_captions):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        info = train(TrainConfig(data=str(fake_captions), out=str(tmp_path / name), epochs=2, seed=seed,
                                 device="cpu", **TINY), log=lambda _: None)
        assert info["device"] == "cpu" and info["precision"] == "fp32"
        runs[name] = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(v, runs["b"][k]) for k, v in runs["a"].items())
    assert not all(torch.equal(v, runs["c"][k]) for k, v in runs["a"].items())


def _run(capsys, *args):
    from terravl.cli.main import main

    code = main(list(map(str, args)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_clip_cli_trains_on_the_device_asked_for(tmp_path, fake_captions, capsys):
    tiny = ["--set", "widths=[8, 16]", "--set", "depths=[1, 1]", "--set", "embed_dim=32", "--set",
            "cache_resolution=40", "--set", "warmup_epochs=0", "--set", "progress=false", "--set", "memory=false"]
    code, out, err = _run(capsys, "train", "clip", "--data", fake_captions, "--out", tmp_path / "run",
                          "--device", "cpu", "--epochs", 1, "--batch-size", 8, "--resolution", 32, "--threads", 1,
                          *tiny, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["out"] == str(tmp_path / "run")
    training = json.loads((tmp_path / "run" / "model" / "training.json").read_text())
    assert training["device"] == "cpu" and training["config"]["device"] == "cpu"
    code, out, err = _run(capsys, "train", "clip", "--out", tmp_path / "nodata", "--device", "cpu", *tiny)
    assert code == 2 and "data" in err and "no training data" in err
    code, out, err = _run(capsys, "train", "clip", "--data", fake_captions, "--device", "tpu")
    assert code == 2 and "--device" in err
    if not torch.cuda.is_available():
        code, out, err = _run(capsys, "train", "clip", "--data", fake_captions, "--out", tmp_path / "gpu",
                              "--device", "cuda", *tiny)
        assert code == 2 and "device" in err and "no CUDA GPU" in err
        assert not (tmp_path / "gpu" / "checkpoint.pt").exists()


@pytest.mark.parametrize("command", ["clip", "caption"])
def test_train_help_tells_where_training_runs(capsys, command):
    code, out, _ = _run(capsys, "train", command, "--help")
    assert code == 0 and "--device [auto|cpu|cuda]" in out and "CUDA GPU" in out
    code, out, _ = _run(capsys, "train", "--help")
    assert "CUDA GPU" in out and "laptop" not in out


def test_the_test_split_is_never_trained_on(tmp_path, fake_captions):
    with pytest.raises(ValueError, match="scored on its training split 'train'"):
        TrainConfig.from_dict(dict(data=str(fake_captions), out=str(tmp_path / "c"), eval_split="train", epochs=1,
                                   **TINY))
    with pytest.raises(ValueError, match="eval_split: give one split name, or a list of 2"):
        TrainConfig.from_dict(dict(data=[str(fake_captions)] * 2, eval_split=["test"], **TINY))


@pytest.mark.parametrize("mode", [dict(lora_image=4), dict(freeze_image=False, freeze_text=False)])
def test_fine_tuning_an_open_clip_checkpoint(tmp_path, fake_captions, mode):
    from fakedata import tiny_open_clip

    ckpt = tmp_path / "base.pt"
    base = tiny_open_clip("vit", seed=2)
    torch.save(base.state_dict(), ckpt)
    cfg = TrainConfig(data=str(fake_captions), out=str(tmp_path / "ft"), model=str(ckpt), epochs=3, batch_size=8,
                      lr=1e-3, warmup_epochs=0.0, class_prompt_prob=0.0, threads=1, progress=False, **mode)
    info = train(cfg, log=lambda _: None)
    assert info["config"]["resolution"] == 64  # the model's own input size
    tuned = m.load(tmp_path / "ft" / "model")
    before = m.load(ckpt)
    image = fake_captions.parent / "imgs" / "scene_1.jpg"
    assert tuned.encode_images([image]).shape == (1, 32)
    assert not torch.allclose(torch.from_numpy(tuned.encode_images([image])),
                              torch.from_numpy(before.encode_images([image])))  # the image tower changed
    same_text = torch.allclose(torch.from_numpy(tuned.encode_texts(["a beach"])),
                               torch.from_numpy(before.encode_texts(["a beach"])), atol=1e-6)
    assert same_text == (mode.get("freeze_text", True) and not mode.get("lora_text"))


def test_caption_memory_is_chosen_on_validation_and_round_trips(tmp_path):
    data = write_karpathy(tmp_path / "data" / "d.json", n_train=40, n_test=4)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "mem"), epochs=2, val_fraction=0.2, memory_storage="int8",
                      text_memory=True, **TINY)
    info = train(cfg, log=lambda _: None)
    assert info["data"]["train_images"] == 32 and info["data"]["validation_images"] == 8
    folder = tmp_path / "mem" / "model"
    config = json.loads((folder / "terravl_config.json").read_text())
    encoder = m.load(folder)
    image = data.parent / "imgs" / "scene_0.jpg"
    if "memory" in info["scores"]:  # attached: the saved model carries it and uses it
        assert config["memory"]["size"] == 32 and encoder.model.memory_keys.shape == (32, 32)
        assert config["memory"]["storage"] == "int8" and encoder.model.memory_keys.dtype == torch.int8
        text = info["scores"]["memory"].get("text")  # the text side: in the config exactly when it was chosen
        wanted = {k: text[k] for k in ("clusters", "k", "tau", "beta")} if text else None
        assert config["memory"].get("text") == wanted
    else:
        assert "memory" not in config
    assert encoder.encode_images([image]).shape == (1, 32)


def test_an_unknown_memory_storage_is_refused_before_training(tmp_path):
    data = write_karpathy(tmp_path / "data" / "d.json", n_train=8, n_test=2)
    with pytest.raises(ValueError, match="memory_storage"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "x"), memory_storage="int4", **TINY), log=lambda _: None)
    assert not (tmp_path / "x" / "model").exists()


def test_caption_memory_round_trips_through_save_and_load(tmp_path):
    from terravl.models.terravl_encoder import TerraVLModel

    torch.manual_seed(0)
    config = {"arch": "terravl-cnn", "embed_dim": 16,
              "image": {"widths": [8], "depths": [1], "resolution": 32, "dropout": 0.0, "mean": [0.5] * 3,
                        "std": [0.25] * 3},
              "text": {"tower": "all-MiniLM-L6-v2", "features": 384, "projection": "linear"}}
    model = TerraVLModel(config).eval()
    pixels = torch.randn(3, 3, 32, 32)
    plain = model.encode_image(pixels)
    keys = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1)
    values = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1)
    model.set_memory(keys, values, k=5, tau=0.05, alpha=0.5)
    blended = model.encode_image(pixels)
    assert not torch.allclose(plain, blended)
    model.save(tmp_path / "m")
    again = TerraVLModel.load(tmp_path / "m")
    assert torch.allclose(again.encode_image(pixels), blended, atol=1e-6)
