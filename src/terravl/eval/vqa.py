"""VQA accuracy as RSVQA reports it: accuracy per question type, overall accuracy (all questions) and average
accuracy (the mean of the per-type accuracies)."""

from __future__ import annotations

from collections import defaultdict


def normalise_answer(answer: str) -> str:
    return " ".join(str(answer).strip().lower().rstrip(".").split())


def vqa_accuracy(items: list[tuple[str, str, str]]) -> dict:
    """``items``: (question type, reference answer, predicted answer). Accuracies in percent."""
    per_type: dict[str, list[int]] = defaultdict(list)
    for qtype, truth, pred in items:
        per_type[qtype].append(int(normalise_answer(truth) == normalise_answer(pred)))
    by_type = {t: 100.0 * sum(v) / len(v) for t, v in sorted(per_type.items())}
    total = sum(len(v) for v in per_type.values())
    overall = 100.0 * sum(sum(v) for v in per_type.values()) / total if total else 0.0
    average = sum(by_type.values()) / len(by_type) if by_type else 0.0
    return {"per_type": by_type, "overall_accuracy": overall, "average_accuracy": average,
            "questions": {t: len(v) for t, v in sorted(per_type.items())}}
