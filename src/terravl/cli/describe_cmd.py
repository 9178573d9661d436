"""``terravl describe``, ``terravl train objects`` and ``terravl eval describe``: a detailed description composed by
small experts (caption, scene, objects, where, counts), the object head it reads, and its measurement (issue 18)."""

from __future__ import annotations

from pathlib import Path

import click

from terravl.cli.output import bands_option, emit_answers, emit_json, format_option, located, stderr, table

_objects_option = click.option("--objects", "objects_name", default=None, metavar="NAME|PATH",
                               help="Object head (registered name or the OUT/model folder of `terravl train "
                                    "objects`). Default: terravl-objects (shipped).")
_captioner_option = click.option("--model", default=None,
                                 help="Captioner name or folder written by `terravl train caption`. Default: "
                                      "terravl-captioner (shipped).")
_encoder_option = click.option("--encoder", default=None,
                               help="Dual encoder the object head reads. Default: the one it was trained on "
                                    "(terravl-default-v2).")


def _experts(model: str | None, objects_name: str | None, encoder: str | None):
    from terravl.tasks.describe import Experts

    enc = None
    if encoder is not None:
        import terravl.models as m

        enc = m.load(encoder)
    return Experts(encoder=enc, captioner=model, objects=objects_name)


def _object_text(part) -> str:
    bits = [part.name]
    if part.count:
        bits.append(f"×{part.count}")
    if part.position:
        bits.append(part.position)
    if part.score is not None:
        bits.append(f"({part.score:.2f})")
    return " ".join(bits)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@_captioner_option
@_objects_option
@_encoder_option
@click.option("--max-objects", default=4, show_default=True, type=click.IntRange(0, 20),
              help="Objects the text names (the JSON parts list all found).")
@click.option("--beams", type=int, help="Beam width of the caption, 1 (greedy) to 8. Default: the model's.")
@click.option("--tile-size", default=256, show_default=True, type=click.IntRange(min=16),
              help="Rasters larger than twice this are described tile by tile.")
@bands_option()
@format_option()
def describe(images, model, objects_name, encoder, max_objects, beams, tile_size, bands, fmt) -> int:
    """A detailed description of each of IMAGES (2–4 sentences), composed by small experts: the captioner's
    sentence, the scene type (zero-shot over the AID and UCM classes), the objects present (the object head), where
    they are (the tower's dense features) and how many (the caption's number words). --format json gives the
    parts too: scene with probability, objects with scores, counts, positions and coverage.

    \b
    Examples:
      terravl describe ../shared/data/ucm_captions/images/harbor/harbor05.jpg
      terravl describe scene.jpg other.jpg --format json
      terravl describe big.tif --tile-size 512 --max-objects 3
    """
    from terravl.tasks.describe import describe as describe_task

    answers = describe_task(list(images), experts=_experts(model, objects_name, encoder), max_objects=max_objects,
                            beams=beams, tile_size=tile_size, bands=bands or "auto")
    return emit_answers(answers, fmt, None, ["path", "description", "scene", "objects"],
                        lambda r: [located(r), r.description, f"{r.scene.label} ({r.scene.probability:.2f})",
                                   "; ".join(_object_text(p) for p in r.objects)])


@click.command("objects")
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="YAML file of settings (see configs/terravl-objects.yaml); options below override it.")
@click.option("--out", help="Run folder: OUT/cache (the frozen image embeddings), OUT/model (the head: objects.json, "
                            "model.safetensors, training.json).")
@click.option("--encoder", help="Dual encoder whose frozen image embedding the head reads. Default: terravl-default.")
@click.option("--epochs", type=int)
@click.option("--seed", type=int)
@click.option("--threads", type=int, help="torch CPU threads (default 1).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any other setting, e.g. --set hidden=256")
@format_option()
def train_objects(config_file, out, encoder, epochs, seed, threads, overrides, fmt) -> None:
    """Train the multi-label object head: UC Merced's 17 object multi-labels and the object nouns the captions name,
    from the TRAIN splits of the caption datasets in the config, over the frozen image embedding (computed once,
    cached in OUT/cache; training then takes seconds). Thresholds and dev scores come from a held-apart share of
    the train images; measure on val/test with `terravl eval describe --objects OUT/model`.

    \b
    Examples:
      terravl train objects --config configs/terravl-objects.yaml
      terravl train objects --config configs/terravl-objects.yaml --out runs/objects-mlp --set hidden=256
    """
    from terravl.cli.train_cmd import _config
    from terravl.train.object_head import ObjectsTrainConfig, train

    cfg = _config(ObjectsTrainConfig, config_file, overrides, {"out": out, "encoder": encoder, "epochs": epochs,
                                                               "seed": seed, "threads": threads})
    info = train(cfg, log=lambda message: stderr.print(message))
    dev = info["dev"]
    result = {"out": cfg.out, "model": info["model"], "images": info["images"], "labels": info["labels"],
              "seconds": info["seconds"], "embed_seconds": info["embed_seconds"],
              "train_seconds": info["train_seconds"], "size_bytes": info["size_bytes"],
              "dev": {k: v for k, v in dev.items() if k != "labels"}}
    if fmt == "json":
        emit_json(result)
        return
    table(info["model"], ["metric", "value"],
          [["training images", info["images"]], ["labels", info["labels"]], ["seconds", info["seconds"]],
           ["size (bytes)", info["size_bytes"]], *[[f"dev {k} %", v] for k, v in result["dev"].items()]])


@click.command("describe")
@click.option("--dataset", required=True, type=click.Path(path_type=Path), help="Karpathy caption JSON with images.")
@click.option("--split", default="test", show_default=True, help="A held-apart split (val or test).")
@click.option("--limit", type=click.IntRange(min=1), help="Describe only the first N images (quick checks).")
@_captioner_option
@_objects_option
@_encoder_option
@click.option("--no-meteor", is_flag=True, help="Skip METEOR (the slowest metric; needs Java).")
@click.option("--save-predictions", type=click.Path(path_type=Path, dir_okay=False),
              help="Write each image's caption and description here (JSON).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Also write the result as JSON here.")
@format_option()
def eval_describe(dataset: Path, split: str, limit: int | None, model: str | None, objects_name: str | None,
                  encoder: str | None, no_meteor: bool, save_predictions: Path | None, out: Path | None,
                  fmt: str) -> None:
    """The composed description against the single captioner on a held-apart split: coco-caption scores (CIDEr…)
    of both against the reference captions, and object recall (the share of a reference caption's object words
    the text mentions) with object precision beside it. Longer descriptions score lower on n-gram metrics
    against one-sentence references; object recall is what they add.

    \b
    Examples:
      terravl eval describe --dataset ../shared/data/ucm_captions/dataset_ucm_captions.json --split val
      terravl eval describe --dataset ../shared/data/rsicd_aid/dataset_rsicd_aid.json --split test --limit 50
    """
    import json

    from terravl.cli.eval_cmd import _finish, _write
    from terravl.eval.describe import eval_describe as run

    result = run(dataset, lambda: _experts(model, objects_name, encoder), split, limit=limit, meteor=not no_meteor)
    predictions = result.pop("predictions")
    if save_predictions:
        _write(save_predictions, json.dumps(predictions, indent=1) + "\n")

    def render(r):
        metrics = list(r["scores"]["caption"])
        rows = [[who, *[f"{r['scores'][who][k]:.4f}" for k in metrics],
                 r["object_recall"][who], r["object_precision"][who], r["words"][who]]
                for who in ("caption", "description")]
        table(f"describe vs caption: {r['split']} split of {Path(r['dataset']).name} ({r['images']} images)",
              ["text", *metrics, "object recall %", "object precision %", "words"], rows)
        if r.get("object_head"):
            table("object head", list(r["object_head"]), [list(r["object_head"].values())])

    _finish(result, fmt, out, render)
