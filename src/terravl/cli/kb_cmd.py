"""``terravl kb``: build, extend, inspect and query a knowledge base of images and text (RS-RAG)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from terravl.cli.output import emit_json, format_option, report_problems, stderr, table

_model_option = click.option("--model", default=None,
                             help="Encoder for text and image vectors (registry name, checkpoint or folder). "
                                  "Default: terravl-default.")
_split_option = click.option("--split", default=None,
                             help="Read only this split of Karpathy caption JSON sources (e.g. train).")
_batch_option = click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096),
                             help="Items embedded and committed together (one transaction each).")
_tile_option = click.option("--tile-size", default=256, show_default=True, type=click.IntRange(min=16),
                            help="Rasters larger than twice this are stored tile by tile, with footprints.")
_scene_option = click.option("--scene-classes", is_flag=True,
                             help="Also add TerraVL's short descriptions of the 51 AID and UC Merced scene classes.")


def _build(sources, out: Path, model: str | None, split, tile_size, batch_size, scene_classes, fmt,
           must_exist: bool) -> int:
    import terravl.models as m
    from terravl.kb import SCENE_CLASSES, KBStore, build_kb
    from tqdm import tqdm

    if must_exist:
        with KBStore(out, readonly=True) as store:
            model = store.model
    sources = list(sources) + ([SCENE_CLASSES] if scene_classes else [])
    if not sources:
        raise click.UsageError("give at least one source (or --scene-classes)")
    encoder = m.load(model or m.DEFAULT_MODEL)
    with tqdm(desc="kb items", unit="item", file=sys.stderr, disable=None) as bar:
        report = build_kb(sources, encoder, out, split=split, tile_size=tile_size, batch_size=batch_size,
                          progress=bar.update)
    result = {"kb": str(out), **report.to_dict()}
    if fmt == "json":
        emit_json(result)
    else:
        stderr.print(f"{report.added} items added, {report.skipped_existing} already there, {report.sources} sources "
                     f"({report.sources_skipped} unchanged, skipped), {len(report.problems)} problem(s) → {out}")
    report_problems(report.problems)
    if report.items_seen == 0 and report.sources_skipped == 0:
        stderr.print("error: nothing could be read from the sources (no images, texts or captions found)")
        return 2
    return 0


@click.group()
def kb() -> None:
    """Knowledge bases of images and text for answers with citations (RS-RAG).

    \b
    Examples:
      terravl kb build reports/ scenes/ sites.csv --out site.kb
      terravl kb query site.kb "where was the new bridge built?" --k 5
      terravl kb calibrate rs.kb --dataset captions.json --split train   # weigh evidence vs the VQA bridge
      terravl ask --kb site.kb "when did the forest burn?"
      terravl ask scene.jpg "what kind of area is this?" --kb site.kb
    """


@kb.command()
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Knowledge-base file to create or extend (one SQLite file).")
@_model_option
@_split_option
@_scene_option
@_tile_option
@_batch_option
@format_option()
def build(sources, out, model, split, scene_classes, tile_size, batch_size, fmt) -> int:
    """Build the knowledge base OUT from SOURCES.

    SOURCES are image files or folders (an optional sidecar NAME.json or NAME.md beside an image gives its text,
    lon/lat/bbox, date, url), GeoTIFFs (large ones tile by tile, with footprints), text files (Markdown, plain
    text, CSV or JSONL records with a text column and optional lon, lat, bbox, date, url, title, label), Karpathy
    caption JSON (images with their captions and scene class) and TerraVL index folders. Folders are walked.

    Crash-safe and incremental: items are committed in batches; a killed build keeps what was committed, and a
    re-run skips unchanged sources and items already there. Bad items (empty, huge or binary text files, other
    encodings than UTF-8, CSV without a text column, invalid coordinates or dates, duplicate sources) are
    reported one per line while the build goes on. Exit 2 if nothing could be read.

    \b
    Examples:
      terravl kb build reports/ field_notes.csv photos/ --out site.kb
      terravl kb build ../shared/data/rsicd_aid/dataset_rsicd_aid.json \\
          ../shared/data/ucm_captions/dataset_ucm_captions.json --split train --scene-classes --out rs.kb
      terravl kb build archive.idx --out site.kb          # an index's tiles (vectors reused for the same model)
    """
    return _build(sources, out, model, split, tile_size, batch_size, scene_classes, fmt, must_exist=False)


@kb.command()
@click.argument("kb_file", metavar="KB", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@_split_option
@_scene_option
@_tile_option
@_batch_option
@format_option()
def add(kb_file, sources, split, scene_classes, tile_size, batch_size, fmt) -> int:
    """Add SOURCES to the existing knowledge base KB (with the model it was built with).

    \b
    Example:
      terravl kb add site.kb new_reports/ 2024_survey.jsonl
    """
    return _build(sources, kb_file, None, split, tile_size, batch_size, scene_classes, fmt, must_exist=True)


@kb.command()
@click.argument("kb_file", metavar="KB", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--problems", "show_problems", is_flag=True, help="Also list the problems met while building.")
@format_option()
def info(kb_file, show_problems, fmt) -> None:
    """Items (images, passages), sources, model, date range, bounding box, problems and the answer calibration
    (`terravl kb calibrate`: evidence weights per collection) of KB.

    \b
    Example:
      terravl kb info site.kb --format json
    """
    from terravl.kb import KBStore

    with KBStore(kb_file, readonly=True) as store:
        result = store.info()
        fusion = store.meta().get("fusion")
        result["calibration"] = _calibration_summary(fusion)
        if show_problems:
            result["problem_list"] = store.problems()
    if fmt == "json":
        emit_json(result)
        return
    table(str(kb_file), ["", "value"], [[k, v] for k, v in result.items() if k not in ("problem_list", "calibration")])
    calibration = result["calibration"]
    if calibration:
        table(f"answer calibration for {calibration['captioner']} ({calibration['calibrated']})",
              ["collection", "scene weight", "presence weight"],
              [[c, w["scene"], w["presence"]] for c, w in [*calibration["weights"].items(),
                                                            ("pooled (other collections)", calibration["pooled"])]])
    else:
        stderr.print("answers: not calibrated (terravl kb calibrate)")
    if show_problems:
        report_problems(result["problem_list"], limit=200)


@kb.command()
@click.argument("kb_file", metavar="KB", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--dataset", "datasets", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Karpathy caption JSON the knowledge base was built from (repeatable, one --split each).")
@click.option("--split", "splits", required=True, multiple=True,
              help="The split of each --dataset that is in the knowledge base (e.g. train).")
@click.option("--sample", default=500, show_default=True, type=click.IntRange(1, 100_000),
              help="Labelled images drawn from each dataset's split.")
@click.option("--model", default=None, help="Captioner / VQA bridge that will answer (name or folder). "
                                            "Default: terravl-captioner.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the image sample.")
@format_option()
def calibrate(kb_file, datasets, splits, sample, model, seed, fmt) -> None:
    """Fit how much `terravl ask IMAGE … --kb KB` trusts the evidence against the VQA bridge, per collection of KB.

    Labelled images of the caption datasets KB was built from are asked scene and presence questions, each with its
    own stored item left out of the evidence; the weight of the evidence that answers best is kept per collection
    (and pooled, for the rest) and written into KB. Without it, both count equally. Re-run after `kb add` of a new
    collection, or for another captioner: KB keeps one calibration, used only with the captioner it was fitted for.

    \b
    Example (the README's knowledge base, about 2 minutes on 2 cores):
      terravl kb calibrate rs.kb --dataset ../shared/data/rsicd_aid/dataset_rsicd_aid.json --split train \\
          --dataset ../shared/data/ucm_captions/dataset_ucm_captions.json --split train
    """
    from terravl.cli.caption_cmd import _load
    from terravl.train.kb_fusion import calibrate_kb

    if len(datasets) != len(splits):
        raise click.UsageError("give one --split for each --dataset")
    result = calibrate_kb(kb_file, list(zip(datasets, splits)), _load(model), sample=sample, seed=seed)
    if fmt == "json":
        emit_json({"kb": str(kb_file), **result})
        return
    rows = [[name, c["scene"], c["presence"],
             *[f"{c['bridge_alone'][t]:.1f} → {c['accuracy'][t]:.1f} ({c['questions'][t]})"
               if c["accuracy"][t] is not None else "-" for t in ("scene", "presence")]]
            for name, c in [*result["collections"].items(), ("(pooled)", result["pooled"])]]
    table(f"{kb_file}: evidence weights for {result['captioner']} (leave-one-out accuracy %, bridge alone → "
          f"weighed)", ["collection", "scene w", "presence w", "scene", "presence"], rows)
    stderr.print(f"saved into {kb_file} ({result['seconds']:.0f} s)")


def _calibration_summary(fusion) -> dict | None:
    """The calibration's weights per collection (and pooled), or None when KB has none (or a damaged one)."""
    if not isinstance(fusion, dict):
        return None
    try:
        weights = {c: {"scene": v["scene"], "presence": v["presence"]}
                   for c, v in (fusion.get("collections") or {}).items()}
        pooled = {"scene": fusion["pooled"]["scene"], "presence": fusion["pooled"]["presence"]}
    except (KeyError, TypeError, AttributeError):
        return None
    return {"captioner": fusion.get("captioner"), "calibrated": fusion.get("calibrated"), "weights": weights,
            "pooled": pooled}


def evidence_table(title: str, evidence: list[dict]) -> None:
    table(title, ["#", "score", "rel.", "kind", "found by", "source", "text / label"],
          [[e["rank"], f"{e['score']:.3f}", f"{e['relevance']:.2f}", e["kind"], ",".join(e["retrievers"]),
            Path(e["source"]).name + (f" {e['ref']}" if e.get("ref") else ""),
            _snippet(e)] for e in evidence])


def _snippet(e: dict, limit: int = 110) -> str:
    text = e.get("text") or ""
    if e.get("label"):
        text = f"({e['label']}) {text}"
    return text if len(text) <= limit else text[:limit - 1] + "…"


@kb.command()
@click.argument("kb_file", metavar="KB", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("question", required=False)
@click.option("--image", type=click.Path(path_type=Path), help="A query image (alone or with QUESTION).")
@click.option("--k", default=10, show_default=True, type=int, help="Evidence items to return (1 to 1000).")
@click.option("--bbox", help="Only items whose location intersects minlon,minlat,maxlon,maxlat (WGS84).")
@click.option("--date-from", help="Only items dated on or after this day (YYYY-MM-DD).")
@click.option("--date-to", help="Only items dated on or before this day (YYYY-MM-DD).")
@click.option("--retrievers", default="bm25,dense,image", show_default=True,
              help="Which retrievers to fuse (comma-separated: bm25, dense, image).")
@click.option("--no-rerank", is_flag=True, help="Rank by reciprocal rank fusion alone.")
@click.option("--describe/--no-describe", default=True, show_default=True,
              help="With --image: add the captioner's description of the image to the text query (BM25, dense).")
@click.option("--min-relevance", type=float, default=None,
              help="Best cosine below which nothing relevant is found. Default: 0.5 for a question, 0.6 with an "
                   "image (calibrated on terravl-default).")
@format_option()
def query(kb_file, question, image, k, bbox, date_from, date_to, retrievers, no_rerank, describe, min_relevance,
          fmt) -> int:
    """Ranked evidence (images and passages) for QUESTION and/or --image from KB: BM25, dense text and
    cross-modal image similarity fused by reciprocal rank fusion, then re-ranked (fusion score + relevance +
    pseudo-relevance feedback). Each item carries its score, relevance (best cosine with the query), the
    retrievers that found it and its source.

    \b
    Examples:
      terravl kb query site.kb "harbour piers" --k 5
      terravl kb query site.kb "burned forest" --bbox 10,45,11,46 --date-from 2019-01-01 --format json
      terravl kb query rs.kb --image scene.jpg --retrievers image
    """
    if question is None and image is None:
        raise click.UsageError("give a QUESTION, --image, or both")
    from terravl.cli.warm import text_tower_warming

    with text_tower_warming(image is None):
        return _query(kb_file, question, image, k, bbox, date_from, date_to, retrievers, no_rerank, describe,
                      min_relevance, fmt)


def _query(kb_file, question, image, k, bbox, date_from, date_to, retrievers, no_rerank, describe, min_relevance,
           fmt) -> int:
    import terravl.models as m
    from terravl.kb import KBStore, retrieve
    from terravl.models.light_text import query_encoder

    expansion = None
    with KBStore(kb_file, readonly=True) as store:
        encoder = query_encoder(store.model, text_only=image is None)
        encoder.encode_texts(["warm-up"])  # loads the text tower now, so the timings are the query's own
        if image is not None and describe:
            from terravl.models.bridge import CAPTION_PROMPT

            captioner = m.load_captioner(m.DEFAULT_CAPTIONER)
            expansion = captioner.generate(captioner.encoder.encode_images([image]), CAPTION_PROMPT, beams=1)[0]
        result = retrieve(store, encoder, question, image, k, bbox, date_from, date_to, retrievers, not no_rerank,
                          expansion=expansion, min_relevance=min_relevance)
    data = result.to_dict()
    if expansion:
        data["image_description"] = expansion
    if fmt == "json":
        emit_json(data)
    else:
        evidence_table(f"{len(result.evidence)} items for {question or image}", data["evidence"])
        verdict = "relevant evidence found" if result.found else "nothing relevant"
        stderr.print(f"best relevance {result.best_relevance:.2f} ({verdict}); {result.timings_ms['total']:.0f} ms")
    return 0
