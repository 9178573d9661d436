"""Questions about the change between two dates (DeltaVLM's interactive change analysis): has anything changed,
what, where, how much, how many regions, what was there before — answered from the measured change; any other
question goes to the VQA model on each date."""

from __future__ import annotations

from terravl.results import ChangeAnswer, ChangeResult
from terravl.tasks.change_text import answer_change_question
from terravl.validation import check_text


def ask_change(before, after, question: str, captioner=None, result: ChangeResult | None = None,
               **options) -> ChangeAnswer:
    """Answer ``question`` about the change from ``before`` to ``after``. ``result`` is a change already measured
    for this pair (a conversation asks several questions of one); otherwise :func:`~terravl.tasks.change.change` runs
    with ``options``. A question outside the change's facts is put to the VQA model (``captioner``) on each date
    and both answers are given."""
    from terravl.tasks.change import change

    asked = check_text(question, "question")
    if captioner is None:
        import terravl.models as m

        captioner = m.load_captioner(m.DEFAULT_CAPTIONER)
    if result is None:
        result = change(before, after, captioner=captioner, **options)
    answer = answer_change_question(asked, result)
    if answer is not None:
        return ChangeAnswer(before=result.before, after=result.after, question=asked, answer=answer,
                            based_on="measured change")
    from terravl.tasks.change import pair_overviews
    from terravl.tasks.vqa import ask

    keys = ("min_overlap", "bands", "trusted")
    views = pair_overviews(before, after, **{k: options[k] for k in keys if k in options})
    answers = ask(list(views), asked, captioner, progress=False)
    said = [f"{name}: {item.answer}" for name, item in zip(("before", "after"), answers.results)]
    return ChangeAnswer(before=result.before, after=result.after, question=asked, answer="; ".join(said),
                        based_on="VQA model on each date")
