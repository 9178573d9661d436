"""Output conventions shared by every command: ``--format table|json``, results on stdout, logs on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table

stderr = Console(stderr=True, highlight=False, markup=False, emoji=False)
stdout = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
"""No markup: what is printed holds file names and user text, where ``[/x]`` is a name, not a closing tag."""


def format_option(*choices: str) -> Callable:
    """``--format`` with ``table`` (human) first and ``json`` (machine-readable, on stdout) always offered."""
    names = choices or ("table", "json")
    return click.option("--format", "fmt", type=click.Choice(names), default=names[0], show_default=True,
                        help="Output: a human-readable table, or JSON on stdout (logs go to stderr).")


def views_option() -> Callable:
    """``--views N`` (1, 2, 4 or 8), passed to the command as an int: test-time averaging over flips/rotations."""
    return click.option("--views", default="1", show_default=True, type=click.Choice(["1", "2", "4", "8"]),
                        callback=lambda ctx, param, value: int(value),
                        help="Test-time augmentation: average each image over 2 (mirror), 4 (90° rotations) or 8 "
                             "(all flips and rotations) views; N× slower.")


def rerank_option() -> Callable:
    """``--rerank`` and ``--rerank-with CAPTIONER``: a captioner re-orders the dual encoder's best candidates.
    The command gets ``rerank``: the captioner's name or folder, or None."""
    def both(command: Callable) -> Callable:
        command = click.option("--rerank-with", "rerank_with", default=None, metavar="CAPTIONER",
                               help="Re-rank with this captioner (a name or folder) instead; implies --rerank.")(command)
        return click.option("--rerank", is_flag=True,
                            help="Re-rank the best candidates with the shipped captioner: it reads each candidate "
                                 "text given the image, finer than one vector each. Slower: one language-model "
                                 "pass per candidate (20 tiles for a text), and for captions ranked for an image "
                                 "32 more per caption (its prior).")(command)
    return both


def make_reranker(rerank: bool, rerank_with: str | None = None):
    """The :class:`~terravl.tasks.rerank.Reranker` that ``--rerank`` / ``--rerank-with`` ask for (None: none)."""
    if not rerank and rerank_with is None:
        return None
    from terravl.tasks.rerank import Reranker

    return Reranker.load(rerank_with)


def bands_option() -> Callable:
    """``--bands PROFILE|R,G,B`` for every command that reads images (checked by terravl.validation)."""
    return click.option("--bands", default=None, metavar="PROFILE|R,G,B",
                        help="Bands of multispectral files to show as RGB: a profile (sentinel2, landsat8, landsat7, "
                             "naip-cir, …) or 1-based indexes like 4,3,2. Default: what the file says (band "
                             "descriptions, colour tags), else its first three bands.")


def emit_json(result: Any) -> None:
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    sys.stdout.flush()


def shown(value: Any) -> str:
    """``value`` as text that any terminal can print: an undecodable byte of a file name or an argument (a lone
    surrogate, as Python passes it) is written ``\\xff``, as Python's own stderr does, not a UnicodeEncodeError."""
    text = str(value)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no byte stands for
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=None if title is None else shown(title), show_lines=False, title_justify="left")
    for col in columns:
        t.add_column(shown(col), overflow="fold")
    for row in rows:
        t.add_row(*["" if v is None else shown(v) for v in row])
    stdout.print(t)


def report_problems(problems: list, limit: int = 50) -> None:
    """One line per problem on stderr: ``path: error`` (a :class:`~terravl.results.Problem` or its dict)."""
    for problem in problems[:limit]:
        path, error = (problem["path"], problem["error"]) if isinstance(problem, dict) else (problem.path,
                                                                                              problem.error)
        click.echo(f"problem: {path}: {error}", err=True)
    if len(problems) > limit:
        click.echo(f"… and {len(problems) - limit} more problem(s); use --format json for the full list", err=True)


def emit_answers(answers, fmt: str, title: str | None, columns: list[str], row: Callable[[Any], list[Any]],
                 json_value: Any = None) -> int:
    """Print a batch task's answers: JSON (results and problems in input order) or a table of the results; one
    ``problem:`` line per problem and a summary that adds up on stderr. Exit 2 when no input could be answered."""
    if fmt == "json":
        emit_json(answers.to_list() if json_value is None else json_value)
    else:
        table(title, columns, [row(r) for r in answers.results])
    report_problems(answers.problems)
    summary = answers.summary()
    if summary["problems"] or fmt != "json":
        click.echo(f"{summary['answered']} answered, {summary['problems']} problem(s), {summary['inputs']} in all",
                   err=True)
    return 2 if summary["problems"] and not summary["answered"] else 0


def window_text(window: dict | None) -> str:
    """A pixel window as ``col,row width×height`` (empty for a whole image)."""
    return "" if not window else f"{window['col_off']},{window['row_off']} {window['width']}×{window['height']}"


def located(result) -> str:
    """A result's path, with its pixel window when it is a tile of a larger raster."""
    return result.path + (f" @{window_text(result.window)}" if result.window else "")
