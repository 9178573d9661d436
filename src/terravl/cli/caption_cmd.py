"""``terravl caption`` and ``terravl ask``: describe images and answer questions about them, offline."""

from __future__ import annotations

from pathlib import Path

import click

from terravl.cli.change_cmd import change_kwargs, change_options
from terravl.cli.output import bands_option, emit_answers, emit_json, format_option, located, table

_captioner_option = click.option("--model", default=None,
                                 help="Captioner name or folder written by `terravl train caption`. "
                                      "Default: terravl-captioner (shipped).")
_tile_option = click.option("--tile-size", default=256, show_default=True, type=click.IntRange(min=16),
                            help="Rasters larger than twice this are described tile by tile.")


def _load(model: str | None, method: str = "generate", bank: Path | None = None, encoder: str | None = None,
          k: int = 1):
    import terravl.models as m

    if method == "retrieval":
        if bank is None:
            raise click.UsageError("--method retrieval needs --bank: a caption dataset whose train split is the "
                                   "caption bank")
        from terravl import config
        from terravl.models.retrieval_captioner import RetrievalCaptioner
        from terravl.validation import MAX_CONSENSUS_K, check_int

        k = check_int(k, "k", 1, MAX_CONSENSUS_K)

        return RetrievalCaptioner.from_dataset(m.load(encoder or m.DEFAULT_MODEL), bank, "train", k,
                                               config.terravl_home() / "cache")
    return m.load_captioner(model or m.DEFAULT_CAPTIONER)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@_captioner_option
@click.option("--method", type=click.Choice(["generate", "retrieval"]), default="generate", show_default=True,
              help="generate: the captioner writes a sentence. retrieval: the caption of the nearest image of "
                   "--bank (the field's strong, cheap baseline).")
@click.option("--bank", type=click.Path(path_type=Path, exists=True),
              help="Caption dataset (Karpathy JSON) whose train split is the retrieval bank.")
@click.option("--k", default=1, show_default=True, type=int,
              help="Retrieval: neighbours whose captions vote for the consensus caption (1 to 50).")
@click.option("--beams", type=int, help="Beam width, 1 (greedy) to 8. Default: the model's (3).")
@click.option("--max-tokens", type=int, help="Longest caption in tokens. Default: 40.")
@_tile_option
@bands_option()
@format_option()
def caption(images, model, method, bank, k, beams, max_tokens, tile_size, bands, fmt) -> int:
    """Describe IMAGES (files, folders, large GeoTIFFs per tile) in one sentence each.

    \b
    Examples:
      terravl caption ../shared/data/aid_150px/images/Port/port_1.jpg
      terravl caption scene.tif --tile-size 512 --format json      # one caption per tile, with its footprint
      terravl caption img.jpg --method retrieval --bank ../shared/data/rsicd_aid/dataset_rsicd_aid.json
      terravl caption img.jpg --model runs/my-captioner/model --beams 5
    """
    from terravl.tasks import caption as caption_task

    answers = caption_task(list(images), _load(model, method, bank, k=k), beams=beams, max_tokens=max_tokens,
                           tile_size=tile_size, bands=bands)
    return emit_answers(answers, fmt, None, ["path", "caption"], lambda r: [located(r), r.caption])


@click.command()
@click.argument("images", nargs=-1, required=False, type=click.Path(path_type=Path))
@click.argument("question")
@_captioner_option
@click.option("--beams", default=1, show_default=True, type=int, help="Beam width, 1 (greedy) to 8.")
@click.option("--max-tokens", default=12, show_default=True, type=int, help="Longest answer in tokens (1 to 256).")
@_tile_option
@click.option("--before", "before", type=click.Path(path_type=Path), default=None,
              help="With --after: ask about the change between these two dates instead of about IMAGES.")
@click.option("--after", "after", type=click.Path(path_type=Path), default=None,
              help="The later image of the pair (see --before).")
@click.option("--kb", "kb_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Answer from this knowledge base (`terravl kb build`), with numbered citations; IMAGES optional.")
@click.option("--lm", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="With --kb: a local Hugging Face causal LM folder that writes the answer from the question and "
                   "the retrieved evidence. Default: TerraVL's own answerer.")
@click.option("--evidence", "evidence_k", default=5, show_default=True, type=int,
              help="With --kb: evidence items retrieved and listed (1 to 50).")
@click.option("--min-relevance", type=float, default=None,
              help="With --kb: best evidence cosine below which the answer is 'not found'. Default: 0.5 for a "
                   "question alone, 0.6 with an image.")
@change_options
@format_option()
def ask(images, question, model, beams, max_tokens, tile_size, before, after, kb_file, lm, evidence_k, min_relevance,
        method, detector, min_overlap, min_region_pixels, max_pixels, bands, fmt) -> int:
    """Answer QUESTION about each of IMAGES (the last argument is the question), or about the change between
    two dates (--before A --after B).

    The shipped model was trained on questions derived from scene classes and captions: the kind of area ("what
    kind of area is this?"), whether an object is there ("is there a bridge?", yes/no) and whether the scene is of
    a given class ("is this a port area?"). Other questions get an answer in the same vocabulary, with less skill.

    About a change, questions on whether anything changed, what changed, where, how much area, how many regions
    and what was there before are answered from the measured change (as `terravl change` measures it); other
    questions go to the VQA model on each date. --method, --detector, --min-overlap, --min-region-pixels and
    --max-pixels apply only with --before/--after.

    With --kb, the answer is grounded in a knowledge base: evidence is retrieved (hybrid retrieval), the answer
    cites it by number and the evidence list follows; the output says who answered (--lm, or TerraVL's answerer:
    the VQA model for the image plus the evidence, weighed by the knowledge base's calibration: `terravl kb
    calibrate`). When nothing relevant is retrieved the answer is "not found in the knowledge base", with the best
    evidence score.

    \b
    Examples:
      terravl ask ../shared/data/aid_150px/images/Port/port_1.jpg "what kind of area is this?"
      terravl ask scene.jpg "is there a bridge in this image?" --format json
      terravl ask --before 2009.tif --after 2020.tif "how much area changed?"
      terravl ask --kb site.kb "when did the pine forest burn?"
      terravl ask scene.jpg "what kind of area is this?" --kb rs.kb --lm ~/models/my-causal-lm
    """
    from terravl.tasks import ask as ask_task

    if kb_file is not None:
        if before is not None or after is not None:
            raise click.UsageError("--kb answers about IMAGES or from the knowledge base alone, not about a change")
        return _ask_kb(images, question, kb_file, lm, evidence_k, model, fmt, min_relevance)
    if lm is not None or min_relevance is not None:
        raise click.UsageError("--lm and --min-relevance need --kb (they are about a knowledge base's evidence)")
    if before is not None or after is not None:
        return _ask_change(images, before, after, question, model,
                           change_kwargs(method, detector, min_overlap, min_region_pixels, max_pixels, bands), fmt)
    if not images:
        raise click.UsageError("give IMAGES and a QUESTION, or --before A --after B and a QUESTION")
    bands = bands or "auto"

    answers = ask_task(list(images), question, _load(model), beams=beams, max_tokens=max_tokens, tile_size=tile_size,
                       bands=bands)
    single = answers[0].to_dict() if len(answers) == 1 and not answers.problems else None
    return emit_answers(answers, fmt, question, ["path", "answer"], lambda r: [located(r), r.answer], single)


def _ask_change(images, before, after, question, model, kwargs: dict, fmt: str) -> int:
    from terravl.tasks.change_ask import ask_change

    if images:
        raise click.UsageError("with --before/--after give only the QUESTION, not images")
    if before is None or after is None:
        raise click.UsageError("a question about change needs both --before and --after")
    answer = ask_change(before, after, question, _load(model), **kwargs)
    if fmt == "json":
        emit_json(answer.to_dict())
    else:
        table(question, ["answer", "based on"], [[answer.answer, answer.based_on]])
    return 0


def _ask_kb(images, question, kb_file: Path, lm: Path | None, k: int, model: str | None, fmt: str,
            min_relevance: float | None = None) -> int:
    """``ask --kb``: one grounded answer per image (or one for the question alone), with its evidence."""
    from terravl.cli.kb_cmd import evidence_table
    from terravl.cli.output import report_problems
    from terravl.errors import InputError
    from terravl.kb import KBStore
    from terravl.results import Problem
    from terravl.tasks.rag import ask_kb
    from terravl.validation import check_k, check_text

    from terravl.kb.query import relevance_threshold

    check_text(question, "question")
    check_k(k, "evidence", 50)
    relevance_threshold(bool(images), min_relevance)
    from terravl.models.light_text import query_encoder

    answers, problems = [], []
    with KBStore(kb_file, readonly=True) as store:
        encoder = query_encoder(store.model, text_only=not images and lm is None)
        captioner = _load(model) if images else None
        for image in images or [None]:
            try:
                answers.append(ask_kb(store, question, image, encoder, captioner, lm, k,
                                      path=None if image is None else str(image), min_relevance=min_relevance))
            except InputError as exc:
                if image is None or exc.source == "lm":
                    raise
                problems.append(Problem(str(image), exc.message))
    rows = [a.to_dict() for a in answers]
    if fmt == "json":
        emit_json(rows[0] if len(rows) == 1 and not problems else rows + [p.to_dict() for p in problems])
    else:
        for a in rows:
            table((f"{a['path']}: " if a.get("path") else "") + question, ["answer", "answered by"],
                  [[a["answer"], a["answered_by"]]])
            evidence_table("evidence", a["evidence"])
    report_problems(problems)
    return 2 if problems and not answers else 0
