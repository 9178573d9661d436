"""``terravl train caption`` on the shared loop: ``--resume`` after an interruption ends with exactly the weights
of an uninterrupted run (so a CPU run is also repeatable bit for bit), and ``--device cpu`` is honoured."""

from __future__ import annotations

import json

import torch

from fakedata import write_karpathy
from terravl.train.caption import CaptionTrainConfig, train

TINY = dict(epochs=3, batch_size=16, threads=1, progress=False, n_embd=32, n_layer=1, n_head=2, hidden=64, views=2,
            vocab_min_frequency=1, warmup_steps=2, eval_split=None, max_tokens=8, feature_noise=0.05)


def _weights(folder) -> dict:
    return torch.load(folder / "checkpoint.pt", weights_only=False)["model"]


def test_caption_training_is_repeatable_and_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    from terravl.cli.main import main

    data = write_karpathy(tmp_path / "data" / "d.json", n_train=24, n_test=2)
    args = ["train", "caption", "--data", data, "--out", tmp_path / "cli", "--device", "cpu", "--format", "json"]
    for key, value in TINY.items():
        args += ["--set", f"{key}={'null' if value is None else value}"]
    code = main(list(map(str, args)))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["best_epoch"]["epoch"] in (1, 2, 3)
    training = json.loads((tmp_path / "cli" / "model" / "training.json").read_text())
    assert training["device"] == "cpu" and training["precision"] == "fp32"

    train(CaptionTrainConfig(data=str(data), out=str(tmp_path / "halves"), stop_after_epochs=1, **TINY),
          log=lambda _: None)
    assert torch.load(tmp_path / "halves" / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 1
    logs: list[str] = []
    train(CaptionTrainConfig(data=str(data), out=str(tmp_path / "halves"), **TINY), resume=True, log=logs.append)
    assert any(line.startswith("resumed from") for line in logs)

    reference = _weights(tmp_path / "cli")
    resumed = _weights(tmp_path / "halves")  # a second run, in two halves: repeatable and resumable at once
    assert set(resumed) == set(reference)
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key
    best = torch.load(tmp_path / "halves" / "best.pt", weights_only=True)
    assert all(torch.equal(v, torch.load(tmp_path / "cli" / "best.pt", weights_only=True)[k]) for k, v in best.items())
