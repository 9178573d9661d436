"""The training skeleton both trainers share (terravl.train.loop): device choice, mixed precision decisions, the
warm-up + cosine schedule (held to the formula the shipped models were trained with), checkpoints, resume and
bit-for-bit repeatability on the CPU, and the shipped configs as the only recipe (code defaults equal them)."""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pytest
import torch
import yaml

from terravl.errors import InputError
from terravl.train import loop
from terravl.train.caption import CaptionTrainConfig
from terravl.train.clip import TrainConfig

CONFIGS = Path(__file__).parent.parent / "configs"


# -- device and precision -----------------------------------------------------------------------------------------

def test_auto_picks_the_gpu_only_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loop.resolve_device("auto") == torch.device("cpu")
    assert loop.resolve_device(None) == torch.device("cpu")
    assert loop.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert loop.resolve_device("auto") == torch.device("cuda")
    assert loop.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA"])
def test_cuda_without_a_gpu_is_an_error_naming_the_device_field(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no CUDA GPU") as caught:
        loop.resolve_device(name)
    assert caught.value.source == "device"


def test_an_unknown_device_is_an_error_naming_the_field():
    with pytest.raises(InputError, match="'tpu' is not a device") as caught:
        loop.resolve_device("tpu")
    assert caught.value.source == "device"


@pytest.mark.parametrize("device, precision, expected", [
    ("cpu", "auto", None), ("cpu", None, None), ("cpu", "fp32", None),
    ("cuda", "auto", torch.float16), ("cuda", "fp16", torch.float16), ("cuda", "bf16", torch.bfloat16),
    ("cuda", "fp32", None)])
def test_mixed_precision_is_fp16_on_cuda_and_off_on_the_cpu(device, precision, expected):
    assert loop.amp_dtype(torch.device(device), precision) is expected


@pytest.mark.parametrize("device, precision", [("cpu", "fp16"), ("cpu", "bf16"), ("cuda", "fp8"), ("cpu", "half")])
def test_impossible_precisions_are_errors_naming_the_field(device, precision):
    with pytest.raises(InputError) as caught:
        loop.amp_dtype(torch.device(device), precision)
    assert caught.value.source == "precision"


def test_autocast_is_a_no_op_on_the_cpu_and_torch_autocast_on_cuda():
    for dtype in (None, torch.float16, torch.bfloat16):
        context = loop.autocast(torch.device("cpu"), dtype)
        assert isinstance(context, contextlib.nullcontext)
        with context:
            assert not torch.is_autocast_enabled("cpu")
    assert isinstance(loop.autocast(torch.device("cuda"), None), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without a GPU torch warns that it disables itself
        context = loop.autocast(torch.device("cuda"), torch.float16)
    assert isinstance(context, torch.autocast) and context.device == "cuda" and context.fast_dtype == torch.float16


def test_the_gradient_scaler_passes_everything_through_on_the_cpu():
    scaler = loop.grad_scaler(torch.device("cpu"), torch.float16)
    assert not scaler.is_enabled()
    loss = torch.tensor(2.5)
    assert scaler.scale(loss) is loss


def test_batches_move_with_their_structure():
    batch = ({"x": torch.ones(2, 3)}, [[1, 2], [3]], torch.zeros(2))
    moved = loop.to_device(batch, torch.device("cpu"))
    assert isinstance(moved, tuple) and moved[1] == [[1, 2], [3]] and torch.equal(moved[0]["x"], batch[0]["x"])
    assert loop._batch_size(moved) == 2


# -- the schedule -------------------------------------------------------------------------------------------------

def _clip_schedule_before_the_shared_loop(s, warmup, total):
    """train/clip.py's LambdaLR lambda, copied verbatim from the code the shipped terravl-default was trained with."""
    return min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total))))


def _caption_schedule_before_the_shared_loop(s, warmup_steps, total):
    """train/caption.py's LambdaLR lambda, copied verbatim (warm-up in steps, not epochs)."""
    return min(1.0, (s + 1) / max(1, warmup_steps)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total))))


@pytest.mark.parametrize("reference, warmup, total", [
    (_clip_schedule_before_the_shared_loop, 40, 2400),     # terravl-default: 1 warm-up epoch of 40 steps, 60 epochs
    (_clip_schedule_before_the_shared_loop, 0, 7),         # no warm-up
    (_caption_schedule_before_the_shared_loop, 200, 1000),  # terravl-captioner: 200 warm-up steps
    (_caption_schedule_before_the_shared_loop, 1, 1)])
def test_the_shared_schedule_gives_exactly_the_learning_rates_of_before(reference, warmup, total):
    lr = 2e-3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = loop.warmup_cosine_schedule(optimizer, warmup, total)
    for step in range(total + 3):
        assert loop.warmup_cosine(step, warmup, total) == reference(step, warmup, total)
        assert optimizer.param_groups[0]["lr"] == lr * reference(step, warmup, total), step
        optimizer.step()
        schedule.step()


def test_the_schedule_warms_up_then_decays_to_zero():
    values = [loop.warmup_cosine(s, 10, 100) for s in range(101)]
    assert values[0] == pytest.approx(0.1, rel=1e-3) and max(values) == pytest.approx(values[9])
    assert all(a >= b for a, b in zip(values[9:], values[10:])) and values[100] == 0.0


def test_both_trainers_use_the_shared_loop_and_no_schedule_of_their_own():
    import inspect

    import terravl.train.caption as caption
    import terravl.train.clip as clip

    for module in (clip, caption):
        source = inspect.getsource(module)
        assert "fit(run, cfg, model, optimizer" in source and "LambdaLR" not in source and "math.cos" not in source


# -- the shipped configs are the recipe ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls, name", [(TrainConfig, "terravl-default-v1.yaml"),
                                       (CaptionTrainConfig, "terravl-captioner.yaml")])
def test_code_defaults_equal_the_shipped_config(cls, name):
    values = yaml.safe_load((CONFIGS / name).read_text())
    defaults = cls()
    drift = {k: (getattr(defaults, k), v) for k, v in values.items()
             if k not in PER_DATASET and _plain(getattr(defaults, k)) != v}
    assert not drift, f"code default != {name} (code, yaml): {drift}"
    # where the data is, and its splits per dataset (a two-dataset recipe), are the recipe's own; the rest is default
    own = {k: v for k, v in values.items() if k in PER_DATASET and (k in ("data", "encoder") or isinstance(v, list))}
    assert asdict(cls.from_dict(values)) == asdict(cls(**own))


PER_DATASET = ("data", "train_split", "eval_split", "encoder")
"""The recipe's own: where the data is and its splits per dataset, and the encoder whose features a captioner reads."""


@pytest.mark.parametrize("cls", [TrainConfig, CaptionTrainConfig])
def test_no_shared_folder_paths_as_code_defaults(cls):
    assert cls().data is None
    assert not [f.name for f in fields(cls) if isinstance(f.default, str) and "shared" in f.default]
    assert cls().device == "auto" and cls().precision == "auto"


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("module, cls", [("clip", TrainConfig), ("caption", CaptionTrainConfig)])
def test_training_without_data_is_an_error_naming_the_field(tmp_path, module, cls):
    import importlib

    train = importlib.import_module(f"terravl.train.{module}").train
    with pytest.raises(InputError, match="no training data") as caught:
        train(cls(out=str(tmp_path / "run"), progress=False), log=lambda _: None)
    assert caught.value.source == "data"


# -- the loop on a toy problem: hooks, checkpoints, resume, repeatability ----------------------------------------

@dataclass
class ToyConfig:
    data: str = "toy"
    out: str = "runs/toy"
    epochs: int = 4
    lr: float = 0.05
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"
    threads: int | None = None
    max_steps: int | None = None
    stop_after_epochs: int | None = None
    progress: bool = False


def _toy_fit(cfg: ToyConfig, resume: bool = False, logs: list | None = None):
    """Noisy linear regression with dropout: every random draw (order, noise, dropout) must survive a resume."""
    run = loop.start(cfg)
    x = torch.randn(64, 5, generator=run.generator)
    y = x @ torch.arange(5.0) + 0.1 * torch.randn(64, generator=run.generator)
    model = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(5, 1)).to(run.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    calls = []

    def make_batch(order, b):
        idx = order[b * 16:(b + 1) * 16]
        return x[idx] + 0.01 * torch.randn(len(idx), 5), y[idx]

    def evaluate():
        calls.append(model.training)
        with torch.no_grad():
            mse = float(((model[1](x).squeeze(1) - y) ** 2).mean())
        return {"mse": mse, "fit": -mse}

    state = loop.fit(run, cfg, model, optimizer, total=loop.total_steps(cfg.max_steps, cfg.epochs, 4),
                     steps_per_epoch=4, warmup=2, plan_epoch=lambda: torch.randperm(64, generator=run.generator),
                     make_batch=make_batch,
                     compute_loss=lambda batch: ((model(batch[0]).squeeze(1) - batch[1]) ** 2).mean(),
                     evaluate=evaluate, resume=resume, clip_grad=1.0, keep_best="fit",
                     log=(logs.append if logs is not None else lambda _: None))
    return state, model, calls


def test_the_loop_evaluates_each_epoch_and_checkpoints_config_beside_weights(tmp_path):
    cfg = ToyConfig(out=str(tmp_path / "a"))
    state, model, calls = _toy_fit(cfg)
    assert state["step"] == 16 and [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]
    assert len(calls) == 4 and all(h["mse"] >= 0 for h in state["history"])
    assert state["history"][-1]["mse"] < state["history"][0]["mse"]
    saved = loop.load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert saved["config"] == asdict(cfg) and set(saved["model"]) == set(model.state_dict())
    assert saved["schedule"]["_last_lr"][0] == cfg.lr * loop.warmup_cosine(16, 2, 16)
    best = min(state["history"], key=lambda h: h["mse"])
    assert state["best"] == best and torch.equal(torch.load(tmp_path / "a" / "best.pt")["1.weight"],
                                                 model[1].weight) == (best is state["history"][-1])


def test_the_loop_is_repeatable_and_resume_equals_an_uninterrupted_run(tmp_path):
    straight, model_a, _ = _toy_fit(ToyConfig(out=str(tmp_path / "a")))
    again, model_b, _ = _toy_fit(ToyConfig(out=str(tmp_path / "b")))
    logs: list[str] = []
    _toy_fit(ToyConfig(out=str(tmp_path / "c"), stop_after_epochs=2))
    resumed, model_c, _ = _toy_fit(ToyConfig(out=str(tmp_path / "c"), progress=True), resume=True, logs=logs)
    other, model_d, _ = _toy_fit(ToyConfig(out=str(tmp_path / "d"), seed=1))
    assert any("resumed from" in line and "epoch 2" in line for line in logs)
    assert not any("other settings" in line for line in logs)  # progress/stop_after_epochs are not the recipe
    for a, b, c in zip(model_a.state_dict().values(), model_b.state_dict().values(),
                       model_c.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    assert not torch.equal(model_a[1].weight, model_d[1].weight)


def test_resuming_with_another_recipe_warns(tmp_path):
    _toy_fit(ToyConfig(out=str(tmp_path / "a"), stop_after_epochs=1))
    logs: list[str] = []
    _toy_fit(ToyConfig(out=str(tmp_path / "a"), lr=0.01), resume=True, logs=logs)
    assert any("other settings" in line for line in logs)


def test_fit_runs_the_loss_outside_autocast_on_the_cpu(tmp_path, monkeypatch):
    seen = []
    real = loop.autocast

    def spy(device, dtype):
        seen.append((device, dtype))
        return real(device, dtype)

    monkeypatch.setattr(loop, "autocast", spy)
    _toy_fit(ToyConfig(out=str(tmp_path / "a"), epochs=1))
    assert seen == [(torch.device("cpu"), None)] * 4
