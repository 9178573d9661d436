"""``terravl chat``: talk to an image (or two dates of one place) in the terminal, or answer one instruction for a
script (``--once``). Each instruction is routed to an expert (caption, VQA, grounding, classification, change,
search, knowledge base); follow-ups ("how big is it?", "and in the second image?") refer to earlier turns."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from terravl.cli.output import emit_json, shown, stdout

HELP_TEXT = """\
Ask in plain words, one instruction a line; follow-ups refer to the previous answers.
  caption this / describe it in detail        one sentence / a detailed description
  is there a bridge? / what is on the left?   questions about the image (VQA)
  how many boats are there? / where are they? count, then locate (regions with areas)
  how big is it?                              the area of the region just located
  and in the second image?                    the same question about the other date
  is this farmland or forest? / classify it   scene class (your labels, or AID's 30)
  what changed? / how much area changed?      compare the two dates (with two images)
  find similar images / search for ports      the archive (with --index)
  who built the harbour?                      the knowledge base (with --kb)
Commands: :help, :quit (or Ctrl-D). Ctrl-C cancels the line."""


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="IMAGE [IMAGE2] [INSTRUCTION]")
@click.option("--once", is_flag=True, help="Answer one INSTRUCTION (the last argument) and exit: for scripts.")
@click.option("--index", "index", type=click.Path(path_type=Path), default=None,
              help="An index (`terravl index build`) that \"search …\" and \"find similar images\" search.")
@click.option("--kb", "kb", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="A knowledge base (`terravl kb build`) that questions about facts are answered from.")
@click.option("--model", default=None, help="Captioner / VQA model (name or folder). Default: terravl-captioner.")
@click.option("--router", "router_name", default=None, metavar="NAME|FOLDER",
              help="Instruction router (name or `terravl train router` folder). Default: terravl-router.")
@click.option("--method", type=click.Choice(["auto", "trained", "baseline"]), default="auto", show_default=True,
              help="Grounding method for \"where is …\" (see `terravl ground --help`).")
@click.option("--change-method", type=click.Choice(["trained", "cva", "embedding"]), default="trained",
              show_default=True, help="Change detection method for \"what changed?\" (see `terravl change --help`).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Answers as text, or as JSON on stdout (one object per turn; logs go to stderr).")
def chat(args, once, index, kb, model, router_name, method, change_method, fmt) -> int:
    """Talk to IMAGE (or to IMAGE and IMAGE2, two dates of one place: before, after).

    Each instruction is routed to an expert — captioner, VQA model, grounding, zero-shot classification, change
    detection, archive search (--index), knowledge base (--kb) — and answered with its task; follow-ups refer to
    earlier turns: "how big is it?" after "where is the lake?" is the lake's area, "and in the second image?"
    asks the same of the other date. The terminal keeps a history (arrow keys; saved under $TERRAVL_HOME).

    With --once, the last argument is the instruction: one answer, then exit (0 answered; 2 when it needs
    something not given, e.g. a second image for "what changed?", or the input was refused). With --format
    json the answer is {task, arguments, answer, regions, boxes, evidence, hits, facts, expert, …}.

    \b
    Examples:
      terravl chat scene.tif
      terravl chat before.tif after.tif --index archive.idx --kb site.kb
      terravl chat --once scene.tif "where are the storage tanks?" --format json
      terravl chat --once before.tif after.tif "how much area changed?"
      terravl chat --once scene.jpg "is this farmland or forest?"
    """
    from terravl.errors import InputError

    args = list(args)
    if once:
        if len(args) < 2:
            raise click.UsageError("--once needs IMAGE [IMAGE2] and the INSTRUCTION (the last argument)")
        images, instruction = args[:-1], args[-1]
    else:
        images, instruction = args, None
    if len(images) > 2:
        raise click.UsageError(f"give one image, or two dates of one place (IMAGE IMAGE2), not {len(images)}"
                               + ("" if once else "; to answer one instruction use --once"))
    for label, path in (("--index", index), ("--kb", kb)):
        if path is not None and not Path(path).exists():
            raise InputError(path, f"no such file or folder ({label})")
    from terravl.tasks.chat import ChatState, chat_turn

    state = ChatState.start(images, index=index, kb=kb)
    models = _models(model, router_name, method, change_method)
    if once:
        answer, _ = chat_turn(state, instruction, models)
        _print(answer, fmt)
        if not answer.answered:  # the script's exit code says so; stderr says why, as every command does
            click.echo(f"error: {answer.error or answer.missing or answer.answer}", err=True)
        return 0 if answer.answered else 2
    return _repl(state, models, fmt, chat_turn)


class _Encoders:
    """The encoder of an index's or a knowledge base's model, loaded once per name for the session."""

    def __init__(self):
        self.loaded: dict[str, object] = {}

    def __call__(self, name: str):
        if name not in self.loaded:
            import terravl.models as m

            self.loaded[name] = m.load(name)
        return self.loaded[name]


def _models(model, router_name, method, change_method):
    """Every model the conversation may need, each loaded on its first use and kept (a conversation that never
    compares dates never loads the change detector)."""
    import terravl.models as m
    from terravl.model_versions import HEADS_ENCODER
    from terravl.tasks.chat import ChatModels, Lazy

    encoders = _Encoders()
    encoder = Lazy(lambda: encoders(m.DEFAULT_MODEL))
    heads_encoder = Lazy(lambda: encoders(HEADS_ENCODER))  # what the shipped router, grounder, object head read

    def router():
        from terravl.router import DEFAULT_ROUTER, load_router

        name = router_name or DEFAULT_ROUTER
        return load_router(name, heads_encoder.get() if name == DEFAULT_ROUTER else None)

    def grounder():
        from terravl.tasks.ground_methods import make_method

        return make_method(method, encoder=heads_encoder.get())

    def detector():
        from terravl.models.change_detector import load_change_detector

        return load_change_detector()

    captioner = Lazy(lambda: m.load_captioner(model or m.DEFAULT_CAPTIONER))

    def describer():
        from terravl.tasks.describe import Experts

        return Experts(encoder=heads_encoder.get(), captioner=captioner.get())

    return ChatModels(captioner=captioner, encoder=encoder, grounder=Lazy(grounder), detector=Lazy(detector),
                      router=Lazy(router), describer=Lazy(describer), encoders=encoders, change_method=change_method)


def _print(answer, fmt: str) -> None:
    for warning in answer.warnings:
        click.echo(f"warning: {warning}", err=True)
    if fmt == "json":
        emit_json(answer.to_dict())
        return
    where = f" · {answer.image_label}" if answer.image_label else ""
    stdout.print(shown(f"[{answer.task}{where} · {answer.expert}] {answer.answer}"))
    if answer.resolved:
        stdout.print(shown(f"  (from the conversation: {answer.resolved})"))
    for box in answer.boxes[:10]:
        w = box["window"]
        stdout.print(shown(f"  #{box['rank']} {box['position']}: pixels {w['col_off']},{w['row_off']} "
                           f"{w['width']}×{w['height']}" + (f" · {_lonlat(box['box'])}" if box.get("box") else "")))
    for i, hit in enumerate(answer.hits, 1):
        stdout.print(shown(f"  {i}. {hit['path']} (id {hit['id']}, score {hit['score']:.3f})"))
    for item in answer.evidence[:5]:
        text = (item.get("text") or item.get("title") or "").replace("\n", " ")
        stdout.print(shown(f"  [{item['rank']}] {item['source']}: {text[:120]}"))


def _lonlat(box: dict) -> str:
    ring = box["coordinates"][0]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    return f"lon/lat {min(lons):.5f},{min(lats):.5f} … {max(lons):.5f},{max(lats):.5f}"


def _history():
    """Line editing and a persistent history: Python's readline (GNU readline or libedit), history in
    $TERRAVL_HOME/chat_history. None when stdin is not a terminal (piped input needs neither)."""
    if not sys.stdin.isatty():
        return None
    try:
        import readline
    except ImportError:  # a Python without readline: plain input() still works
        return None
    from terravl import config

    path = config.terravl_home() / "chat_history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            readline.read_history_file(path)
    except OSError:
        return None
    readline.set_history_length(1000)
    return lambda: _save_history(readline, path)


def _save_history(readline, path: Path) -> None:
    try:
        readline.write_history_file(path)
    except OSError as exc:
        click.echo(f"warning: could not save the history to {shown(path)} ({exc.strerror or exc})", err=True)


def _repl(state, models, fmt: str, chat_turn) -> int:
    from terravl.errors import InputError, TerraVLError

    save = _history()
    names = " and ".join(state.labels)
    click.echo(f"Talking about {shown(names)}. Ask away; :help for examples, :quit or Ctrl-D to leave.", err=True)
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                click.echo("", err=True)
                return 0
            except KeyboardInterrupt:
                click.echo("", err=True)
                continue
            command = line.strip()
            if not command:
                continue
            if command in (":quit", ":q", ":exit"):
                return 0
            if command in (":help", ":h", "?"):
                click.echo(HELP_TEXT, err=fmt == "json")
                continue
            if command.startswith(":"):
                click.echo(f"unknown command {shown(command)}: :help or :quit", err=True)
                continue
            try:
                answer, state = chat_turn(state, line, models)
            except KeyboardInterrupt:
                click.echo("(interrupted)", err=True)
                continue
            except InputError as exc:
                click.echo(f"error: {shown(exc)}", err=True)
                continue
            except TerraVLError as exc:  # a model that cannot load, an index that cannot be read: say so, go on
                click.echo(f"error: {shown(exc)}", err=True)
                continue
            _print(answer, fmt)
    finally:
        if save is not None:
            save()
