"""``terravl train router`` and ``terravl eval router``: the chat interface's instruction router (issue 18)."""

from __future__ import annotations

from pathlib import Path

import click

from terravl.cli.output import emit_json, format_option, stderr, table

DEFAULT_EVAL = "benchmarks/data/router_eval.jsonl"


@click.command("router")
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML file of settings (see configs/terravl-router.yaml); options below override it.")
@click.option("--out", help="Run folder: OUT/model is the router folder (router.json, model.safetensors, "
                            "training.json).")
@click.option("--encoder", help="Dual encoder whose text tower the classifier reads (name or path). Default: "
                                "terravl-default.")
@click.option("--seed", type=int)
@click.option("--threads", type=int, help="torch CPU threads (default 1).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any other setting, e.g. --set "
                                                                            "examples=3000")
@format_option()
def train_router(config_file, out, encoder, seed, threads, overrides, fmt) -> None:
    """Train the instruction router: instructions generated from templates and vocabularies (seeded, with typo
    and word-order noise) → the encoder's text embedding + hashed n-grams → a linear classifier of the task.
    Arguments are extracted by rules and need no training. Scores on generated dev instructions go to
    OUT/model/training.json; score the hand-written set with `terravl eval router --router OUT/model`.

    \b
    Examples:
      terravl train router --config configs/terravl-router.yaml
      terravl train router --config configs/terravl-router.yaml --out runs/router2 --set examples=12000
    """
    from terravl.cli.train_cmd import _config
    from terravl.router.train import RouterTrainConfig, train

    cfg = _config(RouterTrainConfig, config_file, overrides, {"out": out, "encoder": encoder, "seed": seed,
                                                             "threads": threads})
    info = train(cfg, log=lambda message: stderr.print(message))
    result = {"out": cfg.out, "model": info["model"], "examples": info["examples"], "seconds": info["seconds"],
              "embed_seconds": info["embed_seconds"], "size_bytes": info["size_bytes"], "dev": info["dev"]}
    if fmt == "json":
        emit_json(result)
        return
    dev = info["dev"] or {}
    table(info["model"], ["metric", "value"],
          [["training examples", info["examples"]], ["seconds", info["seconds"]],
           ["size (bytes)", info["size_bytes"]],
           ["dev task accuracy %", dev.get("task_accuracy")],
           ["dev argument exact match %", dev.get("argument_exact_match")]])


@click.command("router")
@click.option("--router", "router_name", default="terravl-router", show_default=True, metavar="NAME|PATH",
              help="Registered router or a router folder (OUT/model of `terravl train router`).")
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_EVAL, show_default=True,
              help="JSONL of hand-written instructions: {text, task, arguments, context?} per line.")
@click.option("--mistakes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also list up to N misrouted instructions or wrong arguments.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Also write the result as JSON here.")
@format_option()
def eval_router(router_name: str, data: Path, mistakes: int, out: Path | None, fmt: str) -> None:
    """Score a router: task accuracy over every instruction, argument exact match over those routed to the
    right task that have arguments, per-task accuracy and the confusion counts (true task → routed task).

    \b
    Examples:
      terravl eval router
      terravl eval router --router runs/terravl-router/model --format json --out router.json
    """
    from terravl.cli.eval_cmd import _finish
    from terravl.router.evaluate import evaluate
    from terravl.router.model import load_router

    result = evaluate(load_router(router_name), data, mistakes=mistakes)

    def render(r):
        table(f"router {r['router']} on {r['data']}: task accuracy {r['task_accuracy']:.2f} % "
              f"({r['examples']} instructions), argument exact match {r['argument_exact_match']:.2f} % "
              f"({r['argument_examples']})", ["task", "n", "accuracy %", "routed elsewhere"],
              [[t, s["examples"], f"{s['accuracy']:.1f}",
                ", ".join(f"{u} {n}" for u, n in r["confusion"][t].items() if u != t)]
               for t, s in r["per_task"].items()])
        for m in r.get("mistakes", []):
            stderr.print(f"mistake: {m}")

    _finish(result, fmt, out, render)
