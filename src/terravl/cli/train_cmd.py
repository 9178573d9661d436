"""``terravl train``: train and fine-tune models with one training loop (terravl.train.loop) on the CPU or a CUDA
GPU (``--device``); on CUDA it trains in mixed precision."""

from __future__ import annotations

from pathlib import Path

import click

from terravl.cli.output import emit_json, format_option, stderr, table


@click.group()
def train() -> None:
    """Train models: contrastive dual encoders (clip), captioning/VQA bridges (caption), the change detector
    (change-detector, on pairs synthesised from single-date scenes) and change captioners (change-caption, on
    LEVIR-CC).

    All run the same loop on the CPU or a CUDA GPU (--device auto|cpu|cuda; auto takes the GPU when torch sees
    one). On CUDA they train with fp16 autocast (--set precision=bf16 or fp32 to change it); on the CPU in fp32,
    where a fixed seed makes a run repeatable bit for bit."""


def _loop_options(example: str):
    """The options every training command shares (loop length, optimiser, seed, device, threads, resume,
    overrides)."""
    options = [
        click.option("--epochs", type=int),
        click.option("--batch-size", type=int),
        click.option("--lr", type=float),
        click.option("--seed", type=int),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]),
                     help="Where to train: auto (default: the CUDA GPU if torch sees one, else the CPU), cpu, or "
                          "cuda (an error without a GPU). On CUDA: fp16 autocast, --set precision=fp32|bf16 to "
                          "change it."),
        click.option("--threads", type=int, help="torch CPU threads (default: all cores)."),
        click.option("--max-steps", type=int, help="Stop after this many steps (smoke tests)."),
        click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help=f"Any other setting, e.g. --set {example}"),
        format_option(),
    ]

    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f
    return wrap


def _config(cls, config_file, overrides, given: dict):
    """The settings object of ``cls`` from the YAML file, the named options and ``--set`` (bad keys: exit 2)."""
    try:
        cfg = cls.from_dict(_settings(config_file, overrides, given))
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    _check_loop(cfg)
    return cfg


LOOP_LIMITS = {"epochs": (1, 100_000), "batch_size": (1, 1 << 20), "threads": (1, 256), "max_steps": (1, 1 << 40)}
"""Bounds of the loop settings, wherever they come from (option, YAML or --set): 100,000 torch threads crash the
process, a batch of 0 never ends an epoch; ``lr`` must be a positive number as well."""


def _check_loop(cfg) -> None:
    from terravl.validation import check_int

    for name, (low, high) in LOOP_LIMITS.items():
        value = getattr(cfg, name, None)
        if value is not None and (name != "threads" or value != 0):
            if isinstance(value, bool) or not isinstance(value, int):
                raise click.BadParameter(f"must be a whole number, got {value!r}", param_hint=name)
            check_int(value, name, low, high)
    lr = getattr(cfg, "lr", 1.0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise click.BadParameter(f"must be a positive number, got {lr!r}", param_hint="lr")


def _settings(config_file, overrides, given: dict) -> dict:
    """YAML file, then the named options, then ``--set KEY=VALUE`` pairs (values parsed as YAML)."""
    values = _yaml(config_file.read_bytes(), str(config_file)) if config_file else {}
    if values is not None and not isinstance(values, dict):
        raise click.BadParameter("the YAML file must hold a mapping of settings", param_hint="--config")
    values = values or {}
    values.update({k: v for k, v in given.items() if v is not None})
    for item in overrides:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        key, raw = item.split("=", 1)
        values[key.replace("-", "_")] = _yaml(raw, f"--set {key}")
    return values


def _yaml(text: str | bytes, where: str):
    """YAML text parsed; a syntax error or undecodable bytes are one line naming ``where`` (exit 2)."""
    import yaml

    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        else:
            text.encode("utf-8")  # an undecodable command-line byte (a lone surrogate)
        return yaml.safe_load(text)
    except UnicodeError:
        raise click.BadParameter(f"{where}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise click.BadParameter(f"{where}: invalid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None


def _emit_run(out: str, info: dict, extra: dict, fmt: str) -> None:
    """A finished training run: JSON (run folder, model folder, best epoch and ``extra``) or its best epoch's
    scores as a table."""
    best = info["best_epoch"]
    if fmt == "json":
        emit_json({"out": out, "model": f"{out}/model", "best_epoch": best, **extra})
    else:
        table(f"{out}/model (best epoch {(best or {}).get('epoch')})", ["metric", "value"],
              [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in (best or {}).items()])


@train.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML file of settings (see configs/terravl-default-v3.yaml); options below override it.")
@click.option("--data", help="Karpathy caption JSON or class folders (class names become captions). Required, here "
                             "or in --config. Several datasets: a YAML list in --config or --set 'data=[A, B]' "
                             "(with --set 'eval_split=[test, val]').")
@click.option("--out", help="Run folder: checkpoint.pt, model/ (weights + config + data checksums + scores).")
@click.option("--resolution", type=int)
@_loop_options("jitter=0.1")
def clip(config_file, data, out, epochs, batch_size, lr, resolution, seed, device, threads, max_steps, resume,
         overrides, fmt) -> None:
    """Contrastive training (symmetric InfoNCE, learnable temperature) of TerraVL's dual encoder against the frozen
    MiniLM text tower (its features are computed once and cached). The image tower: EfficientNet-Lite0 from its
    ImageNet weights (model=terravl-lite0, the shipped v3; frozen_stages=N keeps its first N of 7 stages fixed), a
    small CNN from scratch (model=terravl-cnn, v1/v2), an existing TerraVL model (init=NAME), or an OpenCLIP model.

    Evaluates retrieval (mR) and zero-shot accuracy on each dataset's evaluation split after every epoch, checkpoints every
    epoch, and writes the final model with its config, data checksums and scores to OUT/model. Runs on the CPU (fp32,
    as the shipped model was trained; repeatable with a fixed seed) or a CUDA GPU (--device; mixed precision).

    \b
    Examples:
      terravl train clip --config configs/terravl-default-v3.yaml
      terravl train clip --config configs/terravl-default-v3.yaml --device cuda --out runs/gpu
      terravl train clip --config configs/terravl-default-v3.yaml --out runs/try2 --set frozen_stages=4 --epochs 12
      terravl train clip --config configs/terravl-default-v3.yaml --resume
      terravl train clip --data my_captions.json --set init=terravl-default --epochs 10 --out runs/mine
    """
    from terravl.train.clip import TrainConfig, train as run

    cfg = _config(TrainConfig, config_file, overrides, {
        "data": data, "out": out, "epochs": epochs, "batch_size": batch_size, "lr": lr, "resolution": resolution,
        "seed": seed, "device": device, "threads": threads, "max_steps": max_steps})
    info = run(cfg, resume=resume, log=lambda message: stderr.print(message))
    if fmt == "json":
        emit_json({"out": cfg.out, "scores": info["scores"], "data": info["data"]})
    else:
        table(f"{cfg.out}/model", ["metric", "value"],
              [[k, f"{v:.2f}" if isinstance(v, float) else v] for k, v in info["scores"].items()])


@train.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML file of settings (see configs/terravl-captioner.yaml); options below override it.")
@click.option("--data", help="Karpathy caption JSON (captions + derived questions) or an RSVQA folder. Required, "
                             "here or in --config. Several datasets train together, each scored on its own "
                             "evaluation split: --data A.json,B.json or --set 'data=[A, B]' (with --set "
                             "'eval_split=[test, val]' for one split per dataset).")
@click.option("--out", help="Run folder: checkpoint.pt, best.pt, cache/, model/ (the captioner folder).")
@click.option("--encoder", help="Frozen image encoder (registry name or path). Default: terravl-default.")
@click.option("--lm", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="A local Hugging Face causal LM folder (frozen; only the mapping trains). Default: TerraVL's own "
                   "small decoder, trained from scratch.")
@click.option("--lora", type=click.IntRange(min=0), help="LoRA rank on the language model (0 = frozen).")
@_loop_options("views=1")
def caption(config_file, data, out, encoder, lm, lora, epochs, batch_size, lr, seed, device, threads, max_steps,
            resume, overrides, fmt) -> None:
    """Train a captioning / VQA bridge: frozen image features → trained MLP prefix → causal language model.

    Image features are computed once per image and view (identity, flips) and cached in OUT/cache. Each epoch
    scores greedy captions of a held-out part of the training split (CIDEr-D); the best epoch is written to
    OUT/model with its settings, data checksums and, at the end, its scores on the evaluation split. Runs on the
    CPU or a CUDA GPU (--device); the frozen encoder runs on the same device.

    \b
    Examples:
      terravl train caption --config configs/terravl-captioner.yaml
      terravl train caption --config configs/terravl-captioner.yaml --device cuda --out runs/captioner-gpu
      terravl train caption --data D.json --out runs/gpt2 --lm ~/models/gpt2 --lora 8
      terravl train caption --data A.json,B.json --set 'eval_split=[test, val]' --out runs/both
      terravl train caption --config configs/terravl-captioner.yaml --resume
    """
    from terravl.train.caption import CaptionTrainConfig, train as run

    cfg = _config(CaptionTrainConfig, config_file, overrides, {
        "data": data, "out": out, "encoder": encoder, "lm": str(lm) if lm else None, "lora": lora, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "seed": seed, "device": device, "threads": threads,
        "max_steps": max_steps})
    info = run(cfg, resume=resume, log=lambda message: stderr.print(message))
    _emit_run(cfg.out, info, {"scores": info.get("scores"), "data": info["data"]}, fmt)


@train.command("change-detector")
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML file of settings (see configs/terravl-change.yaml); options below override it.")
@click.option("--data", multiple=True, help="Scene dataset(s) whose train split gives the synthetic pairs (caption "
                                            "JSON or class folders; repeat for several). Required, here or in "
                                            "--config.")
@click.option("--out", help="Run folder: checkpoint.pt, best.pt, cache/, model/ (the change-detector folder).")
@_loop_options("p_buildings=0.6")
def change_detector(config_file, data, out, epochs, batch_size, lr, seed, device, threads, max_steps, resume,
                    overrides, fmt) -> None:
    """Train TerraVL's change detector (a small siamese U-Net) on synthetic before/after pairs made from
    single-date scenes: regions replaced by other scenes, building-like roofs or the scene's own texture, with
    per-date photometric jitter and 1-3 px mis-registration that must not count as change.

    Each epoch (steps_per_epoch steps of fresh pairs) is scored on synthetic pairs from the held-out splits
    (pooled F1 of the change class); the best epoch is written to OUT/model, which
    terravl.models.change_detector.load_change_detector (and `terravl change --detector OUT/model`) loads.

    \b
    Examples:
      terravl train change-detector --config configs/terravl-change.yaml
      terravl train change-detector --config configs/terravl-change.yaml --device cuda --out runs/change-gpu
      terravl train change-detector --config configs/terravl-change.yaml --resume
    """
    from terravl.train.change_detector import ChangeTrainConfig, train as run

    cfg = _config(ChangeTrainConfig, config_file, overrides, {
        "data": list(data) or None, "out": out, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
        "device": device, "threads": threads, "max_steps": max_steps})
    info = run(cfg, resume=resume, log=lambda message: stderr.print(message))
    _emit_run(cfg.out, info, {"steps": info["steps"], "parameters": info["parameters"],
                              "elapsed_s": info["elapsed_s"], "data": info["data"]}, fmt)


@train.command("change-caption")
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML file of settings (see configs/terravl-change-captioner.yaml); options below override it.")
@click.option("--dataset", "data", help="LEVIR-CC folder (LevirCCcaptions.json + images/<split>/A|B/) or its JSON "
                                        "file. Required, here or as `data:` in --config.")
@click.option("--out", help="Run folder: checkpoint.pt, best.pt, cache/, model/ (the change captioner folder), "
                            "predictions-test.json.")
@click.option("--encoder", help="Frozen image encoder for both dates (registry name or path). Default: "
                                "terravl-default.")
@click.option("--fusion", type=click.Choice(["full", "concat", "diff"]),
              help="How the two dates' features meet: full = [a, b, b−a, |b−a|] (default), concat = [a, b], "
                   "diff = [b−a, |b−a|].")
@click.option("--predict-with", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Do not train: caption the evaluation split (eval_split, default test) with this change "
                   "captioner folder into OUT/predictions-SPLIT.json and score it.")
@_loop_options("fusion=concat")
def change_caption(config_file, data, out, encoder, fusion, predict_with, epochs, batch_size, lr, seed, device,
                   threads, max_steps, resume, overrides, fmt) -> None:
    """Train a change captioner on LEVIR-CC: both dates through the frozen image encoder, fused (concatenation and
    difference) → trained MLP prefix → the captioner's decoder.

    Pair features are computed once per date and view and cached in OUT/cache. Each epoch scores greedy captions
    of the val split (CIDEr-D); the best epoch is written to OUT/model. At the end the test split is captioned into
    OUT/predictions-test.json (the file `terravl eval change` reads) and scored. Load the model with
    `terravl change --change-captioner OUT/model` or terravl.models.change_captioner.load_change_captioner.

    \b
    Examples:
      terravl train change-caption --dataset data/Levir-CC-dataset --out runs/levir-cc
      terravl train change-caption --config configs/terravl-change-captioner.yaml --dataset D --device cuda
      terravl train change-caption --dataset D --out runs/levir-cc --predict-with runs/levir-cc/model
      terravl eval change --dataset D --predictions runs/levir-cc/predictions-test.json
    """
    from terravl.train.change_caption import ChangeCaptionTrainConfig, predict, train as run

    cfg = _config(ChangeCaptionTrainConfig, config_file, overrides, {
        "data": data, "out": out, "encoder": encoder, "fusion": fusion, "epochs": epochs, "batch_size": batch_size,
        "lr": lr, "seed": seed, "device": device, "threads": threads, "max_steps": max_steps})
    log = lambda message: stderr.print(message)  # noqa: E731
    info = predict(cfg, predict_with, log=log) if predict_with else run(cfg, resume=resume, log=log)
    result = {"out": cfg.out, "model": str(predict_with or f"{cfg.out}/model"), "best_epoch": info.get("best_epoch"),
              "predictions": info.get("predictions"), "scores": info.get("scores"), "data": info.get("data")}
    if fmt == "json":
        emit_json(result)
        return
    rows = [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in (info.get("best_epoch") or {}).items()]
    rows += [[f"{cfg.eval_split} {group} {k}", f"{v:.4f}"] for group, scores in (info.get("scores") or {}).items()
             for k, v in scores.items() if k in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr")]
    rows += [["predictions", info["predictions"]]] if info.get("predictions") else []
    table(result["model"], ["metric", "value"], rows)


@train.command("grounder")
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML file of settings (see configs/terravl-grounder.yaml); options below override it.")
@click.option("--data-root", help="Folder holding rsicd_aid/ and ucm_captions/ (default ../shared/data).")
@click.option("--out", help="Run folder: cache/ (the frozen tower's maps), checkpoint.pt, model/ (the grounder).")
@click.option("--encoder", help="The TerraVL dual encoder whose frozen tower and text tower the head reads. Default: "
                                "terravl-default.")
@_loop_options("composites=2000")
def grounder(config_file, data_root, out, encoder, epochs, batch_size, lr, seed, device, threads, max_steps, resume,
             overrides, fmt) -> None:
    """Train the referring-segmentation head (terravl-grounder) on composites: scenes of other classes placed as
    regions inside a host scene, from the train splits of rsicd_aid and ucm_captions; the expression (a caption,
    a class phrase or a spatially qualified phrase) names one region, whose mask is the target.

    The tower is frozen: its feature maps are computed once into OUT/cache, then only the head trains. The best
    epoch on composites of scenes kept apart from training is written to OUT/model, which `terravl ground
    --grounder OUT/model` loads. Score it with `terravl eval grounding --grounder OUT/model`.

    \b
    Examples:
      terravl train grounder --config configs/terravl-grounder.yaml
      terravl train grounder --config configs/terravl-grounder.yaml --device cuda --set composites=20000
      terravl train grounder --config configs/terravl-grounder.yaml --resume
    """
    from terravl.train.grounder import GrounderTrainConfig, train as run

    cfg = _config(GrounderTrainConfig, config_file, overrides, {
        "data_root": data_root, "out": out, "encoder": encoder, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "seed": seed, "device": device, "threads": threads, "max_steps": max_steps})
    info = run(cfg, resume=resume, log=lambda message: stderr.print(message))
    _emit_run(cfg.out, info, {"steps": info["steps"], "parameters": info["parameters"],
                              "feature_seconds": info["feature_seconds"], "train_seconds": info["train_seconds"]}, fmt)
