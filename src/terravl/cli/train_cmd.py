"""``terravl train``: train and fine-tune models with the same code path on a laptop CPU or a GPU."""

from __future__ import annotations

from pathlib import Path

import click

from terravl.cli.output import emit_json, format_option, stderr, table


@click.group()
def train() -> None:
    """Train models (contrastive dual encoders today)."""


@train.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML file of settings (see configs/terravl-default.yaml); options below override it.")
@click.option("--data", help="Karpathy caption JSON or class folders (class names become captions).")
@click.option("--out", help="Run folder: checkpoint.pt, model/ (weights + config + data checksums + scores).")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--resolution", type=int)
@click.option("--seed", type=int)
@click.option("--threads", type=int, help="torch CPU threads (default: all cores).")
@click.option("--max-steps", type=int, help="Stop after this many steps (smoke tests).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any other setting, e.g. --set jitter=0.1")
@format_option()
def clip(config_file, data, out, epochs, batch_size, lr, resolution, seed, threads, max_steps, resume, overrides,
         fmt) -> None:
    """Contrastive training (symmetric InfoNCE, learnable temperature) of TerraVL's dual encoder: a CNN image
    tower from scratch against the frozen MiniLM text tower (its features are computed once and cached).

    Evaluates retrieval (mR) and zero-shot accuracy on the evaluation split after every epoch, checkpoints every
    epoch, and writes the final model with its config, data checksums and scores to OUT/model.

    \b
    Examples:
      terravl train clip --config configs/terravl-default.yaml
      terravl train clip --config configs/terravl-default.yaml --out runs/try2 --set jitter=0.3 --epochs 40
      terravl train clip --config configs/terravl-default.yaml --resume
    """
    import yaml

    from terravl.train.clip import TrainConfig, train as run

    values = yaml.safe_load(config_file.read_text()) if config_file else {}
    for key, value in {"data": data, "out": out, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                       "resolution": resolution, "seed": seed, "threads": threads, "max_steps": max_steps}.items():
        if value is not None:
            values[key] = value
    for item in overrides:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        key, raw = item.split("=", 1)
        values[key.replace("-", "_")] = yaml.safe_load(raw)
    try:
        cfg = TrainConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    info = run(cfg, resume=resume, log=lambda message: stderr.print(message))
    if fmt == "json":
        emit_json({"out": cfg.out, "scores": info["scores"], "data": info["data"]})
    else:
        table(f"{cfg.out}/model", ["metric", "value"],
              [[k, f"{v:.2f}" if isinstance(v, float) else v] for k, v in info["scores"].items()])
