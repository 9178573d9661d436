"""``terravl change``: what changed between two dates (or along a series), as GeoTIFFs, GeoJSON and a caption."""

from __future__ import annotations

from pathlib import Path

import click

from terravl.cli.output import bands_option, emit_json, shown, stdout, table

METHOD_HELP = ("trained: the shipped change detector (or --detector). cva: change vector analysis on radiometrically "
               "normalised pixels, automatic (Otsu) threshold. embedding: distance of sliding-window embeddings of "
               "the dual encoder, Otsu threshold.")


def change_options(func):
    """Options shared by ``terravl change`` and ``terravl ask --before/--after``: how change is measured."""
    for option in reversed([
        click.option("--method", type=click.Choice(["trained", "cva", "embedding"]), default="trained",
                     show_default=True, help=METHOD_HELP),
        click.option("--detector", type=click.Path(path_type=Path), default=None,
                     help="A change detector folder from `terravl train change-detector` (--method trained)."),
        click.option("--min-overlap", default=0.05, show_default=True, type=click.FloatRange(0.0, 1.0),
                     help="Smallest overlap accepted, as a fraction of the before image."),
        click.option("--min-region-pixels", default=16, show_default=True, type=click.IntRange(min=1),
                     help="Changed regions smaller than this are speckle, not change."),
        click.option("--max-pixels", default=None, type=click.IntRange(min=1),
                     help="Largest overlap in pixels (default 1,000,000,000 ≈ 31,600²): larger pairs are refused "
                          "before any pixel is read."),
        bands_option(),
    ]):
        func = option(func)
    return func


def change_kwargs(method, detector, min_overlap, min_region_pixels, max_pixels, bands) -> dict:
    """The options of :func:`change_options` as :func:`terravl.tasks.change` keyword arguments."""
    from terravl.tasks.change import DEFAULT_MAX_PIXELS

    kwargs = {"method": method, "min_overlap": min_overlap, "min_region_pixels": min_region_pixels,
              "max_pixels": max_pixels or DEFAULT_MAX_PIXELS, "bands": bands or "auto"}
    if detector is not None:
        from terravl.models.change_detector import load_change_detector

        kwargs["detector"] = load_change_detector(detector)
    return kwargs


@click.command()
@click.argument("rasters", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for change.tif, mask.tif, regions.geojson, preview.png and change.json (with --series: a "
                   "folder per pair, timeline.json and timeline.png).")
@click.option("--series", is_flag=True,
              help="RASTERS is a time series (two or more): every consecutive pair, ordered by acquisition date "
                   "(metadata, or a date or year in the file name).")
@change_options
@click.option("--classes", default="aid", show_default=True,
              help="Built-in class list for the regions' scene class on each date (aid, ucm, resisc45, …).")
@click.option("--no-describe", is_flag=True, help="Skip each date's caption and the regions' classes (faster).")
@click.option("--captioner", default=None, help="Captioner for each date's caption. Default: terravl-captioner.")
@click.option("--change-captioner", type=click.Path(path_type=Path), default=None,
              help="A change captioner from `terravl train change-caption` (LEVIR-CC): its sentence replaces the "
                   "caption composed from the measured change.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "geojson"]), default="table",
              show_default=True, help="A human summary, the result as JSON, or the changed regions as GeoJSON.")
def change(rasters, out, series, method, detector, min_overlap, min_region_pixels, max_pixels, bands, classes,
           no_describe, captioner, change_captioner, fmt) -> int:
    """What changed between two dates: BEFORE AFTER (or a time series with --series).

    The rasters are put on one grid (the first one's: the second is reprojected and resampled when its CRS or
    resolution differ) and compared tile by tile at constant memory. The answer: changed or not, the changed share
    and area, the changed regions (polygons with area, position and scene class before → after) and a caption; with
    --out, files a GIS opens: change.tif (change probability), mask.tif (1 changed, 0 not, 255 no data),
    regions.geojson (WGS84) and preview.png (before | after | overlay).

    \b
    Examples:
      terravl change before.tif after.tif --out change/
      terravl change src/terravl/samples/naip_20090818.tif src/terravl/samples/naip_20200831.tif --out naip-change
      terravl change a.tif b.tif --method cva --format geojson > regions.geojson
      terravl change --series 1985.tif 1990.tif 1995.tif 2000.tif --out series/
    """
    from terravl.tasks.change import change as change_task
    from terravl.tasks.change_series import change_series

    kwargs = change_kwargs(method, detector, min_overlap, min_region_pixels, max_pixels, bands)
    kwargs.update(classes=classes, describe=not no_describe)
    if not no_describe:
        import terravl.models as m

        kwargs["captioner"] = m.load_captioner(captioner or m.DEFAULT_CAPTIONER)
    if change_captioner is not None:
        from terravl.models.change_captioner import load_change_captioner

        kwargs["change_captioner"] = load_change_captioner(change_captioner)
    if series:
        result = change_series(list(rasters), out, **kwargs)
        return _emit_series(result, fmt)
    if len(rasters) != 2:
        raise click.UsageError(f"give two rasters, BEFORE and AFTER (got {len(rasters)}); use --series for more")
    result = change_task(rasters[0], rasters[1], out, **kwargs)
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
    """:func:`terravl.tasks.change_text.area_text`, imported on use: importing ``terravl.tasks`` at module level
    would load torch at every command's start-up (measured: ~5 s under load)."""
    from terravl.tasks.change_text import area_text

    return area_text(value, pixels)


def _table(result) -> None:
    rows = [["before", f"{result.before}" + (f" ({result.before_date})" if result.before_date else "")],
            ["after", f"{result.after}" + (f" ({result.after_date})" if result.after_date else "")],
            ["changed", "yes" if result.changed else "no"],
            ["changed share", f"{100 * result.changed_fraction:.2f} % of {result.valid_pixels:,} valid pixels"],
            ["changed area", _area(result.changed_area_m2, result.changed_pixels)],
            ["regions", f"{result.region_count}"],
            ["caption", result.caption],
            ["before caption", result.before_caption or ""],
            ["after caption", result.after_caption or ""],
            ["method", f"{result.method} (threshold {result.threshold:.3g})"]]
    rows += [[name, path] for name, path in (result.outputs or {}).items()]
    table("change", ["", ""], rows)
    regions = [f["properties"] for f in result.regions["features"][:10]]
    if regions:
        table("largest regions", ["#", "area", "%", "position", "before → after"],
              [[r["id"], _area(r["area_m2"], r["pixels"]), f"{r['percent']:.2f}", r["position"],
                f"{r['class_before']} → {r['class_after']}" if r["class_before"] else ""] for r in regions])


def _emit_series(result, fmt: str) -> int:
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if fmt == "json":
        emit_json(result.to_dict())
    elif fmt == "geojson":
        emit_json({"type": "FeatureCollection",
                   "features": [{**f, "properties": {**f["properties"], "pair": i, "before": p["before"],
                                                      "after": p["after"]}}
                                for i, p in enumerate(result.pairs, start=1)
                                for f in p.get("regions", {}).get("features", [])]})
    else:
        table("change series", ["before", "after", "changed %", "area", "regions", "caption"],
              [[f"{Path(e['before']).name} ({e['before_date'] or '?'})",
                f"{Path(e['after']).name} ({e['after_date'] or '?'})",
                "" if "error" in e else f"{100 * e['changed_fraction']:.2f}",
                "" if "error" in e else _area(e["changed_area_m2"], e["changed_pixels"]),
                "" if "error" in e else e["region_count"], e.get("error") or e["caption"]]
               for e in result.timeline])
        for name, path in (result.outputs or {}).items():
            stdout.print(f"{name}: {shown(path)}")
    failed = sum(1 for e in result.timeline if "error" in e)
    return 2 if failed == len(result.timeline) else 0
