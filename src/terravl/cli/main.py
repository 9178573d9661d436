"""Entry point of the ``terravl`` command. Exit codes: 0 ok, 1 failure, 2 bad usage or input."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from terravl import __version__
from terravl.errors import InputError, TerraVLError

COMMANDS = {
    "info": "info_cmd:info", "tiles": "tiles_cmd:tiles", "datasets": "datasets_cmd:datasets",
    "models": "models_cmd:models", "index": "index_cmd:index", "search": "index_cmd:search",
    "classify": "index_cmd:classify", "localize": "index_cmd:localize", "caption": "caption_cmd:caption",
    "ask": "caption_cmd:ask", "describe": "describe_cmd:describe", "kb": "kb_cmd:kb", "change": "change_cmd:change",
    "ground": "ground_cmd:ground", "chat": "chat_cmd:chat", "eval": "eval_cmd:eval", "train": "train_cmd:train",
    "serve": "serve_cmd:serve", "mcp": "mcp_cmd:mcp",
}
"""Each command and where it lives (``module:attribute`` under ``terravl.cli``): imported when it runs."""
SUBCOMMANDS = {
    "eval": {"router": "router_cmd:eval_router", "describe": "describe_cmd:eval_describe"},
    "train": {"router": "router_cmd:train_router", "objects": "describe_cmd:train_objects"},
}
"""Commands of a group defined in another module, joined to the group when it is loaded."""


def _import(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(f"terravl.cli.{module}"), attr)


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs (or help lists it): ``terravl search``
    then loads what search needs, not rasterio, the datasets and every other command (about a second)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            command = _import(COMMANDS[name])
            for sub, target in SUBCOMMANDS.get(name, {}).items():
                command.add_command(_import(target), name=sub)
            self.add_command(command, name=name)
        return self.commands.get(name)


EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
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


def all_commands() -> dict[str, click.Command]:
    """Every command, loaded (for tools that walk the whole tree: the probe test, docs)."""
    ctx = click.Context(cli)
    return {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}


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


QUERY_COMMANDS = frozenset({"search", "kb", "serve", "mcp", "chat"})
"""Commands that answer queries one after another (FAISS searches between text encodings): their process gets
:func:`terravl.index.faiss_runtime.openmp_spin_default`. Training and batch commands keep libgomp's default, which
suits long runs of PyTorch's small parallel sections on many cores."""


def entry(argv: list[str] | None = None) -> int:
    """The ``terravl`` console script: :func:`main`, where a query command's OpenMP threads sleep soon after a
    parallel section (set before anything loads OpenMP or starts a thread). Tests and embedding programs call
    :func:`main`, which leaves the environment alone."""
    args = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in args if not arg.startswith("-")), None)
    if command in QUERY_COMMANDS:
        from terravl.index.faiss_runtime import openmp_spin_default

        openmp_spin_default()
    return main(argv)


if __name__ == "__main__":
    sys.exit(entry())
