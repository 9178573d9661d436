"""``terravl ground``: find what an expression refers to in an image, as boxes, a mask and polygons on the map."""

from __future__ import annotations

from pathlib import Path

import click

from terravl.cli.output import bands_option, emit_json, shown, stdout, table

METHOD_HELP = ("trained: the shipped referring-segmentation head (terravl-grounder) over the encoder's frozen "
               "tower. baseline: training-free dense image–text similarity of the tower's feature maps, refined "
               "with superpixels, automatic threshold. auto: trained when its weights are here, else baseline.")


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.argument("expression")
@click.option("--all", "all_", is_flag=True, help="Every instance found, best first (default: the best one).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for mask.tif (1 the answer, 2 other matches, 0 none, 255 no data; georeferenced like "
                   "IMAGE), score.tif, regions.geojson, preview.png and ground.json.")
@click.option("--method", type=click.Choice(["auto", "trained", "baseline"]), default="auto", show_default=True,
              help=METHOD_HELP)
@click.option("--model", default=None, help="Dual encoder (a TerraVL CNN encoder). Default: the one the grounder "
                                            "was trained on (terravl-default).")
@click.option("--grounder", "grounder_path", default=None, metavar="NAME|FOLDER",
              help="A grounder from `terravl train grounder` (default: the shipped terravl-grounder).")
@click.option("--refiner", type=click.Path(path_type=Path), default=None,
              help="A SAM-family model folder on disk (transformers SamModel: config.json + weights) that redraws "
                   "each instance the trained head finds from its box. Never downloaded.")
@click.option("--min-region-pixels", default=16, show_default=True, type=click.IntRange(min=1),
              help="Matched regions smaller than this are speckle.")
@click.option("--max-pixels", default=None, type=click.IntRange(min=1),
              help="Largest image in pixels (default 1,000,000,000): larger ones are refused before any pixel is "
                   "read.")
@bands_option()
@click.option("--format", "fmt", type=click.Choice(["table", "json", "geojson"]), default="table",
              show_default=True, help="A human table, the result as JSON, or the regions as GeoJSON.")
def ground(image, expression, all_, out, method, model, grounder_path, refiner, min_region_pixels, max_pixels,
           bands, fmt) -> int:
    """Find what EXPRESSION refers to in IMAGE: a box, a mask and polygons with their area.

    IMAGE is any raster (JPEG, PNG, GeoTIFF of any size: large ones are scored tile by tile at constant memory).
    The answer is the best matching region (every one with --all), each with a score (mean probability), its box
    (pixel window, and WGS84 polygon when IMAGE is georeferenced; pixel coordinates only, said so, when it is
    not), its area and its outline. When nothing matches, the answer is empty and says the best score seen.

    \b
    Examples:
      terravl ground scene.tif "the storage tanks next to the river" --out found/
      terravl ground scene.jpg "the larger of the two parking lots" --format json
      terravl ground big.tif "a river" --all --format geojson > river.geojson
      terravl ground scene.jpg "the beach in the top right" --method baseline
      terravl ground scene.tif "the swimming pools" --all --refiner ~/models/sam-vit-base
    """
    from terravl.tasks.ground import DEFAULT_MAX_PIXELS, check_expression
    from terravl.tasks.ground import ground as ground_task

    expression = check_expression(expression)  # a clear error before any model loads
    encoder = grounder = None
    if model is not None:
        import terravl.models as m

        encoder = m.load(model)
    if grounder_path is not None:
        from terravl.models.grounder import load_grounder

        grounder = load_grounder(grounder_path, encoder)
    result = ground_task(image, expression, encoder, all=all_, out=out, method=method, grounder=grounder,
                         min_region_pixels=min_region_pixels, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                         bands=bands or "auto", refiner=refiner)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if fmt == "json":
        emit_json(result.to_dict())
    elif fmt == "geojson":
        emit_json(result.regions)
    else:
        _table(result)
    return 0


def _area(value: float | None, pixels: int) -> str:
    """Imported on use: terravl.tasks loads torch (seconds at every CLI start)."""
    from terravl.tasks.change_text import area_text

    return area_text(value, pixels)


def _table(result) -> None:
    if not result.found:
        stdout.print(shown(f"nothing in {result.path} matches {result.expression!r} "
                           f"(best score {result.best_score:.3f}, a match needs {result.floor:.2f}; {result.method})"))
    else:
        pixel = result.coordinates == "pixel"
        table(f"{result.expression!r} in {result.path} ({result.method}; {len(result.instances)} of "
              f"{result.matches} match(es))",
              ["#", "score", "box (col,row w×h)", "area", "position"] + ([] if pixel else ["box (WGS84 lon/lat)"]),
              [[i["rank"], f"{i['score']:.3f}",
                f"{i['window']['col_off']},{i['window']['row_off']} {i['window']['width']}×{i['window']['height']}",
                _area(i["area_m2"], i["pixels"]), i["position"]] +
               ([] if pixel else [_lonlat(i["box"])]) for i in result.instances])
    for name, path in (result.outputs or {}).items():
        stdout.print(f"{name}: {shown(path)}")


def _lonlat(box: dict | None) -> str:
    if not box:
        return ""
    ring = box["coordinates"][0]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    return f"{min(lons):.5f},{min(lats):.5f} … {max(lons):.5f},{max(lats):.5f}"
