"""Scoring a router on a JSONL file of hand-written instructions (``benchmarks/data/router_eval.jsonl``).

Each line: ``{"text", "task", "arguments", "context"?}``. Task accuracy is over every line. Argument exact match
is over the lines whose task was routed right and where either side has arguments (``caption this`` → ``{}`` =
``{}`` would only inflate it); both sides are compared after the normalisation the router applies itself (lower
case for objects, queries and labels, single spaces), the question text as asked.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from terravl.errors import InputError
from terravl.router.templates import TASKS
from terravl.router.text import clean, phrase


def load_eval(path: str | Path) -> list[dict]:
    """The examples of a router evaluation file; a malformed line is an :class:`InputError` naming it."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(path, "no such evaluation file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"unreadable evaluation file ({exc})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(where, f"not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or row.get("task") not in TASKS:
            raise InputError(where, f"needs \"text\" (a string) and \"task\" (one of {', '.join(TASKS)})")
        if not isinstance(row.get("arguments", {}), dict) or not isinstance(row.get("context", {}), dict):
            raise InputError(where, "\"arguments\" and \"context\" must be JSON objects")
        rows.append(row)
    if not rows:
        raise InputError(path, "no examples in the evaluation file")
    return rows


def normalise(arguments: dict) -> dict:
    """Arguments in comparable form."""
    out = {}
    for key, value in arguments.items():
        if key in ("object", "query"):
            out[key] = phrase(str(value))
        elif key == "labels" and isinstance(value, list):
            out[key] = [phrase(str(v)) for v in value]
        elif key == "question":
            out[key] = clean(str(value))
        else:
            out[key] = value
    return out


def score_examples(router, rows: list[dict], embeddings: np.ndarray | None = None, mistakes: int = 0) -> dict:
    """Task accuracy, argument exact match, per-task accuracy and the confusion counts of ``router`` on ``rows``
    (``embeddings``: their text embeddings when already computed)."""
    from terravl.router.model import as_context, check_instruction, decide

    texts = [check_instruction(r["text"]) for r in rows]
    probs = router.probabilities(texts, embeddings)
    confusion: dict[str, Counter] = defaultdict(Counter)
    right = arg_n = arg_right = 0
    wrong = []
    for row, text, p in zip(rows, texts, probs):
        got = decide(text, as_context(row.get("context")), p, router)
        confusion[row["task"]][got.task] += 1
        expected = normalise(row.get("arguments", {}))
        if got.task == row["task"]:
            right += 1
            if expected or got.arguments:
                arg_n += 1
                arg_right += normalise(got.arguments) == expected
                if normalise(got.arguments) != expected:
                    wrong.append({"text": row["text"], "task": row["task"], "expected": expected,
                                  "got": got.arguments})
        else:
            wrong.append({"text": row["text"], "task": row["task"], "routed": got.task,
                          "confidence": got.confidence})
    per_task = {t: {"examples": sum(confusion[t].values()), "correct": confusion[t][t],
                    "accuracy": round(100.0 * confusion[t][t] / max(sum(confusion[t].values()), 1), 2)}
                for t in TASKS if confusion[t]}
    result = {"examples": len(rows), "task_accuracy": round(100.0 * right / len(rows), 2),
              "argument_examples": arg_n,
              "argument_exact_match": round(100.0 * arg_right / max(arg_n, 1), 2),
              "per_task": per_task,
              "confusion": {t: dict(confusion[t]) for t in TASKS if confusion[t]}}
    if mistakes:
        result["mistakes"] = wrong[:mistakes]
    return result


def evaluate(router, data: str | Path, mistakes: int = 0) -> dict:
    """:func:`score_examples` on the evaluation file ``data``."""
    rows = load_eval(data)
    result = score_examples(router, rows, mistakes=mistakes)
    return {"router": router.name, "data": str(data), **result}
