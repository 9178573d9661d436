"""Entry point of the ``terravl`` command. Exit codes: 0 ok, 1 failure, 2 bad usage or input."""

from __future__ import annotations

import logging
import sys

import click

from terravl import __version__
from terravl.cli.caption_cmd import ask, caption
from terravl.cli.change_cmd import change
from terravl.cli.chat_cmd import chat
from terravl.cli.datasets_cmd import datasets
from terravl.cli.describe_cmd import describe, eval_describe, train_objects
from terravl.cli.eval_cmd import eval as eval_group
from terravl.cli.ground_cmd import ground
from terravl.cli.index_cmd import classify, index, localize, search
from terravl.cli.kb_cmd import kb
from terravl.cli.info_cmd import info
from terravl.cli.mcp_cmd import mcp
from terravl.cli.models_cmd import models
from terravl.cli.router_cmd import eval_router, train_router
from terravl.cli.serve_cmd import serve
from terravl.cli.tiles_cmd import tiles
from terravl.cli.train_cmd import train
from terravl.errors import InputError, TerraVLError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="terravl")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """TerraVL: ask questions of satellite and aerial imagery in plain language.

    \b
    Start here:
      terravl info                                 what is installed, which models are found
      terravl index build FOLDER --out A.idx       embed an imagery archive (crash-safe, resumable)
      terravl search A.idx "a harbor with boats"   find scenes by text (or --image), --bbox, --date-from
      terravl classify scene.jpg --classes aid     zero-shot scene classification
      terravl localize scene.tif "a river" --out heat.tif
                                                   where in a large scene is the text? (heat map)
      terravl caption scene.jpg                    describe an image (large GeoTIFFs: per tile, with footprints)
      terravl describe scene.jpg                   a detailed description: scene, objects, where, how many
      terravl ask scene.jpg "is there a bridge?"   answer a question about an image
      terravl kb build docs/ scenes/ --out site.kb a knowledge base of images and text (crash-safe, resumable)
      terravl ask --kb site.kb "when did it burn?" an answer with numbered citations (RS-RAG; + IMAGE too)
      terravl change before.tif after.tif --out chg/
                                                   what changed between two dates (GeoTIFF, GeoJSON, caption)
      terravl ask --before a.tif --after b.tif "how much changed?"
                                                   a question about the change
      terravl ground scene.tif "the storage tanks" --out found/
                                                   find what an expression names (mask, boxes, GeoJSON)
      terravl chat scene.tif                       talk to an image: caption, ask, count, locate, compare…
      terravl tiles scene.tif --size 256 --out chips
                                                   cut a raster into georeferenced chips
      terravl serve A.idx                          web map + HTTP API over an index (http://127.0.0.1:8000/)
      terravl mcp --index A.idx                    the same capabilities as tools for AI assistants (MCP)
      terravl datasets inspect PATH                a dataset's format, splits, classes, problems
      terravl models list                          registered models, and whether their weights are here
      terravl eval retrieval --dataset D           the papers' benchmark tables, exact metrics
      terravl train clip --config C.yaml           train or fine-tune a dual encoder
      terravl train caption --config C.yaml        train a captioner / VQA bridge (own decoder or your LM)

    Every command takes --format json (result on stdout, logs on stderr).
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # GDAL/libtiff notes on a file's structure ("ExtraSamples …"): -v shows them
        logging.getLogger("rasterio._env").setLevel(logging.ERROR)


cli.add_command(info)
cli.add_command(tiles)
cli.add_command(datasets)
cli.add_command(models)
cli.add_command(index)
cli.add_command(search)
cli.add_command(classify)
cli.add_command(localize)
cli.add_command(caption)
cli.add_command(ask)
cli.add_command(describe)
cli.add_command(kb)
cli.add_command(change)
cli.add_command(ground)
cli.add_command(chat)
cli.add_command(eval_group, name="eval")
cli.add_command(train)
eval_group.add_command(eval_router, name="router")
train.add_command(train_router, name="router")
eval_group.add_command(eval_describe, name="describe")
train.add_command(train_objects, name="objects")
cli.add_command(serve)
cli.add_command(mcp)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; typed errors become one clear line on stderr and an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="terravl", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_FAILURE
    except click.ClickException as exc:
        exc.show()
        return EXIT_BAD_INPUT if isinstance(exc, click.UsageError) or exc.exit_code == 2 else EXIT_FAILURE
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_BAD_INPUT
    except TerraVLError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
