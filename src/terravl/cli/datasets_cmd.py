"""``terravl datasets``: check what a dataset folder or file holds before training or evaluating on it."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.text import Text
from tqdm import tqdm

from terravl.cli.output import emit_json, format_option, report_problems, shown, stdout, table
from terravl.datasets import READERS, inspect_dataset


@click.group()
def datasets() -> None:
    """Inspect remote-sensing datasets in their published formats."""


@datasets.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--dataset-format", "dataset_format", type=click.Choice([r.format for r in READERS]), default=None,
              help="Skip detection and read PATH as this format.")
@click.option("--check-images/--no-check-images", default=True, show_default=True,
              help="Open every image file the dataset names (header only) and report unreadable ones.")
@click.option("--deep", is_flag=True, help="Fully decode every image (finds truncated files; slower).")
@format_option()
def inspect(path: Path, dataset_format: str | None, check_images: bool, deep: bool, fmt: str) -> None:
    """Detect PATH's format and print its counts per split and class, and every problem found.

    \b
    Formats: scene-folders (UCM, AID, RESISC45, EuroSAT, WHU-RS19, PatternNet), karpathy-captions
    (UCM-Captions, Sydney-Captions, RSICD, RSITMD), retrieval-splits (AMFMN *_filename.txt/*_caps.txt),
    rsvqa (LR/HR), levir-cc, levir-cd.

    \b
    Examples:
      terravl datasets inspect data/rsicd_aid/dataset_rsicd_aid.json
      terravl datasets inspect data/aid_150px --format json
    """
    summary = inspect_dataset(path, dataset_format, check_images, deep,
                              progress=lambda it: tqdm(it, desc="checking images", unit="img", disable=None,
                                                       file=sys.stderr))
    if fmt == "json":
        emit_json(summary)
        return
    stdout.print(Text.assemble((shown(summary["path"]), "bold"), f": {summary['format']}"))
    extras = {k: v for k, v in summary.items() if k not in ("format", "path", "splits", "classes", "problems")}
    table("counts", ["", "value"], [[k, v] for k, v in extras.items() if not isinstance(v, dict)] +
          [[f"split {k}", v] for k, v in summary["splits"].items()])
    if summary["classes"]:
        table("images per class", ["class", "images"], [[k, v] for k, v in summary["classes"].items()])
    for key, value in extras.items():
        if isinstance(value, dict):
            table(key, ["", "count"], [[k, v] for k, v in value.items()])
    report_problems(summary["problems"])
    stdout.print(f"{len(summary['problems'])} problem(s)")
