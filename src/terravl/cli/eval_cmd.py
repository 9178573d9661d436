"""``terravl eval``: the benchmark tables of the RS vision-language papers, for any model or predictions file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from terravl.cli.output import emit_json, format_option, make_reranker, rerank_option, stderr, table, views_option


def _model_option(f):
    return click.option("--model", default="terravl-default", show_default=True,
                        help="Registry name, checkpoint file or model folder (see `terravl models list`).")(f)


def _finish(result: dict, fmt: str, out: Path | None, render) -> None:
    if out is not None:
        _write(out, json.dumps(result, indent=2, default=str) + "\n")
        stderr.print(f"wrote {out}")
    if fmt == "json":
        emit_json(result)
    else:
        render(result)


_out_option = click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
                           help="Also write the result as JSON here (for --compare).")


@click.group(invoke_without_command=True)
@click.option("--compare", nargs=2, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              metavar="A.json B.json", help="Print two saved results side by side.")
@format_option()
@click.pass_context
def eval(ctx: click.Context, compare: tuple[Path, Path] | None, fmt: str) -> None:  # noqa: A001 - the command's name
    """Score models on the standard benchmarks with the papers' exact metrics.

    \b
    Tasks:
      caption    BLEU-1..4, METEOR, ROUGE-L, CIDEr (coco-caption) of predictions on a caption split
      retrieval  image↔text R@1/5/10 and mR (every image has 5 captions) on a caption split
      zeroshot   top-1, per-class accuracy, confusion matrix with a remote-sensing prompt ensemble
      vqa        RSVQA accuracy per question type, overall and average
      change     caption scores on LEVIR-CC, split into changed / unchanged pairs
      change-detection  precision, recall, F1, IoU of the change class on LEVIR-CD (pooled pixels)
      describe   the composed description vs the plain caption: CIDEr…, object recall and precision

    \b
    Examples:
      terravl eval retrieval --dataset data/rsicd_aid/dataset_rsicd_aid.json --model remoteclip-vit-b-32
      terravl eval caption --predictions preds.json --dataset data/rsicd_aid/dataset_rsicd_aid.json
      terravl eval --compare run_a.json run_b.json
    """
    if ctx.invoked_subcommand is not None:
        return
    if not compare:
        click.echo(ctx.get_help())
        return
    a, b = (_saved_result(p) for p in compare)
    rows = _flatten_scores(a), _flatten_scores(b)
    keys = list(dict.fromkeys([*rows[0], *rows[1]]))
    result = {"a": str(compare[0]), "b": str(compare[1]),
              "rows": [{"metric": k, "a": rows[0].get(k), "b": rows[1].get(k)} for k in keys]}
    if fmt == "json":
        emit_json(result)
        return
    table(None, ["metric", compare[0].name, compare[1].name, "b − a"],
          [[k, _fmt(rows[0].get(k)), _fmt(rows[1].get(k)),
            _fmt(rows[1][k] - rows[0][k]) if isinstance(rows[0].get(k), (int, float)) and
            isinstance(rows[1].get(k), (int, float)) else ""] for k in keys])


def _saved_result(path: Path) -> dict:
    """A result written by ``--out``: a JSON object, or an :class:`InputError` naming the file."""
    from terravl.errors import InputError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise InputError(path, "JSON nested too deeply to be a result") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a result written by `terravl eval … --out` (a JSON object)")
    return data


def _write(path: Path, text: str) -> None:
    """Write an output file; a folder that cannot take it is one line naming the file (exit 1)."""
    from terravl.errors import OutputError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(path, f"cannot write ({exc.strerror or exc})") from None


def _flatten_scores(result: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in result.items():
        if key in ("confusion", "classes", "templates"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten_scores(value, f"{name}." if key != "scores" else prefix))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return "" if value is None else str(value)


@eval.command()
@click.option("--dataset", required=True, type=click.Path(path_type=Path), help="Karpathy caption JSON.")
@click.option("--predictions", type=click.Path(path_type=Path),
              help='Score a COCO results file [{"image_id": imgid, "caption": "..."}] instead of generating.')
@click.option("--model", default=None, help="Captioner to generate with (name or folder). Default: terravl-captioner.")
@click.option("--method", type=click.Choice(["generate", "retrieval"]), default="generate", show_default=True,
              help="retrieval: the baseline that copies the consensus caption of the nearest train-split image.")
@click.option("--encoder", default=None, help="Encoder for --method retrieval. Default: terravl-default.")
@click.option("--k", default=1, show_default=True, type=click.IntRange(min=1), help="Retrieval neighbours.")
@click.option("--beams", type=click.IntRange(min=1), help="Beam width for generation (default: the model's).")
@click.option("--split", default="test", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Score only the first N images (quick checks).")
@click.option("--no-meteor", is_flag=True, help="Skip METEOR (the slowest metric; needs Java).")
@click.option("--reference", is_flag=True, help="Use pycocoevalcap's own BLEU/ROUGE-L/CIDEr code (slow) instead of "
                                                "TerraVL's fast path, which gives the same values.")
@click.option("--save-predictions", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the generated captions here (COCO results format).")
@_out_option
@format_option()
def caption(dataset: Path, predictions: Path | None, model: str | None, method: str, encoder: str | None, k: int,
            beams: int | None, split: str, limit: int | None, no_meteor: bool, reference: bool,
            save_predictions: Path | None, out: Path | None, fmt: str) -> None:
    """coco-caption scores (Bleu_1…Bleu_4, METEOR, ROUGE_L, CIDEr) on a caption split: of captions generated
    now (the shipped captioner, --model, or --method retrieval), or of a PREDICTIONS file.

    \b
    Examples:
      terravl eval caption --dataset ../shared/data/rsicd_aid/dataset_rsicd_aid.json --split test
      terravl eval caption --dataset ../shared/data/rsicd_aid/dataset_rsicd_aid.json --method retrieval
      terravl eval caption --dataset D.json --predictions results.json
    """
    from terravl.eval.runners import eval_caption, eval_caption_model

    implementation = "reference" if reference else "fast"
    if predictions is not None:
        result = eval_caption(dataset, predictions, split, not no_meteor, implementation)
    else:
        from terravl.cli.caption_cmd import _load

        captioner = _load(model, method, dataset, encoder, k)
        result = eval_caption_model(dataset, captioner, split, beams=beams, meteor=not no_meteor, limit=limit,
                                    implementation=implementation)
        generated = result.pop("predictions")
        if save_predictions:
            _write(save_predictions, json.dumps(generated, indent=1) + "\n")
    _finish(result, fmt, out, lambda r: table(
        f"captioning{': ' + r['model'] if 'model' in r else ''}, {r['split']} split ({r['images']} images)",
        list(r["scores"]), [[f"{v:.4f}" for v in r["scores"].values()]]))


@eval.command()
@click.option("--dataset", required=True, type=click.Path(path_type=Path), help="Karpathy caption JSON with images.")
@click.option("--split", default="test", show_default=True)
@_model_option
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@views_option()
@rerank_option()
@_out_option
@format_option()
def retrieval(dataset: Path, split: str, model: str, batch_size: int, views: int, rerank: bool,
              rerank_with: str | None, out: Path | None, fmt: str) -> None:
    """Image→text and text→image R@1/5/10 and mR (percent) with the RS protocol.

    With --rerank, a captioner re-orders each caption's 20 best images and each image's 50 best captions; the
    JSON result keeps the scores without it too.

    \b
    Examples:
      terravl eval retrieval --dataset ../shared/data/ucm_captions/dataset_ucm_captions.json --split val
      terravl eval retrieval --dataset ../shared/data/ucm_captions/dataset_ucm_captions.json --split val --rerank
    """
    import terravl.models as m
    from terravl.eval.runners import eval_retrieval

    reranker = make_reranker(rerank, rerank_with)  # first: a bad captioner is reported before the encoder loads
    result = eval_retrieval(m.load(model), dataset, split, batch_size, views, rerank=reranker)
    s = result["scores"]
    _finish(result, fmt, out, lambda r: table(
        f"retrieval: {r['model']}{' re-ranked by ' + r['rerank']['captioner'] if 'rerank' in r else ''} on "
        f"{r['split']} ({r['images']} images, {r['captions']} captions)",
        ["i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "mR"],
        [[f"{s[k]:.2f}" for k in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mR")]]))


@eval.command()
@click.option("--dataset", required=True, type=click.Path(path_type=Path),
              help="Class folders, or caption JSON with a 'class' field.")
@click.option("--split", default="test", show_default=True,
              help="Split to score (class folders without split lists use every image).")
@_model_option
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@views_option()
@_out_option
@format_option()
def zeroshot(dataset: Path, split: str, model: str, batch_size: int, views: int, out: Path | None, fmt: str) -> None:
    """Zero-shot scene classification: top-1, per-class accuracy and confusion matrix."""
    import terravl.models as m
    from terravl.eval.runners import eval_zeroshot

    result = eval_zeroshot(m.load(model), dataset, split, batch_size=batch_size, views=views)

    def render(r):
        table(f"zero-shot: {r['model']}, {r['n']} images, top-1 {r['top1']:.2f} %", ["class", "accuracy %"],
              [[c, f"{v:.1f}" if v is not None else "-"] for c, v in r["per_class"].items()])

    _finish(result, fmt, out, render)


@eval.command()
@click.option("--dataset", required=True, type=click.Path(path_type=Path),
              help="RSVQA folder, or a caption JSON with a 'class' field (questions derived from class and captions).")
@click.option("--predictions", type=click.Path(path_type=Path),
              help='Score a file [{"question_id": id, "answer": "..."}] instead of answering now.')
@click.option("--model", default=None, help="Captioner that answers (name or folder). Default: terravl-captioner.")
@click.option("--split", default="test", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Only the questions of the first N images.")
@_out_option
@format_option()
def vqa(dataset: Path, predictions: Path | None, model: str | None, split: str, limit: int | None, out: Path | None,
        fmt: str) -> None:
    """VQA accuracy per question type, overall accuracy and average accuracy (percent), RSVQA style.

    \b
    Examples:
      terravl eval vqa --dataset ../shared/data/rsicd_aid/dataset_rsicd_aid.json      # derived questions
      terravl eval vqa --dataset RSVQA_LR/ --predictions answers.json
    """
    from terravl.eval.runners import eval_vqa, eval_vqa_model

    if predictions is not None:
        result = eval_vqa(dataset, predictions, split)
    else:
        from terravl.cli.caption_cmd import _load

        result = eval_vqa_model(dataset, _load(model), split, limit=limit)
        result.pop("predictions")
    s = result["scores"]
    _finish(result, fmt, out, lambda r: table(
        f"VQA {r['split']}" + (f" ({r['questions_from']} questions, {r['model']})" if "model" in r else ""),
        ["question type", "questions", "accuracy %"],
        [[t, s["questions"][t], f"{a:.2f}"] for t, a in s["per_type"].items()] +
        [["overall", sum(s["questions"].values()), f"{s['overall_accuracy']:.2f}"],
         ["average", "", f"{s['average_accuracy']:.2f}"]]))


@eval.command()
@click.option("--dataset", required=True, type=click.Path(path_type=Path), help="LEVIR-CC folder or JSON.")
@click.option("--predictions", required=True, type=click.Path(path_type=Path),
              help='JSON: [{"image_id": "test_000123", "caption": "..."}].')
@click.option("--split", default="test", show_default=True)
@click.option("--no-meteor", is_flag=True)
@_out_option
@format_option()
def change(dataset: Path, predictions: Path, split: str, no_meteor: bool, out: Path | None, fmt: str) -> None:
    """Change-captioning scores on LEVIR-CC pairs: all, changed and unchanged."""
    from terravl.eval.runners import eval_change

    result = eval_change(dataset, predictions, split, not no_meteor)
    keys = list(next(iter(result["scores"].values())))
    _finish(result, fmt, out, lambda r: table(f"LEVIR-CC {r['split']} ({r['pairs']} pairs)", ["pairs", *keys],
                                              [[g, *[f"{v:.4f}" for v in s.values()]]
                                               for g, s in r["scores"].items()]))


@eval.command("change-detection")
@click.option("--dataset", required=True, type=click.Path(path_type=Path),
              help="LEVIR-CD folder: A/, B/, label/ (flat or under train/, val/, test/).")
@click.option("--methods", default="trained,cva,embedding", show_default=True, metavar="M1,M2",
              help="Comma-separated change methods: trained, cva, embedding.")
@click.option("--split", default=None, help="Score one split only (default: every pair).")
@click.option("--detector", default=None, metavar="NAME|FOLDER",
              help="Change detector for the trained method (default: the shipped terravl-change).")
@click.option("--model", default=None, help="Encoder for the embedding method (default: terravl-default-v2, which it was "
              "calibrated with).")
@click.option("--limit", type=click.IntRange(min=1), help="Score only the first N pairs (quick checks).")
@_out_option
@format_option()
def change_detection(dataset: Path, methods: str, split: str | None, detector: str | None, model: str | None,
                     limit: int | None, out: Path | None, fmt: str) -> None:
    """Change detection on LEVIR-CD pairs: precision, recall, F1 and IoU of the change class and overall accuracy,
    from confusion counts summed over every pixel of every pair (the LEVIR-CD convention), for each method.

    \b
    Examples:
      terravl eval change-detection --dataset ../shared/data/levir_cd_samples
      terravl eval change-detection --dataset LEVIR-CD/ --split test --methods cva,embedding --format json
    """
    from terravl.cli.output import report_problems
    from terravl.eval.change_detection import evaluate_change_detection

    names = [m.strip() for m in methods.split(",") if m.strip()]
    encoder = None
    if model is not None and "embedding" in names:
        import terravl.models as m

        encoder = m.load(model)
    result = evaluate_change_detection(dataset, names, split=split, encoder=encoder, detector=detector, limit=limit)

    def render(r):
        table(f"change detection: {r['dataset']}" + (f", {r['split']} split" if r["split"] else "") +
              f" ({r['pairs']} pairs, {r['changed_pixels']:,} of {r['pixels']:,} pixels changed; pooled pixels)",
              ["method", "precision", "recall", "F1", "IoU", "OA", "seconds"],
              [[name, *[f"{s[k]:.4f}" for k in ("precision", "recall", "f1", "iou", "overall_accuracy")],
                f"{s['seconds']:.1f}"] for name, s in r["scores"].items()])

    _finish(result, fmt, out, render)
    report_problems(result["problems"])


@eval.command("kb")
@click.option("--kb", "kb_file", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Knowledge base built from the train splits (`terravl kb build … --split train`).")
@click.option("--dataset", "datasets", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Karpathy caption JSON with images and classes (repeatable, one --split each).")
@click.option("--split", "splits", required=True, multiple=True, help="The held-apart split of each --dataset.")
@click.option("--model", default=None, help="Captioner / VQA bridge (name or folder). Default: terravl-captioner.")
@click.option("--parts", default="evidence,answers,captions", show_default=True,
              help="Which measurements: evidence (precision@5), answers (scene/presence), captions (CIDEr).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N images of each split (quick checks).")
@_out_option
@format_option()
def kb(kb_file: Path, datasets: tuple[Path, ...], splits: tuple[str, ...], model: str | None, parts: str,
       limit: int | None, out: Path | None, fmt: str) -> None:
    """Does a knowledge base help? Evidence precision@5 of the query image's scene class (hybrid against each
    retriever alone), scene and presence answers with and without the knowledge base, and retrieval-augmented
    captioning against the plain captioner (CIDEr), on held-apart images.

    \b
    Example (the README's measurement):
      terravl kb build ../shared/data/rsicd_aid/dataset_rsicd_aid.json \\
          ../shared/data/ucm_captions/dataset_ucm_captions.json --split train --scene-classes --out rs.kb
      terravl eval kb --kb rs.kb --dataset ../shared/data/rsicd_aid/dataset_rsicd_aid.json --split test \\
          --dataset ../shared/data/ucm_captions/dataset_ucm_captions.json --split val
    """
    from terravl.cli.caption_cmd import _load
    from terravl.eval.kb import evaluate_kb

    if len(datasets) != len(splits):
        raise click.UsageError("give one --split for each --dataset")
    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    unknown = set(chosen) - {"evidence", "answers", "captions"}
    if unknown or not chosen:
        raise click.UsageError("--parts: choose among evidence, answers, captions")
    result = evaluate_kb(kb_file, list(zip(datasets, splits)), _load(model), limit=limit, parts=chosen)

    def render(r):
        for name, d in r["datasets"].items():
            if "precision_at_5" in d:
                table(f"{name}: evidence precision@5 of the query's scene class ({d['images']} images)",
                      ["retrieval", "P@5 %"], [[k, f"{v:.2f}"] for k, v in d["precision_at_5"].items()])
            if "answers" in d:
                a = d["answers"]
                table(f"{name}: answers ({a['questions']} questions), accuracy %", ["question type", "without kb",
                                                                                     "with kb"],
                      [[t, f"{a['without kb']['per_type'][t]:.2f}", f"{a['with kb']['per_type'][t]:.2f}"]
                       for t in a["without kb"]["per_type"]])
            if "captions" in d:
                c = d["captions"]
                table(f"{name}: captions", ["captioner", *c["plain captioner"]],
                      [[k, *[f"{x:.4f}" for x in v.values()]] for k, v in c.items()])

    _finish(result, fmt, out, render)


@eval.command("grounding")
@click.option("--dataset", type=click.Path(path_type=Path), default=None,
              help="A user's RRSIS-D folder (refs(unc).p + instances.json) or RSVG / DIOR-RSVG folder "
                   "(Annotations/*.xml). Default: the fixed composite benchmark built from the held-apart images of "
                   "rsicd_aid (test) and ucm_captions (val).")
@click.option("--data-root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The folder holding rsicd_aid/ and ucm_captions/ for the composite benchmark (default: "
                   "$TERRAVL_SHARED/data or ../shared/data).")
@click.option("--split", default=None, help="Score one split of --dataset only (e.g. test).")
@click.option("--methods", default="trained,baseline", show_default=True, metavar="M1,M2",
              help="Comma-separated grounding methods: trained, baseline.")
@click.option("--model", default=None, help="Dual encoder (default: the one the grounder was trained on).")
@click.option("--grounder", default=None, metavar="NAME|FOLDER",
              help="Grounder for the trained method (default: the shipped terravl-grounder).")
@click.option("--n", "count", type=click.IntRange(min=1), default=None,
              help="Composites in the benchmark (default 600: 200 of each kind of expression).")
@click.option("--seed", type=int, default=None, help="Seed of the composite benchmark (default: the fixed one).")
@click.option("--limit", type=click.IntRange(min=1), help="Score only the first N expressions (quick checks).")
@click.option("--examples", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for ground-caption.png, ground-class.png, ground-spatial.png: three composites of each "
                   "kind with the first method's answers.")
@_out_option
@format_option()
def grounding(dataset: Path | None, data_root: Path | None, split: str | None, methods: str, model: str | None,
              grounder: str | None, count: int | None, seed: int | None, limit: int | None, examples: Path | None,
              out: Path | None, fmt: str) -> None:
    """Visual grounding / referring segmentation: mIoU, overall IoU, precision at IoU 0.5 / 0.7 / 0.9 (the
    RRSIS-D protocol) and box accuracy at IoU 0.5 (the RSVG protocol), per method, with each kind of expression
    (caption, class phrase, spatially qualified phrase) on its own row for the composite benchmark. Every answer
    is made by `terravl ground` itself; an expression with no answer counts as IoU 0.

    \b
    Examples:
      terravl eval grounding
      terravl eval grounding --methods baseline --n 90 --format json
      terravl eval grounding --dataset RRSIS-D/ --split test
      terravl eval grounding --dataset DIOR_RSVG/ --split test --methods trained
    """
    from terravl import config
    from terravl.cli.output import report_problems
    from terravl.eval.grounding import evaluate_grounding
    import terravl.tasks.ground_methods as gm

    names = [m.strip() for m in methods.split(",") if m.strip()]
    encoder = loaded = None
    if model is not None:
        import terravl.models as m

        encoder = m.load(model)
    if grounder is not None and "trained" in names:
        from terravl.models.grounder import load_grounder

        loaded = load_grounder(grounder, encoder)
    chosen = {name: gm.make_method(name, encoder=encoder, grounder=loaded) for name in names}
    if dataset is None and data_root is None:
        shared = config.shared_dir()
        data_root = shared / "data" if shared is not None else None
    result = evaluate_grounding(chosen, dataset=dataset, data_root=data_root, split=split, n=count, seed=seed,
                                limit=limit, log=lambda message: stderr.print(message), examples=examples)

    def render(r):
        keys = ("miou", "oiou", "p@0.5", "p@0.7", "p@0.9", "box_acc@0.5")
        rows = []
        for name, s in r["scores"].items():
            rows.append([name, "all", s["n"], *[f"{100 * s[k]:.1f}" if k in s else "" for k in keys],
                         f"{s['seconds']:.0f}"])
            for kind, ks in (s.get("kinds") or {}).items():
                rows.append(["", kind, ks["n"], *[f"{100 * ks[k]:.1f}" if k in ks else "" for k in keys], ""])
        table(f"grounding: {r['dataset']}" + (f", {r['split']} split" if r.get("split") else ""),
              ["method", "expressions", "n", "mIoU", "oIoU", "P@0.5", "P@0.7", "P@0.9", "box acc@0.5", "seconds"],
              rows)

    _finish(result, fmt, out, render)
    report_problems(result["problems"])
