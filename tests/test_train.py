import json

import pytest
import torch

import terravl.models as m
from fakedata import write_karpathy
from terravl.train.clip import TrainConfig, train

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


def test_resume_reaches_the_same_state_as_an_uninterrupted_run(tmp_path, fake_captions):
    straight = TrainConfig(data=str(fake_captions), out=str(tmp_path / "a"), epochs=2, **TINY)
    train(straight, log=lambda _: None)
    first = TrainConfig(data=str(fake_captions), out=str(tmp_path / "b"), epochs=2, stop_after_epochs=1, **TINY)
    train(first, log=lambda _: None)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 1
    second = TrainConfig(data=str(fake_captions), out=str(tmp_path / "b"), epochs=2, **TINY)
    train(second, resume=True, log=lambda _: None)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["state"]["step"] == b["state"]["step"]
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-6), key


def test_the_test_split_is_never_trained_on(tmp_path, fake_captions):
    cfg = TrainConfig(data=str(fake_captions), out=str(tmp_path / "c"), eval_split="train", epochs=1, **TINY)
    with pytest.raises(ValueError, match="both the training and the evaluation split"):
        train(cfg, log=lambda _: None)
