"""``terravl index``: build and maintain an archive index; ``search``, ``classify`` and ``localize`` over it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from tqdm import tqdm

from terravl.cli.output import emit_json, format_option, report_problems, stderr, table, views_option

_model_option = click.option("--model", default=None,
                             help="Registry name, checkpoint file or model folder. Default: terravl-default.")


def _load_model(name: str | None):
    import terravl.models as m

    return m.load(name or m.DEFAULT_MODEL)


@click.group()
def index() -> None:
    """Build, extend and inspect an archive index (vectors + footprints in one crash-safe SQLite file)."""


def _build(sources, out, model, tile_size, overlap, batch_size, fmt, must_exist: bool):
    from terravl.index import IndexStore, build_index

    if must_exist:
        store = IndexStore(out)
        model = model or store.model
        store.close()
    encoder = _load_model(model)
    with tqdm(desc="indexing", unit="tile", file=sys.stderr, disable=None) as bar:
        report = build_index(sources, encoder, out, tile_size, overlap, batch_size=batch_size, progress=bar.update)
    result = {"index": str(out), **report.to_dict()}
    if fmt == "json":
        emit_json(result)
    else:
        stderr.print(f"{report.added} tiles added, {report.skipped_existing} already indexed, {report.files} files, "
                     f"{len(report.problems)} problem(s) → {out}")
    report_problems(report.problems)
    return 2 if report.problems and report.tiles_seen == 0 else 0


_build_options = [
    click.option("--tile-size", default=256, show_default=True, type=click.IntRange(min=16),
                 help="Tile size for large rasters (pixels)."),
    click.option("--overlap", default=0, show_default=True, type=click.IntRange(min=0),
                 help="Overlap between tiles (pixels)."),
    click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
                 help="Tiles embedded and committed together (one transaction each)."),
]


def _with(options):
    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f
    return wrap


@index.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Index folder.")
@_model_option
@_with(_build_options)
@format_option()
def build(sources, out, model, tile_size, overlap, batch_size, fmt) -> int:
    """Index SOURCES (image files, GeoTIFFs, folders walked recursively) into OUT.

    Images up to twice the tile size are indexed whole; larger rasters tile by tile with their footprints.
    Re-running skips tiles already indexed (by content hash) and resumes a killed build.

    \b
    Examples:
      terravl index build ../shared/data/aid_150px --out aid.idx
      terravl index build scenes/*.tif --tile-size 256 --overlap 32 --out scenes.idx --model remoteclip-vit-b-32
    """
    return _build(sources, out, model, tile_size, overlap, batch_size, fmt, must_exist=False)


@index.command()
@click.argument("idx", type=click.Path(path_type=Path, file_okay=False))
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@_with(_build_options)
@format_option()
def add(idx, sources, tile_size, overlap, batch_size, fmt) -> int:
    """Add SOURCES to the existing index IDX (with the model it was built with)."""
    return _build(sources, idx, None, tile_size, overlap, batch_size, fmt, must_exist=True)


@index.command()
@click.argument("idx", type=click.Path(path_type=Path, file_okay=False))
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@format_option()
def remove(idx, sources, fmt) -> None:
    """Remove every tile of SOURCES (files or folders, as indexed) from IDX."""
    from terravl.index import IndexStore, expand_sources

    store = IndexStore(idx)
    removed = {str(p): store.remove_source(str(Path(p).resolve())) for p in expand_sources(sources)}
    result = {"index": str(idx), "removed": sum(removed.values()), "files": removed, "count": store.count()}
    emit_json(result) if fmt == "json" else stderr.print(f"removed {result['removed']} tiles; {result['count']} left")


@index.command()
@click.argument("idx", type=click.Path(path_type=Path, file_okay=False))
@format_option()
def info(idx, fmt) -> None:
    """Count, model, dimensions, sources, date range and bounding box of IDX."""
    from terravl.index import IndexStore

    result = IndexStore(idx).info()
    if fmt == "json":
        emit_json(result)
    else:
        table(str(idx), ["", "value"], [[k, v] for k, v in result.items()])


def _parse_bbox(value: str | None):
    if value is None:
        return None
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or parts[0] > parts[2] or parts[1] > parts[3]:
        raise click.BadParameter("expected minlon,minlat,maxlon,maxlat", param_hint="--bbox")
    return tuple(parts)


def _hits_geojson(hits: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": h.get("footprint"), "properties": {k: v for k, v in h.items() if k != "footprint"}}
        for h in hits]}


@click.command()
@click.argument("idx", type=click.Path(path_type=Path, file_okay=False))
@click.argument("text", required=False)
@click.option("--image", type=click.Path(path_type=Path), help="Search by this example image instead of text.")
@click.option("--captions", type=click.Path(path_type=Path),
              help="With --image: rank these captions (Karpathy JSON or one caption per line) instead of tiles.")
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1), help="Number of hits.")
@click.option("--bbox", help="Only tiles intersecting minlon,minlat,maxlon,maxlat (WGS84).")
@click.option("--date-from", help="Only tiles acquired on or after this date (YYYY-MM-DD).")
@click.option("--date-to", help="Only tiles acquired on or before this date (YYYY-MM-DD).")
@format_option("table", "json", "geojson")
def search(idx, text, image, captions, k, bbox, date_from, date_to, fmt) -> None:
    """Find the tiles of index IDX that best match TEXT (or --image).

    \b
    Examples:
      terravl search aid.idx "a harbor with many boats" --k 5
      terravl search scenes.idx "center-pivot irrigation" --bbox -100,46,-98,48 --format geojson
      terravl search aid.idx --image query.jpg
    """
    from terravl.tasks import search as search_task

    if captions is not None:
        if image is None:
            raise click.UsageError("--captions needs --image")
        from terravl.index import IndexStore
        from terravl.tasks import search_captions

        encoder = _load_model(IndexStore(idx).model)
        hits = search_captions(image, _read_captions(captions), encoder, k)
        if fmt == "table":
            table(f"captions for {image}", ["rank", "score", "caption"], [[h["rank"], f"{h['score']:.3f}",
                                                                         h["caption"]] for h in hits])
        else:
            emit_json(hits)
        return
    if (text is None) == (image is None):
        raise click.UsageError("give a TEXT query or --image, not both")
    hits = search_task(idx, text=text, image=image, k=k, bbox=_parse_bbox(bbox), date_from=date_from,
                       date_to=date_to)
    if fmt == "json":
        emit_json(hits)
    elif fmt == "geojson":
        emit_json(_hits_geojson(hits))
    else:
        table(f"{len(hits)} hits for {text or image}", ["#", "score", "path", "window", "acquired"],
              [[i + 1, f"{h['score']:.3f}", h["path"], _window(h.get("window")), h.get("acquired") or ""]
               for i, h in enumerate(hits)])


def _window(window: dict | None) -> str:
    return "" if not window else f"{window['col_off']},{window['row_off']} {window['width']}×{window['height']}"


def _read_captions(path: Path) -> list[str]:
    if path.suffix == ".json":
        from terravl.datasets import open_dataset

        return list(dict.fromkeys(c for r in open_dataset(path) for c in getattr(r, "captions", ())))
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", help='Comma-separated class names, e.g. "forest,river,airport".')
@click.option("--classes", help="A built-in class list: aid, ucm, resisc45, eurosat, whu-rs19, patternnet.")
@click.option("--k", default=5, show_default=True, type=click.IntRange(min=1), help="Top-k classes to report.")
@views_option()
@_model_option
@format_option()
def classify(images, labels, classes, k, views, model, fmt) -> int:
    """Zero-shot scene classification of IMAGES (files or folders) with remote-sensing prompt ensembles.

    \b
    Examples:
      terravl classify scene.jpg --labels "forest,river,airport,harbor"
      terravl classify ../shared/data/aid_150px/images/Port --classes aid --format json
      terravl classify scenes/ --classes aid --views 8      # average over all flips and rotations
    """
    from terravl.tasks import classify as classify_task

    results = classify_task(list(images), _load_model(model), labels, classes, k, views=views)
    failed = [r for r in results if "error" in r]
    if fmt == "json":
        emit_json(results)
    else:
        table(None, ["path", "label", "p", "next"],
              [[r["path"] + (f" @{_window(r.get('window'))}" if r.get("window") else ""), r["label"],
                f"{r['score']:.2f}", ", ".join(f"{t['label']} {t['probability']:.2f}" for t in r["top"][1:3])]
               for r in results if "error" not in r])
    report_problems(failed)
    return 2 if failed and len(failed) == len(results) else 0


@click.command()
@click.argument("raster", type=click.Path(path_type=Path))
@click.argument("query")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Heat map GeoTIFF to write (cosine similarity per window, averaged where windows overlap).")
@click.option("--regions", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the top regions as GeoJSON here.")
@click.option("--scales", default="256", show_default=True, help="Window sizes in pixels, comma-separated.")
@click.option("--stride", default=0.5, show_default=True, type=click.FloatRange(0.05, 1.0),
              help="Step between windows, as a fraction of the size.")
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1), help="Regions to return.")
@_model_option
@format_option()
def localize(raster, query, out, regions, scales, stride, top, model, fmt) -> None:
    """Where in RASTER is QUERY? A georeferenced heat map and the best regions as polygons.

    \b
    Example:
      terravl localize scene.tif "a river with a bridge" --out heat.tif --regions top.geojson
    """
    from terravl.tasks import localize as localize_task

    try:
        sizes = tuple(int(s) for s in scales.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 16:
        raise click.BadParameter("comma-separated window sizes of at least 16 pixels", param_hint="--scales")
    result = localize_task(raster, query, _load_model(model), out, sizes, stride, top)
    if regions is not None:
        regions.write_text(json.dumps(result["regions"], indent=1))
    if fmt == "json":
        emit_json(result)
    else:
        table(f"{query!r} in {raster} ({result['windows']} windows)", ["rank", "score", "window"],
              [[f["properties"]["rank"], f"{f['properties']['score']:.3f}", _window(f["properties"]["window"])]
               for f in result["regions"]["features"]])
        if result["heatmap"]:
            stderr.print(f"heat map → {result['heatmap']}")
