"""The training skeleton shared by ``terravl train clip`` and ``terravl train caption`` (nanoGPT style: one loop a
reader can follow top to bottom).

A trainer prepares its data and model, calls :func:`start` (threads, required data, device, precision, seed, run
folder), moves its model to ``run.device``, builds its optimiser, and hands :func:`fit` four small functions: plan
an epoch, build one batch (on the CPU, so random draws never depend on the device), compute the loss of a batch
(already on the device), and evaluate after each epoch. :func:`fit` owns the rest: the warm-up + cosine schedule,
mixed precision on CUDA, progress on stderr, checkpoints that hold the config beside the weights, and ``resume``.

On the CPU nothing here changes the arithmetic: autocast and the gradient scaler are off, batches are built in the
same order with the same random draws, so a CPU run of a shipped recipe reproduces the shipped model.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch
from tqdm import tqdm

from terravl.errors import InputError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
RUN_ONLY_SETTINGS = ("device", "threads", "progress", "stop_after_epochs")  # may differ when resuming


# -- device and precision -----------------------------------------------------------------------------------------

def resolve_device(name: str | None) -> torch.device:
    """``auto`` → the CUDA GPU if there is one, else the CPU; ``cuda`` (or ``cuda:N``) without one is an error,
    never a silent fallback (a run asked to use a GPU must not quietly take days on the CPU)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError("device", f"{name!r} asked for, but torch sees no CUDA GPU here; use --device auto or cpu")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise InputError("device", f"{name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError("device", f"{name!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
        return device
    raise InputError("device", f"{name!r} is not a device; use one of {', '.join(DEVICES)} (or cuda:N)")


def amp_dtype(device: torch.device, precision: str | None) -> torch.dtype | None:
    """The autocast dtype of a run, or None for plain fp32. ``auto`` is fp16 on CUDA (with a gradient scaler) and
    fp32 on the CPU; mixed precision is CUDA only, so that CPU runs stay bit-for-bit those of the shipped recipes."""
    precision = (precision or "auto").strip().lower()
    if precision not in PRECISIONS:
        raise InputError("precision", f"{precision!r} is not a precision; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision == "auto":
            return None
        raise InputError("precision", f"{precision} mixed precision needs a CUDA device (this run uses {device}); "
                                      "use precision auto or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """torch.autocast on CUDA with ``dtype``; a context that does nothing otherwise."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its small range underflows gradients); disabled, hence a pass-through, otherwise."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and dtype == torch.float16)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors in a (nested) tuple, list or dict moved to ``device``; anything else as it is."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)) and any(torch.is_tensor(v) or isinstance(v, (tuple, list, dict))
                                                for v in batch):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# -- schedule and seeding -----------------------------------------------------------------------------------------

def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier at ``step`` (0-based): linear warm-up over ``warmup`` steps times a half cosine from 1 to 0
    over ``total`` steps. The expression is kept exactly as the shipped models were trained with."""
    return min(1.0, (step + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int
                           ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))


def total_steps(max_steps: int | None, epochs: int, steps_per_epoch: int) -> int:
    """The run's length: ``max_steps`` if set, else whole epochs."""
    return max_steps or epochs * steps_per_epoch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CUDA too); returns a CPU generator for the loop's own sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rng_state(generator: torch.Generator | None, device: torch.device) -> dict:
    """Every random state a resumed run needs to draw what the uninterrupted run would have drawn."""
    state = {"python_rng": random.getstate(), "numpy_rng": np.random.get_state(), "torch_rng": torch.get_rng_state()}
    if generator is not None:
        state["generator"] = generator.get_state()
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(saved: dict, generator: torch.Generator | None) -> None:
    """The inverse of :func:`rng_state`, for what the checkpoint holds (older checkpoints hold less)."""
    if "python_rng" in saved:
        random.setstate(saved["python_rng"])
    if "numpy_rng" in saved:
        np.random.set_state(saved["numpy_rng"])
    if "torch_rng" in saved:
        torch.set_rng_state(saved["torch_rng"])
    if generator is not None and "generator" in saved:
        generator.set_state(saved["generator"])
    if "cuda_rng" in saved and torch.cuda.is_available() and len(saved["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


# -- run set-up ---------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """What :func:`start` settled: where the run writes, on which device, in which precision, with which sampler."""

    out: Path
    device: torch.device
    amp: torch.dtype | None
    generator: torch.Generator

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.amp]


def start(cfg) -> Run:
    """The prologue of every training command. Bad settings fail here, before any data is decoded."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.data:
        raise InputError("data", "no training data: give --data or a `data:` line in the --config YAML")
    device = resolve_device(cfg.device)
    amp = amp_dtype(device, cfg.precision)
    # Denormal floats (|x| < 1e-38) take a slow path on x86 CPUs; gradients and optimiser moments of weights that
    # already trained (fine-tuning terravl-default-v1) can reach them. Flushing them to zero costs no accuracy;
    # measured on 2 busy cores, one training step of v1's image tower: 61 against 55 images/s without.
    torch.set_flush_denormal(True)
    generator = seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    return Run(out, device, amp, generator)


# -- checkpoints --------------------------------------------------------------------------------------------------

def weights(model: torch.nn.Module, trainable_only: bool = False) -> dict:
    """The state a checkpoint keeps: the whole model, or only what trains (a frozen LM need not be copied)."""
    if trainable_only:
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return model.state_dict()


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write through a temporary file, so an interrupted save never leaves a half checkpoint behind."""
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint on the CPU, whatever device wrote it (load_state_dict copies it onto the model's device)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _recipe(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RUN_ONLY_SETTINGS}


# -- the loop -----------------------------------------------------------------------------------------------------

def fit(run: Run, cfg, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, total: int,
        steps_per_epoch: int, warmup: int, plan_epoch: Callable[[], Any], make_batch: Callable[[Any, int], Any],
        compute_loss: Callable[[Any], torch.Tensor], evaluate: Callable[[], dict], resume: bool = False,
        clip_grad: float | None = None, trainable_only: bool = False, keep_best: str | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Train ``model`` for ``total`` steps and return the run's state (epoch, step, history, elapsed, best).

    Per epoch: ``plan_epoch()`` once (e.g. the shuffled order), then per step ``make_batch(plan, i)`` (CPU; None
    ends the epoch), ``compute_loss(batch on the device)`` under autocast, backward, optimiser and schedule step.
    After each epoch ``evaluate()`` adds its scores to the history entry; with ``keep_best`` (the name of a score
    where higher is better) the best epoch's weights go to ``out/best.pt``; then ``out/checkpoint.pt`` is written
    with the config beside the weights. ``resume`` continues from that checkpoint; ``cfg.stop_after_epochs``
    interrupts a run on purpose."""
    schedule = warmup_cosine_schedule(optimizer, warmup, total)
    scaler = grad_scaler(run.device, run.amp)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {"epoch": 0, "step": 0, "history": [], "elapsed": 0.0, "best": None}
    checkpoint, best_file = run.out / "checkpoint.pt", run.out / "best.pt"
    if resume and checkpoint.is_file():
        saved = load_checkpoint(checkpoint)
        if _recipe(saved["config"]) != _recipe(asdict(cfg)):
            log("warning: the checkpoint was written with other settings; continuing with the checkpoint's model")
        model.load_state_dict(saved["model"], strict=not trainable_only)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state = {"best": None, **saved["state"]}
        restore_rng(saved, run.generator)
        log(f"resumed from {checkpoint} at epoch {state['epoch']}, step {state['step']}")
    model.train()
    while state["step"] < total:
        if cfg.stop_after_epochs is not None and state["epoch"] >= cfg.stop_after_epochs:
            log(f"stopping after epoch {state['epoch']} as asked; continue with --resume")
            break
        epoch_start = time.perf_counter()
        losses, seen = [], 0
        plan = plan_epoch()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {state['epoch'] + 1}", unit="step", file=sys.stderr,
                   disable=not cfg.progress or None)
        for b in bar:
            if state["step"] >= total:
                break
            batch = make_batch(plan, b)
            if batch is None:
                break
            batch = to_device(batch, run.device)
            with autocast(run.device, run.amp):
                loss = compute_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            state["step"] += 1
            losses.append(loss.item())
            seen += _batch_size(batch)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{schedule.get_last_lr()[0]:.2e}",
                            per_s=f"{seen / (time.perf_counter() - epoch_start):.0f}")
        bar.close()
        state["epoch"] += 1
        state["elapsed"] += time.perf_counter() - epoch_start
        entry = {"epoch": state["epoch"], "step": state["step"],
                 "loss": float(np.mean(losses)) if losses else None, "elapsed_s": round(state["elapsed"], 1)}
        entry.update(evaluate())
        model.train()
        state["history"].append(entry)
        log(f"epoch {state['epoch']}: " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in entry.items() if k != "epoch"))
        if keep_best and (state["best"] is None or
                          entry.get(keep_best, 0.0) >= state["best"].get(keep_best, 0.0)):
            state["best"] = entry
            torch.save(weights(model, trainable_only), best_file)
        save_checkpoint(checkpoint, {"config": asdict(cfg), "model": weights(model, trainable_only),
                                     "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                     "scaler": scaler.state_dict(), "state": state,
                                     **rng_state(run.generator, run.device)})
    return state


def _batch_size(batch: Any) -> int:
    """Items in a batch, for the progress bar's rate: the first dimension of its first tensor."""
    if torch.is_tensor(batch):
        return int(batch.shape[0]) if batch.ndim else 1
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    return next((_batch_size(v) for v in items if torch.is_tensor(v)), 0)
