"""``terravl tiles``: cut rasters into georeferenced chips with a GeoJSON index of their footprints."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from tqdm import tqdm

from terravl.cli.output import emit_json, format_option, report_problems, stderr, table
from terravl.io import BAND_PROFILES, MAX_TILE_SIZE, write_tiles
from terravl.validation import check_bands


@click.command()
@click.argument("rasters", nargs=-1, required=True, type=click.Path())
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=8, max=MAX_TILE_SIZE),
              help=f"Tile size in pixels (at most {MAX_TILE_SIZE}).")
@click.option("--overlap", default=0, show_default=True, type=click.IntRange(min=0),
              help="Pixels shared by neighbouring tiles (stride = size - overlap).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the chips and tiles.geojson.")
@click.option("--chip-format", type=click.Choice(["png", "tif"]), default="png", show_default=True,
              help="png: 8-bit RGB chips; tif: the same as georeferenced GeoTIFFs with a validity mask.")
@click.option("--bands", default=None, metavar="PROFILE|R,G,B",
              help=f"Bands to show as RGB: {', '.join(BAND_PROFILES)} or 1-based indexes. Default: auto.")
@click.option("--stretch", type=click.Choice(["auto", "percentile", "none"]), default="auto", show_default=True,
              help="auto: keep 8-bit data, 2-98 %% percentile stretch for 16-bit and float data.")
@format_option()
def tiles(rasters: tuple[str, ...], size: int, overlap: int, out_dir: Path, chip_format: str, bands: str | None,
          stretch: str, fmt: str) -> int:
    """Cut RASTERS (GeoTIFF, PNG, JPEG, …) into SIZE×SIZE chips and write OUT/tiles.geojson.

    Tiles are read one window at a time, so rasters of any size tile at constant memory. Edge tiles are
    zero-padded and flagged "partial"; each feature's polygon (WGS84 lon/lat) covers the tile's real pixels, so
    the footprints cover the raster exactly. A file that cannot be read is reported on one line and the others
    go on. An --out folder that cannot be written ends the run with an error (exit 1), and no index is written.

    \b
    Examples:
      terravl tiles scene.tif --size 256 --overlap 32 --out chips/
      terravl tiles s2.tif --bands sentinel2 --chip-format tif --out chips/ --format json
    """
    if overlap >= size:
        raise click.BadParameter(f"must be smaller than --size ({size})", param_hint="--overlap")
    band_sel = check_bands(bands, BAND_PROFILES)
    with tqdm(desc="tiles", unit="tile", disable=None, file=sys.stderr) as bar:
        result = write_tiles(list(rasters), out_dir, size, overlap, chip_format, band_sel, stretch, bar.update)
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        table(None, ["source", "tiles"], [[s["path"], s["tiles"]] for s in result.sources])
        stderr.print(f"{result.tiles} tiles ({result.partial} partial) → {result.geojson}")
    report_problems([p.to_dict() for p in result.problems])
    return 2 if result.problems and not result.sources else 0
