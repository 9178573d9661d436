"""``terravl index``: build and maintain an archive index; ``search``, ``classify`` and ``localize`` over it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from terravl.cli.output import (bands_option, emit_answers, emit_json, format_option, located, make_reranker,
                                rerank_option, report_problems, stderr, table, views_option, window_text)

_model_option = click.option("--model", default=None,
                             help="Registry name, checkpoint file or model folder. Default: terravl-default.")


def _load_model(name: str | None):
    import terravl.models as m

    return m.load(name or m.DEFAULT_MODEL)


@click.group()
def index() -> None:
    """Build, extend and inspect an archive index (vectors + footprints in one crash-safe SQLite file)."""


def _build(sources, out, model, tile_size, overlap, batch_size, fmt, must_exist: bool, shards: int | None = None,
           ray: dict | None = None):
    from terravl.index import IndexStore, build_index
    from terravl.index.shards import is_sharded

    if ray is not None:
        report = _build_ray(sources, out, model, tile_size, overlap, batch_size, ray, shards or is_sharded(out))
    elif shards is not None or is_sharded(out):
        report = _build_sharded(sources, out, model, tile_size, overlap, batch_size, shards)
    else:
        if must_exist:
            with IndexStore(out, readonly=True) as store:
                model = model or store.model
        encoder = _load_model(model)
        from tqdm import tqdm

        with tqdm(desc="indexing", unit="tile", file=sys.stderr, disable=None) as bar:
            report = build_index(sources, encoder, out, tile_size, overlap, batch_size=batch_size,
                                 progress=bar.update)
    result = {"index": str(out), **report.to_dict()}
    if fmt == "json":
        emit_json(result)
    else:
        stderr.print(f"{report.added} tiles added, {report.skipped_existing} already indexed, {report.files} files, "
                     f"{len(report.problems)} problem(s) → {out}")
    report_problems(report.problems)
    return 2 if report.problems and report.tiles_seen == 0 else 0


def _build_sharded(sources, out, model, tile_size, overlap, batch_size, shards):
    """Build (or resume, or extend) the sharded index ``out``: each shard in a process of its own that loads the
    model by name (the index's own model when it exists and none is given)."""
    import terravl.models as m
    from terravl.index.shards import build_sharded, is_sharded, read_manifest

    if model is None and is_sharded(out):
        model = read_manifest(out)["model"]
    from tqdm import tqdm

    with tqdm(desc="indexing", unit="tile", file=sys.stderr, disable=None) as bar:
        return build_sharded(sources, model or m.DEFAULT_MODEL, out, shards, tile_size, overlap,
                             batch_size=batch_size, progress=bar.update)


def _build_ray(sources, out, model, tile_size, overlap, batch_size, ray: dict, sharded: bool):
    """The build on a Ray cluster: decoding tasks, an actor pool embedding, this process the one writer."""
    import terravl.models as m
    from terravl.errors import InputError
    from terravl.index import IndexStore
    from terravl.index.ray_build import RaySettings, build_index_ray
    from terravl.index.store import DB_FILE

    if sharded:
        raise InputError("--ray", "a Ray build writes one index (one writer); it cannot build or extend a sharded "
                                  "index: leave out --shards, or build the shards without --ray")
    settings = RaySettings(**ray)  # checks the numbers before any cluster starts
    if model is None and (Path(out) / DB_FILE).exists():
        with IndexStore(out, readonly=True) as store:
            model = store.model
    from tqdm import tqdm

    with tqdm(desc="indexing (ray)", unit="tile", file=sys.stderr, disable=None) as bar:
        return build_index_ray(sources, model or m.DEFAULT_MODEL, out, tile_size, overlap, batch_size=batch_size,
                               settings=settings, progress=bar.update)


_ray_options = [
    click.option("--ray", "ray_address", default=None, is_flag=False, flag_value="auto", metavar="[auto|local|ADDRESS]",
                 help="Build on a Ray cluster: decoding as Ray tasks, embedding in a pool of actors (one model each), "
                      "this process the single writer. 'auto' joins $RAY_ADDRESS or a cluster running here, else "
                      "starts a local one; 'local' always starts one; or ray://HOST:10001. A bare --ray means auto; write "
                      "--ray auto before SOURCES (a bare --ray would take the first source as its address). "
                      "Needs terravl[ray]."),
    click.option("--num-actors", default=None, type=int,
                 help="Embedding actors (one model each). Default: one per 2 CPUs of the cluster."),
    click.option("--cpus-per-actor", default=1.0, show_default=True, type=float,
                 help="CPUs (torch threads) per embedding actor."),
    click.option("--gpus-per-actor", default=0.0, show_default=True, type=float,
                 help="GPU share per embedding actor (e.g. 0.5: two actors per GPU); >0 embeds on CUDA."),
]


def _ray_settings(ray_address, num_actors, cpus_per_actor, gpus_per_actor) -> dict | None:
    if ray_address is None:
        for name, value, default in (("--num-actors", num_actors, None), ("--cpus-per-actor", cpus_per_actor, 1.0),
                                     ("--gpus-per-actor", gpus_per_actor, 0.0)):
            if value != default:
                raise click.UsageError(f"{name} needs --ray")
        return None
    return {"address": ray_address, "num_actors": num_actors, "cpus_per_actor": cpus_per_actor,
            "gpus_per_actor": gpus_per_actor}


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
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Index folder.")
@_model_option
@_with(_build_options)
@click.option("--shards", default=None, type=click.IntRange(min=1),
              help="Build a sharded index of N shards, each by a process of its own (one writer each); searched "
                   "and served as one index. A re-run resumes each shard.")
@_with(_ray_options)
@format_option()
def build(sources, out, model, tile_size, overlap, batch_size, shards, ray_address, num_actors, cpus_per_actor,
          gpus_per_actor, fmt) -> int:
    """Index SOURCES (image files, GeoTIFFs, folders walked recursively, s3:// objects and prefixes, STAC catalog,
    collection or item JSON files) into OUT.

    Images up to twice the tile size are indexed whole; larger rasters tile by tile with their footprints.
    Re-running skips tiles already indexed (by content hash) and resumes a killed build. S3 credentials and
    endpoint come from the AWS_* environment variables.

    \b
    Examples:
      terravl index build ../shared/data/aid_150px --out aid.idx
      terravl index build scenes/*.tif --tile-size 256 --overlap 32 --out scenes.idx --model remoteclip-vit-b-32
      terravl index build s3://imagery/scenes/ catalog/catalog.json --out archive.idx
      terravl index build scenes/ --out archive.idx --shards 4
      terravl index build scenes/ --out archive.idx --ray auto --num-actors 2
      RAY_ADDRESS=ray://head:10001 terravl index build s3://imagery/ --out archive.idx --ray --gpus-per-actor 0.5
    """
    ray = _ray_settings(ray_address, num_actors, cpus_per_actor, gpus_per_actor)
    return _build(sources, out, model, tile_size, overlap, batch_size, fmt, must_exist=False, shards=shards, ray=ray)


@index.command()
@click.argument("idx", type=click.Path(path_type=Path, file_okay=False))
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@_with(_build_options)
@format_option()
def add(idx, sources, tile_size, overlap, batch_size, fmt) -> int:
    """Add SOURCES to the existing index IDX (with the model it was built with)."""
    return _build(sources, idx, None, tile_size, overlap, batch_size, fmt, must_exist=True)


@index.command()
@click.argument("idx", type=click.Path(path_type=Path, file_okay=False))
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@format_option()
def remove(idx, sources, fmt) -> None:
    """Remove every tile of SOURCES (files or folders, as indexed) from IDX."""
    from terravl.index import expand_sources
    from terravl.index.build import source_name
    from terravl.index.shards import open_index

    with open_index(idx, readonly=None) as store:
        removed = {str(p): store.remove_source(source_name(p)) for p in expand_sources(sources)}
        # a tile whose pixels are also in a file not removed stays, under that file's name
        result = {"index": str(idx), "removed": sum(removed.values()), "files": removed, "count": store.count()}
    emit_json(result) if fmt == "json" else stderr.print(f"removed {result['removed']} tiles; {result['count']} left")


@index.command()
@click.argument("idx", type=click.Path(path_type=Path, file_okay=False))
@format_option()
def info(idx, fmt) -> None:
    """Count, model, dimensions, sources, date range and bounding box of IDX (of a sharded index: of the whole,
    and each shard's count)."""
    from terravl.index.shards import open_index
    from terravl.index.vectors import describe

    with open_index(idx, readonly=True) as store:
        result = store.info()
        if "shards" not in result:  # the saved approximate index: kind, nprobe and its measured recall@10
            result["approximate"] = describe(store.path)
    if fmt == "json":
        emit_json(result)
    else:
        ann = result.get("approximate")
        shown = result if "approximate" not in result else {**result, "approximate": "none (exact search)" if not ann else
                 f"IVF-{ann['kind']}, nprobe {ann['nprobe']} of {ann['nlist'] or '?'} cells, recall@10 "
                 f"{'unmeasured' if ann['recall_at_10'] is None else format(ann['recall_at_10'], '.3f')}"}
        table(str(idx), ["", "value"], [[k, v] for k, v in shown.items() if k != "shards"])
        if "shards" in result:
            table(f"{len(result['shards'])} shards", ["shard", "tiles", "sources", "problems"],
                  [[s["name"], s["count"], s["sources"], s["problems"]] for s in result["shards"]])


@index.command()
@click.argument("idx", type=click.Path(path_type=Path, file_okay=False))
@format_option()
def check(idx, fmt) -> int:
    """Full check of IDX: every page of its database (SQLite integrity_check) and the consistency of its tables
    (vectors, locations, boxes). Read-only. Exit 0 when sound, 1 when damaged.

    Opening an index only checks its structure cheaply; run this after a crash, a disk error or a copy.
    """
    from terravl.index import check_index
    from terravl.index.shards import check_shards, is_sharded

    result = check_shards(idx) if is_sharded(idx) else check_index(idx)
    if fmt == "json":
        emit_json(result)
    elif result["ok"]:
        stderr.print(f"{idx}: ok ({result['tiles']} tiles)")
    else:
        stderr.print(f"error: {idx}: damaged, {len(result['problems'])} problem(s); restore it from a backup or "
                     f"rebuild it with `terravl index build`")
        for problem in result["problems"][:20]:
            stderr.print(f"  {problem}")
    return 0 if result["ok"] else 1


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
@click.option("--k", default=10, show_default=True, type=int, help="Number of hits (1 to 1000).")
@click.option("--bbox", help="Only tiles intersecting minlon,minlat,maxlon,maxlat (WGS84).")
@click.option("--date-from", help="Only tiles acquired on or after this date (YYYY-MM-DD).")
@click.option("--date-to", help="Only tiles acquired on or before this date (YYYY-MM-DD).")
@rerank_option()
@format_option("table", "json", "geojson")
def search(idx, text, image, captions, k, bbox, date_from, date_to, rerank, rerank_with, fmt) -> None:
    """Find the tiles of index IDX that best match TEXT (or --image).

    With --rerank, the captioner reads the 20 best tiles (from their source files) with TEXT and re-orders them;
    with --image --captions, the 50 best captions. Scores stay the encoder's cosines.

    \b
    Examples:
      terravl search aid.idx "a harbor with many boats" --k 5
      terravl search aid.idx "many cars parked beside a stadium" --rerank
      terravl search scenes.idx "center-pivot irrigation" --bbox -100,46,-98,48 --format geojson
      terravl search aid.idx --image query.jpg
    """
    from terravl.cli.warm import text_tower_warming
    from terravl.validation import check_k

    if captions is not None and image is None:
        raise click.UsageError("--captions needs --image")
    if captions is None and (text is None) == (image is None):
        raise click.UsageError("give a TEXT query or --image, not both")
    if (rerank or rerank_with is not None) and image is not None and captions is None:
        raise click.UsageError("--rerank re-ranks a TEXT query's tiles, or --image with --captions")
    check_k(k)  # before any model loads
    reranker = make_reranker(rerank, rerank_with)
    with text_tower_warming(text is not None and image is None and captions is None):
        _search(idx, text, image, captions, k, bbox, date_from, date_to, fmt, reranker)


def _search(idx, text, image, captions, k, bbox, date_from, date_to, fmt, reranker=None) -> None:
    from terravl.tasks import search as search_task

    if captions is not None:
        from terravl.index.shards import open_index
        from terravl.tasks import search_captions

        with open_index(idx, readonly=True) as store:
            encoder = _load_model(store.model)
        matches = search_captions(image, _read_captions(captions), encoder, k, rerank=reranker)
        if fmt == "table":
            table(f"captions for {image}", ["rank", "score", "caption"], [[m.rank, f"{m.score:.3f}", m.caption]
                                                                         for m in matches])
        else:
            emit_json([m.to_dict() for m in matches])
        return
    from terravl.index.shards import open_index

    with open_index(idx, readonly=True) as store:  # read-only: works on a read-only mount, writes nothing
        hits = [h.to_dict() for h in search_task(store, text=text, image=image, k=k, bbox=bbox,
                                                 date_from=date_from, date_to=date_to, rerank=reranker)]
    if fmt == "json":
        emit_json(hits)
    elif fmt == "geojson":
        emit_json(_hits_geojson(hits))
    else:
        table(f"{len(hits)} hits for {text or image}", ["#", "score", "path", "window", "acquired"],
              [[i + 1, f"{h['score']:.3f}", h["path"], window_text(h.get("window")), h.get("acquired") or ""]
               for i, h in enumerate(hits)])


def _read_captions(path: Path) -> list[str]:
    if path.suffix == ".json":
        from terravl.datasets import open_dataset

        return list(dict.fromkeys(c for r in open_dataset(path) for c in getattr(r, "captions", ())))
    from terravl.errors import InputError

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--labels", help='Comma-separated class names, e.g. "forest,river,airport".')
@click.option("--classes", help="A built-in class list: aid, ucm, resisc45, eurosat, whu-rs19, patternnet.")
@click.option("--k", default=5, show_default=True, type=int, help="Top-k classes to report.")
@views_option()
@bands_option()
@_model_option
@format_option()
def classify(images, labels, classes, k, views, bands, model, fmt) -> int:
    """Zero-shot scene classification of IMAGES (files or folders) with remote-sensing prompt ensembles.

    \b
    Examples:
      terravl classify scene.jpg --labels "forest,river,airport,harbor"
      terravl classify ../shared/data/aid_150px/images/Port --classes aid --format json
      terravl classify scenes/ --classes aid --views 8      # average over all flips and rotations
    """
    from terravl.tasks import classify as classify_task

    from terravl.tasks.classify import resolve_labels

    resolve_labels(labels, classes)  # a clear error before the model loads
    answers = classify_task(list(images), _load_model(model), labels, classes, k, views=views, bands=bands)
    return emit_answers(answers, fmt, None, ["path", "label", "p", "next"],
                        lambda r: [located(r), r.label, f"{r.score:.2f}",
                                   ", ".join(f"{t.label} {t.probability:.2f}" for t in r.top[1:3])])


@click.command()
@click.argument("raster", type=click.Path())
@click.argument("query")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Heat map GeoTIFF to write (cosine similarity per window, averaged where windows overlap).")
@click.option("--regions", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the top regions as GeoJSON here.")
@click.option("--scales", default="256", show_default=True,
              help="Window sizes in pixels, comma-separated (16 to 4096, at most 4).")
@click.option("--stride", default=0.5, show_default=True, type=click.FloatRange(0.05, 1.0),
              help="Step between windows, as a fraction of the size.")
@click.option("--top", default=5, show_default=True, type=int, help="Regions to return.")
@bands_option()
@_model_option
@format_option()
def localize(raster, query, out, regions, scales, stride, top, bands, model, fmt) -> None:
    """Where in RASTER is QUERY? A georeferenced heat map and the best regions as polygons.

    \b
    Example:
      terravl localize scene.tif "a river with a bridge" --out heat.tif --regions top.geojson
    """
    from terravl.tasks import localize as localize_task

    from terravl.validation import check_scales, check_text

    sizes = check_scales(scales)
    check_text(query, "query")
    for target in (out, regions):
        _check_writable(target)
    result = localize_task(raster, query, _load_model(model), out, sizes, stride, top, bands=bands)
    if regions is not None:
        _write_text(regions, json.dumps(result["regions"], indent=1))
    if fmt == "json":
        emit_json(result)
    else:
        table(f"{query!r} in {raster} ({result['windows']} windows)", ["rank", "score", "window"],
              [[f["properties"]["rank"], f"{f['properties']['score']:.3f}", window_text(f["properties"]["window"])]
               for f in result["regions"]["features"]])
        if result["heatmap"]:
            stderr.print(f"heat map → {result['heatmap']}")


def _check_writable(path: Path | None) -> None:
    """Refuse an output file whose folder cannot be written before any work is done (exit 1, one line)."""
    import os

    from terravl.errors import TerraVLError

    if path is None:
        return
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # GDAL takes UTF-8 names only
        raise TerraVLError(f"{path}: cannot write here (the name is not valid UTF-8)") from None
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:  # the nearest existing folder decides
        folder = folder.parent
    if not folder.is_dir():
        raise TerraVLError(f"{path}: cannot write here ({folder} is a file, not a folder)")
    if not os.access(folder, os.W_OK):
        raise TerraVLError(f"{path}: cannot write here (folder {folder} is not writable)")


def _write_text(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temporary file renamed into place; a failure is one clear line (exit 1)."""
    import contextlib

    from terravl.errors import TerraVLError

    tmp = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise TerraVLError(f"{path}: cannot write ({exc.strerror or exc})") from None
