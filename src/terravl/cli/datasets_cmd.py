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
    """Inspect remote-sensing datasets in their published formats, and build new ones from your own region."""


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
    rsvqa (LR/HR), levir-cc, levir-cd, and what `terravl datasets build` writes: terravl-captions,
    llava-instructions.

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


@datasets.group()
def build() -> None:
    """Build training data from your own region: caption sets from rasters and OpenStreetMap (or other vector)
    data, and instruction data (LLaVA conversations) from caption sets."""


@build.command("captions")
@click.option("--rasters", "rasters", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A georeferenced raster to tile (repeat --rasters for several).")
@click.option("--vectors", "vectors", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A vector file (repeat for several): OpenStreetMap .osm.pbf / .osm, GeoJSON, GeoPackage, "
                   "Shapefile, …")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the chips, captions.json, tiles.geojson and the dataset card.")
@click.option("--tile-size", default=256, show_default=True, type=click.IntRange(min=16, max=8192),
              help="Tile (chip) side in pixels.")
@click.option("--min-coverage", default=0.05, show_default=True, type=click.FloatRange(0, 1),
              help="Least share of a tile an object must cover to be named (lines: length over the tile's side).")
@click.option("--filter-model", default=None, metavar="NAME|PATH",
              help="Encoder that scores each caption against its chip (SkyScript's filter); needs --min-score.")
@click.option("--min-score", default=None, type=float, help="Drop captions whose cosine similarity is below this.")
@click.option("--val-fraction", default=0.1, show_default=True, type=click.FloatRange(0, 0.5),
              help="Share of tile blocks in the 'val' split.")
@click.option("--test-fraction", default=0.1, show_default=True, type=click.FloatRange(0, 0.5),
              help="Share of tile blocks in the 'test' split (what `terravl train clip` scores on by default).")
@click.option("--vector-crs", default=None, metavar="CRS",
              help="CRS of vector files that declare none (a Shapefile without .prj), e.g. EPSG:4326.")
@click.option("--whitelist", default=None, type=click.Path(path_type=Path, dir_okay=False),
              help="Tag whitelist YAML (default: the one shipped, terravl/datasets/builder/tags.yaml).")
@format_option()
def build_captions_cmd(rasters: tuple[Path, ...], vectors: tuple[Path, ...], out_dir: Path, tile_size: int,
                       min_coverage: float, filter_model: str | None, min_score: float | None, val_fraction: float,
                       test_fraction: float, vector_crs: str | None, whitelist: Path | None, fmt: str) -> int:
    """Caption every tile of RASTERS from the VECTORS features it shows (SkyScript's recipe, on your region).

    Features are reprojected to each raster's CRS; only tags visible from above are kept (the whitelist), each
    weighed by the share of the tile it covers, and one to three captions are written per tile ("an aerial image
    of a golf course with a parking lot and a pond"). Bad inputs (a vector file without a CRS, invalid
    geometries, files that do not overlap, …) are reported on one line each and the build goes on; the dataset
    card (OUT/README.md, OUT/card.json) counts what was skipped and why. OpenStreetMap data is ODbL: the card says
    how to attribute it. Real use needs your own extract of your region.

    \b
    Examples:
      terravl datasets build captions --rasters scene.tif --vectors region.osm.pbf --out mycaps/
      terravl datasets build captions --rasters a.tif --rasters b.tif --vectors fields.gpkg --out caps/ \\
          --filter-model terravl-default --min-score 0.2
      terravl train clip --data mycaps/captions.json --out runs/mine
    """
    from terravl.datasets.builder.captions import build_captions

    result = build_captions(list(rasters), list(vectors), out_dir, tile_size, min_coverage, filter_model, min_score,
                            val_fraction, test_fraction, vector_crs, whitelist,
                            log=lambda m: click.echo(m, err=True))
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        table("objects", ["object", "tiles", "features", "main object of"],
              [[k, t["tiles"], t["features"], t["main_object"]] for k, t in result.tags.items()])
        table("skipped tiles", ["reason", "tiles"], [[k, v] for k, v in result.skipped_tiles.items()])
        stdout.print(f"{result.images} images, {result.captions} captions "
                     f"({', '.join(f'{k} {v}' for k, v in result.splits.items())}) → {result.files['captions']}")
    report_problems([p.to_dict() for p in result.problems])
    return 0


@build.command("instructions")
@click.option("--dataset", "dataset", required=True, type=click.Path(path_type=Path),
              help="Caption set: Karpathy caption JSON, or the output of `terravl datasets build captions`.")
@click.option("--labels", default=None, type=click.Path(path_type=Path, dir_okay=False),
              help="Labels per image: JSON {filename: [labels] | {label: count}} or CSV (image, one column per "
                   "label, 0/1 or counts). Default: the dataset's own labels.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for llava_<split>.json, composites/ and the card.")
@click.option("--grounding", default=0, show_default=True, type=click.IntRange(0, 100000),
              help="Region-grounding conversations per split, on composites of that split's images.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Use only the first N images.")
@click.option("--seed", default=0, show_default=True, type=int)
@format_option()
def build_instructions_cmd(dataset: Path, labels: Path | None, out_dir: Path, grounding: int, limit: int | None,
                           seed: int, fmt: str) -> int:
    """Instruction data (RS-GPT4V / GAIA style) from a caption set: per image a short caption, a detailed
    description, yes/no and open questions, counting where the annotations give a number, and (with
    --grounding N) region grounding on composites, as LLaVA conversation JSON. Every answer comes from the
    annotations, never from a model.

    \b
    Examples:
      terravl datasets build instructions --dataset data/ucm_captions/dataset_ucm_captions.json --out ucm_llava/
      terravl datasets build instructions --dataset mycaps/ --grounding 500 --out mycaps_llava/
    """
    from terravl.datasets.builder.instructions import build_instructions

    result = build_instructions(dataset, out_dir, labels, grounding, seed, limit,
                                log=lambda m: click.echo(m, err=True))
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        table("conversations", ["split", "conversations"], [[k, v] for k, v in result.splits.items()])
        table("turns", ["type", "turns"], [[k, v] for k, v in result.turn_types.items()])
        stdout.print(f"{result.images} images, {result.conversations} conversations, {result.turns} turns → "
                     f"{result.out_dir}")
    report_problems([p.to_dict() for p in result.problems])
    return 0
