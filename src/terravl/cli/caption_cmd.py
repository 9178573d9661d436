"""``terravl caption`` and ``terravl ask``: describe images and answer questions about them, offline."""

from __future__ import annotations

from pathlib import Path

import click

from terravl.cli.output import emit_json, format_option, report_problems, table

_captioner_option = click.option("--model", default=None,
                                 help="Captioner name or folder written by `terravl train caption`. "
                                      "Default: terravl-captioner (shipped).")
_tile_option = click.option("--tile-size", default=256, show_default=True, type=click.IntRange(min=16),
                            help="Rasters larger than twice this are described tile by tile.")


def _window(row: dict) -> str:
    w = row.get("window")
    return "" if not w else f" @{w['col_off']},{w['row_off']} {w['width']}×{w['height']}"


def _load(model: str | None, method: str = "generate", bank: Path | None = None, encoder: str | None = None,
          k: int = 1):
    import terravl.models as m

    if method == "retrieval":
        if bank is None:
            raise click.UsageError("--method retrieval needs --bank: a caption dataset whose train split is the "
                                   "caption bank")
        from terravl import config
        from terravl.models.retrieval_captioner import RetrievalCaptioner

        return RetrievalCaptioner.from_dataset(m.load(encoder or m.DEFAULT_MODEL), bank, "train", k,
                                               config.terravl_home() / "cache")
    return m.load_captioner(model or m.DEFAULT_CAPTIONER)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@_captioner_option
@click.option("--method", type=click.Choice(["generate", "retrieval"]), default="generate", show_default=True,
              help="generate: the captioner writes a sentence. retrieval: the caption of the nearest image of "
                   "--bank (the field's strong, cheap baseline).")
@click.option("--bank", type=click.Path(path_type=Path, exists=True),
              help="Caption dataset (Karpathy JSON) whose train split is the retrieval bank.")
@click.option("--k", default=1, show_default=True, type=click.IntRange(min=1),
              help="Retrieval: neighbours whose captions vote for the consensus caption.")
@click.option("--beams", type=click.IntRange(min=1), help="Beam width (1 = greedy). Default: the model's (3).")
@click.option("--max-tokens", type=click.IntRange(min=1, max=256), help="Longest caption in tokens. Default: 40.")
@_tile_option
@format_option()
def caption(images, model, method, bank, k, beams, max_tokens, tile_size, fmt) -> int:
    """Describe IMAGES (files, folders, large GeoTIFFs per tile) in one sentence each.

    \b
    Examples:
      terravl caption ../shared/data/aid_150px/images/Port/port_1.jpg
      terravl caption scene.tif --tile-size 512 --format json      # one caption per tile, with its footprint
      terravl caption img.jpg --method retrieval --bank ../shared/data/rsicd_aid/dataset_rsicd_aid.json
      terravl caption img.jpg --model runs/my-captioner/model --beams 5
    """
    from terravl.tasks import caption as caption_task

    results = caption_task(list(images), _load(model, method, bank, k=k), beams=beams, max_tokens=max_tokens,
                           tile_size=tile_size)
    failed = [r for r in results if "error" in r]
    if fmt == "json":
        emit_json(results)
    else:
        table(None, ["path", "caption"], [[r["path"] + _window(r), r["caption"]] for r in results if "error" not in r])
    report_problems(failed)
    return 2 if failed and len(failed) == len(results) else 0


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.argument("question")
@_captioner_option
@click.option("--beams", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--max-tokens", default=12, show_default=True, type=click.IntRange(min=1, max=256))
@_tile_option
@format_option()
def ask(images, question, model, beams, max_tokens, tile_size, fmt) -> int:
    """Answer QUESTION about each of IMAGES (the last argument is the question).

    The shipped model was trained on questions derived from scene classes and captions: the kind of area ("what
    kind of area is this?"), whether an object is there ("is there a bridge?", yes/no) and whether the scene is of
    a given class ("is this a port area?"). Other questions get an answer in the same vocabulary, with less skill.

    \b
    Examples:
      terravl ask ../shared/data/aid_150px/images/Port/port_1.jpg "what kind of area is this?"
      terravl ask scene.jpg "is there a bridge in this image?" --format json
    """
    from terravl.tasks import ask as ask_task

    results = ask_task(list(images), question, _load(model), beams=beams, max_tokens=max_tokens, tile_size=tile_size)
    failed = [r for r in results if "error" in r]
    if fmt == "json":
        emit_json(results[0] if len(results) == 1 and not failed else results)
    else:
        table(question, ["path", "answer"], [[r["path"] + _window(r), r["answer"]] for r in results if "error" not in r])
    report_problems(failed)
    return 2 if failed and len(failed) == len(results) else 0
