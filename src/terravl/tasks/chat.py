"""Talk to an image (issue 18): one conversation step, :func:`chat_turn` — route the instruction with the
conversation so far, call the expert, and return the answer with what it rests on and the next state.

The step is pure: everything a turn needs is in its arguments (the :class:`ChatState` of the conversation and the
:class:`ChatModels`, loaded once by the caller), and everything it leaves is in what it returns. So the terminal
REPL keeps the state in a variable, the HTTP service in its session store, and turns of different conversations
run in parallel with nothing shared but the (read-only) models.

The experts are TerraVL's task functions: ``caption`` and ``describe`` (the captioner), ``yesno``, ``question``
and ``count`` (the VQA bridge, :func:`terravl.tasks.ask`), ``classify`` (zero-shot, the dual encoder), ``locate``
(:func:`terravl.tasks.ground`: regions with areas, WGS84 outlines when the image is georeferenced), ``change``
(:func:`terravl.tasks.change` / :func:`~terravl.tasks.ask_change` on a pair of dates), ``search`` (an index) and
``knowledge`` (:func:`terravl.tasks.ask_kb`, a knowledge base). A task that needs something the conversation was
not given (two dates, an index, a knowledge base) answers a sentence saying what to pass (``missing``).

Follow-ups resolve through the state: "how big is it?" after a locate is answered from the region it found (no
model call); "and in the second image?" repeats the previous task on the other date; "where is it?" after a count
locates the counted object (the router carries the object over).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator

from terravl.errors import InputError
from terravl.results import Result

MAX_TURNS = 20
"""Turns kept in a state (the oldest are dropped): a long conversation's state stays small."""
OVERVIEW_SIDE = 512
"""Caption, VQA and classification look at the whole image decimated to this many pixels on its long side (read
tile by tile: any raster size at constant memory); grounding reads the image at full resolution."""
MAX_INSTANCES = 20
SEARCH_K = 5
DESCRIBE_EXPERT = "description experts (scene, objects, where, counts)"
CAPTION_ONLY = "captioner (no description experts loaded)"
IMAGE_TASKS = ("caption", "describe", "yesno", "question", "count", "locate", "classify")
Missing = Literal["image2", "index", "kb", "object"]


# ---------------------------------------------------------------------------------------------------- values
class ChatTurn(Result):
    """One turn as the state keeps it: the routed task and arguments (with the image it was about), the answer's
    text, and its key facts (``region``: the best located region with its area; ``total``: all of them; ``count``;
    ``hits``: the search hits' ids; ``changed``: the measured change)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    turn: int
    instruction: str
    task: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    answer: str
    facts: dict[str, Any] = Field(default_factory=dict)


class ChatState(Result):
    """A conversation: its images (one, or two dates of one place: before, after), how each is named in answers
    (``labels``: a file name, "upload", "tile 12 of …"), the index and knowledge base it may use (paths), whether
    the images are trusted local files (uploads are not), and its last :data:`MAX_TURNS` turns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    images: tuple[str, ...]
    labels: tuple[str, ...] = ()
    index: str | None = None
    kb: str | None = None
    trusted: bool = True
    turn_count: int = 0
    turns: tuple[ChatTurn, ...] = ()

    @field_validator("images")
    @classmethod
    def _one_or_two(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not 1 <= len(value) <= 2:
            raise ValueError(f"a conversation is about one image or two dates of one place, got {len(value)}")
        return value

    @classmethod
    def start(cls, images: list, index: str | Path | None = None, kb: str | Path | None = None,
              labels: list[str] | None = None, trusted: bool = True, check: bool = True) -> "ChatState":
        """A new conversation about ``images`` (1 or 2). With ``check``, each image's header is read now, so a
        missing or unreadable file is an :class:`InputError` naming it before the first turn."""
        images = [str(p) for p in images]
        if not 1 <= len(images) <= 2:
            raise InputError("images", f"give one image, or two dates of one place (before, after); got "
                                       f"{len(images)}")
        shown = list(labels) if labels else [Path(p).name or p for p in images]
        if len(shown) != len(images):
            raise InputError("labels", "give one label per image")
        if check:
            from terravl.io import raster_info

            for path in images:
                raster_info(path, trusted=trusted)
        return cls(images=tuple(images), labels=tuple(shown), index=None if index is None else str(index),
                   kb=None if kb is None else str(kb), trusted=trusted)

    def label(self, image: int) -> str:
        return self.labels[image - 1] if self.labels else Path(self.images[image - 1]).name

    def last(self, *tasks: str) -> ChatTurn | None:
        """The latest turn with one of ``tasks`` (any task but ``unknown`` when none is named)."""
        for turn in reversed(self.turns):
            if (turn.task in tasks) if tasks else turn.task != "unknown":
                return turn
        return None

    def current_image(self) -> int:
        """The image the conversation is on: the one the last image task was about (1 at the start)."""
        for turn in reversed(self.turns):
            if "image" in turn.arguments and int(turn.arguments["image"]) <= len(self.images):
                return int(turn.arguments["image"])
        return 1

    def after(self, turn: ChatTurn) -> "ChatState":
        return self.model_copy(update={"turn_count": turn.turn, "turns": (self.turns + (turn,))[-MAX_TURNS:]})


class ChatAnswer(Result):
    """One turn's answer (what ``terravl chat --once --format json`` prints): the task and arguments it was routed
    to, the answer's text, and what it rests on — ``regions`` (GeoJSON: WGS84, or pixel coordinates when
    ``coordinates`` says so), ``boxes`` (each instance's pixel window, WGS84 box, area, score), ``evidence`` (a
    knowledge base's), ``hits`` (search), ``facts`` (the key numbers) — the router's ``confidence``, which
    ``expert`` answered, ``resolved`` (how a follow-up was read from the conversation), ``missing`` (what the task
    needs that was not given) and ``error`` (why the expert could not answer this input)."""

    turn: int
    instruction: str
    task: str
    arguments: dict[str, Any]
    answer: str
    expert: str
    confidence: float
    image: int | None = None
    image_label: str | None = None
    regions: dict | None = None
    coordinates: str | None = None
    boxes: list[dict] = Field(default_factory=list)
    evidence: list[dict] = Field(default_factory=list)
    hits: list[dict] = Field(default_factory=list)
    facts: dict[str, Any] = Field(default_factory=dict)
    resolved: str | None = None
    missing: Missing | None = None
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()  # every answer has the same keys

    @property
    def answered(self) -> bool:
        """False when the turn could not be answered (something missing, or the expert refused the input)."""
        return self.missing is None and self.error is None


# ---------------------------------------------------------------------------------------------------- models
_UNSET = object()


class Lazy:
    """A model loaded on its first use and kept (a cache of a read-only model, not conversation state): a
    conversation that never compares dates never loads the change detector. Thread-safe."""

    def __init__(self, load: Callable[[], Any]):
        self._load, self._value, self._lock = load, _UNSET, threading.Lock()

    def get(self) -> Any:
        if self._value is _UNSET:
            with self._lock:
                if self._value is _UNSET:
                    self._value = self._load()
        return self._value


@dataclass(frozen=True)
class ChatModels:
    """The loaded models every turn shares (each a model, a :class:`Lazy` or None): the ``captioner`` (caption,
    VQA), the dual ``encoder`` (classification), the ``grounder`` (a grounding method:
    :func:`terravl.tasks.ground_methods.make_method`), the change ``detector`` (for ``change_method`` trained),
    the ``router`` (None: the shipped one) and ``encoders``: the encoder of an index's or a knowledge base's model
    by its name (cached by the caller; None: only ``encoder`` itself)."""

    captioner: Any = None
    encoder: Any = None
    grounder: Any = None
    detector: Any = None
    router: Any = None
    describer: Any = None
    """The description experts (:class:`terravl.tasks.describe.Experts`); None: the captioner alone describes."""
    encoders: Callable[[str], Any] | None = None
    change_method: str = "trained"
    max_pixels: int | None = None
    """Largest image grounded or pair compared, in pixels (the server's work budget); None: the tasks' default."""

    def get(self, name: str) -> Any:
        value = getattr(self, name)
        return value.get() if isinstance(value, Lazy) else value

    def need(self, name: str, what: str) -> Any:
        value = self.get(name)
        if value is None:
            raise _Unavailable(f"{what} is not available here (no {name} was loaded)")
        return value

    def encoder_for(self, model: str) -> Any:
        """The encoder of ``model`` (an index's or a knowledge base's): ``encoder`` when it is that model, else
        ``encoders(model)``."""
        own = self.get("encoder")
        if own is not None and model in (getattr(own, "source", None), getattr(own, "name", None)):
            return own
        if self.encoders is None:
            raise _Unavailable(f"the model {model!r} this needs is not loaded here")
        return self.encoders(model)


class _Unavailable(Exception):
    """An expert this turn needs was not given to :class:`ChatModels` (said in the answer, not raised)."""


# ---------------------------------------------------------------------------------------------------- the step
def chat_turn(state: ChatState, instruction: str, models: ChatModels) -> tuple[ChatAnswer, ChatState]:
    """One conversation step: route ``instruction`` (with the previous turn as context), resolve references to
    earlier turns, call the expert, and return the answer and the new state (``state`` itself is not changed).

    An empty, over-long or non-text instruction is an :class:`InputError` naming ``instruction``; text that tries
    to steer the router ("ignore previous instructions…") is plain text. Anything else is answered: what a task
    needs and was not given is said in the answer (``missing``), and an input the expert refuses (a too-small
    image) in ``error``."""
    from terravl.router import RouterContext, route
    from terravl.router.model import MAX_CHARS, check_instruction
    from terravl.validation import check_text

    text = check_text(check_instruction(instruction), "instruction", MAX_CHARS)
    previous = state.last()
    context = RouterContext(images=len(state.images), previous_task=previous.task if previous else None,
                            previous_arguments=_routable(previous.arguments) if previous else {})
    routed = route(text, context, models.get("router"))
    turn = state.turn_count + 1
    base = dict(turn=turn, instruction=text, task=routed.task, arguments=dict(routed.arguments),
                confidence=routed.confidence)
    if routed.task == "unknown":
        answer = ChatAnswer(**base, answer=routed.reply or "", expert="router")
        return answer, _record(state, answer, {})
    try:
        answer, facts = _answer(state, text, routed.task, dict(routed.arguments), base, models)
    except _Unavailable as exc:
        answer, facts = ChatAnswer(**base, answer=f"{exc}.", expert="none", error=str(exc)), {}
    except InputError as exc:
        what = _shown(exc, state)
        answer = ChatAnswer(**base, answer=f"I could not answer that: {what}", expert=_EXPERTS.get(routed.task, ""),
                            error=what)
        facts = {}
    return answer, _record(state, answer, facts)


_EXPERTS = {"caption": "captioner", "describe": DESCRIBE_EXPERT, "yesno": "VQA model", "question": "VQA model",
            "count": "VQA model", "locate": "grounding", "classify": "zero-shot classifier (dual encoder)",
            "change": "change detection", "search": "archive search", "knowledge": "knowledge base"}

_ROUTER_KEYS = ("object", "question", "labels", "query", "image")


def _routable(arguments: dict) -> dict:
    """The arguments the router knows (the state's turns may carry more)."""
    return {k: v for k, v in arguments.items() if k in _ROUTER_KEYS}


def _record(state: ChatState, answer: ChatAnswer, facts: dict) -> ChatState:
    """The state after ``answer``: unanswered turns are kept (the user sees them) without facts."""
    return state.after(ChatTurn(turn=answer.turn, instruction=answer.instruction, task=answer.task,
                                arguments=answer.arguments, answer=answer.answer, facts=facts))


def _shown(exc: InputError, state: ChatState) -> str:
    """An expert's error about an input, naming the image by its label, not its (possibly temporary) path."""
    message = f"{exc.source}: {exc.message}"
    for path, label in zip(state.images, state.labels or state.images):
        message = message.replace(path, label)
    return message


def _answer(state: ChatState, text: str, task: str, args: dict, base: dict, models: ChatModels
            ) -> tuple[ChatAnswer, dict]:
    if task in ("question", "yesno", "locate", "count"):
        size = _size_question(text)
        if size is not None:
            resolved = _answer_size(state, text, size, base, models)
            if resolved is not None:
                return resolved
    if task in IMAGE_TASKS:
        image = int(args.get("image") or state.current_image())
        if image > len(state.images):
            return _missing(base, "image2", "This conversation has one image, so there is no second image. To "
                                            "compare dates or ask about another, pass two images (before, "
                                            "after)."), {}
        if len(state.images) == 2:
            args["image"] = image
        base = {**base, "arguments": args, "image": image, "image_label": state.label(image)}
        if task in ("count", "locate"):
            obj = _object(args, state)
            if not obj:
                verb = "count" if task == "count" else "find"
                return _missing(base, "object", f"What should I {verb}? Name it, e.g. \"how many cars are "
                                                 f"there?\" or \"where is the runway?\"."), {}
            args["object"] = obj
        return _IMAGE_EXPERTS[task](state, image, args, base, models)
    if task == "change":
        if len(state.images) < 2:
            return _missing(base, "image2", "Comparing dates needs two images of the same place (before, after); "
                                            "this conversation has one. Start it with two images."), {}
        return _change(state, args, base, models)
    if task == "search":
        if not state.index:
            return _missing(base, "index", "Searching the archive needs an index: pass one (--index IDX in the "
                                           "terminal, index over HTTP)."), {}
        return _search(state, args, base, models)
    if task == "knowledge":
        if not state.kb:
            return _missing(base, "kb", "That needs a knowledge base, and this conversation has none: pass one "
                                        "(--kb KB in the terminal, kb over HTTP)."), {}
        return _knowledge(state, args, base, models)
    raise AssertionError(f"unrouted task {task!r}")


def _missing(base: dict, what: Missing, sentence: str) -> ChatAnswer:
    return ChatAnswer(**base, answer=sentence, expert="none", missing=what)


# ---------------------------------------------------------------------------------------------------- image experts
def view(state: ChatState, image: int, side: int = OVERVIEW_SIDE) -> np.ndarray:
    """The whole of image ``image`` (1 or 2) as (H, W, 3) uint8, decimated to at most ``side`` pixels on its long
    side, read tile by tile (constant memory for any raster)."""
    from terravl.io import open_raster, tile_windows
    from terravl.tasks.change import _Overview

    with open_raster(state.images[image - 1], trusted=state.trusted) as src:
        width, height = src.info.width, src.info.height
        out = _Overview.of(width, height, side, 3, np.uint8, 0)
        for _, _, window in tile_windows(width, height, max(256, out.step * 64)):
            rgb, _ = src.read_rgb(window)
            out.paste(rgb, window)
    return out.array


def describe_image(picture: np.ndarray, models: ChatModels) -> tuple[str, str]:
    """(a detailed description of ``picture``, who wrote it): the description experts of
    :mod:`terravl.tasks.describe` (scene type, objects, where they are, counts) when loaded, else the captioner."""
    experts = models.get("describer")
    if experts is None:
        return _caption_text(picture, models, beams=3, max_tokens=60), CAPTION_ONLY
    from terravl.tasks.describe import describe

    return _one(describe([picture], experts=experts, progress=False)).description, DESCRIBE_EXPERT


def _caption_text(picture: np.ndarray, models: ChatModels, beams: int | None = None, max_tokens: int | None = None
                  ) -> str:
    from terravl.tasks.caption import caption

    answers = caption([picture], models.need("captioner", "captioning"), beams=beams, max_tokens=max_tokens,
                      progress=False)
    return _one(answers).caption


def _one(answers):
    from terravl.results import Problem

    item = answers[0]
    if isinstance(item, Problem):
        raise InputError("image", item.error)
    return item


def _caption(state, image, args, base, models):
    text = _caption_text(view(state, image), models)
    return ChatAnswer(**base, answer=text, expert="captioner"), {"caption": text}


def _describe(state, image, args, base, models):
    text, expert = describe_image(view(state, image), models)
    return ChatAnswer(**base, answer=text, expert=expert), {"description": text}


def _vqa(picture: np.ndarray, question: str, models: ChatModels) -> str:
    from terravl.tasks.vqa import ask

    return _one(ask([picture], question, models.need("captioner", "question answering"), progress=False)).answer


def _question(state, image, args, base, models):
    question = args.get("question") or base["instruction"]
    said = _vqa(view(state, image), question, models)
    return ChatAnswer(**base, answer=said, expert="VQA model"), {"answer": said}


def _count(state, image, args, base, models):
    obj = args["object"]
    said = _vqa(view(state, image), f"how many {obj} are there?", models)
    number = _number(said)
    facts = {"count": {"object": obj, "image": image, "answer": said, "number": number}}
    text = (f"{said} ({obj} in {state.label(image)})" if number is not None else
            f"The VQA model gave no number for the {obj} in {state.label(image)} (it said \"{said}\"; it was not "
            f"trained to count): \"where are the {obj}?\" shows them as regions.")
    return ChatAnswer(**base, answer=text, expert="VQA model", facts={"count": number, "object": obj}), facts


def _classify(state, image, args, base, models):
    from terravl.tasks.classify import classify

    labels = args.get("labels")
    names = labels if labels else None
    result = _one(classify([view(state, image)], models.need("encoder", "scene classification"), names,
                           None if names else "aid", k=3))
    top = ", ".join(f"{_spaced(t.label)} {t.probability:.0%}" for t in result.top[1:])
    text = f"{_spaced(result.label)} ({result.score:.0%})" + (f"; next: {top}" if top else "")
    facts = {"label": result.label, "score": round(result.score, 4)}
    answer = ChatAnswer(**base, answer=text, expert="zero-shot classifier (dual encoder)",
                        facts={**facts, "top": [t.to_dict() for t in result.top]})
    return answer, {"class": facts}


def _spaced(label: str) -> str:
    """"DenseResidential" → "dense residential"; labels with spaces are kept."""
    return label if " " in label else re.sub(r"(?<=[a-z])(?=[A-Z])", " ", label).lower()


def _locate(state, image, args, base, models):
    from terravl.tasks.ground import DEFAULT_MAX_PIXELS, ground

    obj = args["object"]
    result = ground(state.images[image - 1], obj, method=models.need("grounder", "grounding"), all=True,
                    max_instances=MAX_INSTANCES, max_pixels=models.max_pixels or DEFAULT_MAX_PIXELS,
                    trusted=state.trusted, label=state.label(image), progress=False)
    boxes = [{k: inst[k] for k in ("rank", "score", "window", "box", "area_m2", "pixels", "percent", "position")}
             for inst in result.instances]
    warnings = list(result.warnings)
    common = dict(regions=result.regions, coordinates=result.coordinates, boxes=boxes, warnings=warnings,
                  expert=f"grounding ({result.method})")
    if not result.found:
        text = (f"I found no {obj} in {state.label(image)} (best score {result.best_score:.2f}; a match needs "
                f"{result.floor:.2f}).")
        return ChatAnswer(**base, answer=text, facts={"found": False}, **common), \
            {"located": {"object": obj, "image": image, "found": False, "turn": base["turn"]}}
    best = boxes[0]
    total_m2 = None if best["area_m2"] is None else round(sum(b["area_m2"] for b in boxes), 1)
    total = {"regions": len(boxes), "area_m2": total_m2, "pixels": sum(b["pixels"] for b in boxes),
             "percent": round(sum(b["percent"] for b in boxes), 3)}
    many = f"{len(boxes)} regions; the best" if len(boxes) > 1 else "one region"
    text = (f"{obj}: {many} at the {best['position']} of {state.label(image)}, {_area(best)} (score "
            f"{best['score']:.2f})" + (f"; {_area(total)} in all" if len(boxes) > 1 else "") + ".")
    facts = {"located": {"object": obj, "image": image, "found": True, "region": best, "total": total,
                         "coordinates": result.coordinates, "turn": base["turn"]}}
    return ChatAnswer(**base, answer=text, facts={"found": True, "regions": len(boxes), "area_m2": best["area_m2"],
                                                  "pixels": best["pixels"], "total": total}, **common), facts


def _area(item: dict) -> str:
    from terravl.tasks.change_text import area_text

    return area_text(item.get("area_m2"), item["pixels"]) + f" ({item['percent']:.1f} % of the image)"


_IMAGE_EXPERTS = {"caption": _caption, "describe": _describe, "yesno": _question, "question": _question,
                  "count": _count, "locate": _locate, "classify": _classify}


# ---------------------------------------------------------------------------------------------------- follow-ups
_SIZE = re.compile(r"\b(?:how (?:big|large|wide|long|extensive|much (?:area|space|ground|land))|what(?: is|'s) "
                   r"(?:the |its |their )?(?:size|area|extent|surface)|(?:size|area|extent) of|how many "
                   r"(?:square|hectares?|acres?|m2|km2|sq)|(?:its|their) (?:size|area|extent))\b", re.IGNORECASE)
_CHANGE = re.compile(r"\b(?:chang\w*|differ\w*|new|gone|lost|gained|grew|grown|built|demolished)\b", re.IGNORECASE)
"""A size question about the change ("how much area changed?") is the change expert's, not a region's."""
_SIZE_OBJECT = re.compile(r"\b(?:how (?:big|large|wide|long|extensive) (?:is|are|was|were)|(?:size|area|extent) "
                          r"of|much (?:area|space|ground|land) (?:does|do|is|are)(?: covered by)?) (?P<object>[^?.!,]+)",
                          re.IGNORECASE)
_REFERS = {"it", "its", "they", "them", "those", "these", "this", "that", "one", "ones", "there", "region",
           "regions", "area", "areas", "the", "thing", "things", "all", "of", "each", "together", "altogether",
           "combined", "total", "in", "both", "whole"}
"""Words of a size question's object that only refer back ("how big are *they all together*?")."""
_PLURAL_REF = re.compile(r"\b(they|them|those|these|all|together|in total|altogether|combined)\b", re.IGNORECASE)
_TAIL = re.compile(r"\s+(?:take up|cover|occupy|in (?:this|the|that) (?:image|picture|photo|scene)|in square.*|"
                   r"in (?:m2|km2|hectares).*|(?:be|is|are)$|(?:take|use)s?$|in total|altogether|all together)$",
                   re.IGNORECASE)


def _size_question(text: str) -> str | None:
    """The object a size question names ("" for "it", "they"…), or None when ``text`` asks no size."""
    if not _SIZE.search(text) or _CHANGE.search(text):
        return None
    m = _SIZE_OBJECT.search(text)
    if not m:
        return ""
    obj = _TAIL.sub("", m.group("object").strip()).strip()
    obj = re.sub(r"^(?:the|a|an|that|this|those|these|its|their)\s+", "", obj, flags=re.IGNORECASE).strip()
    return "" if all(w in _REFERS for w in obj.lower().split()) else obj


def _answer_size(state: ChatState, text: str, named: str, base: dict, models: ChatModels
                 ) -> tuple[ChatAnswer, dict] | None:
    """A size question answered from the conversation: the last located region's area (or all regions', for
    "they"), or the last measured change's. A new object is located first. None: nothing to measure (the
    question goes to its routed expert)."""
    located = state.last("locate")
    facts = (located.facts.get("located") if located else None) or {}
    changed = state.last("change")
    if not named and changed is not None and changed.facts.get("changed") and (not located or changed.turn >
                                                                                located.turn):
        c = changed.facts["changed"]
        from terravl.tasks.change_text import area_text

        answer = (f"The change measured in turn {c['turn']} covers {area_text(c['area_m2'], c['pixels'])} "
                  f"({100 * c['fraction']:.1f} % of the overlap, {c['regions']} region(s)).")
        return ChatAnswer(**{**base, "task": "change", "arguments": {}}, answer=answer, expert="conversation state",
                          resolved=f"the change measured in turn {c['turn']}",
                          facts={"area_m2": c["area_m2"], "pixels": c["pixels"]}), {"changed": c}
    same = not named or named.lower() == str(facts.get("object", "")).lower()
    if facts and same and facts.get("found"):
        obj, image = facts["object"], facts["image"]
        whole = _PLURAL_REF.search(text) and facts["total"]["regions"] > 1
        item = facts["total"] if whole else facts["region"]
        what = (f"the {facts['total']['regions']} {obj} regions together cover" if whole else
                f"the {'best-matching ' if facts['total']['regions'] > 1 else ''}{obj} region covers")
        answer = (f"In {state.label(image)}, {what} {_area(item)}" +
                  ("" if item.get("area_m2") is not None else "; the image has no georeference, so the area is in "
                                                              "pixels") + ".")
        args = {"object": obj, **({"image": image} if len(state.images) == 2 else {})}
        regions, boxes = _located_shapes(state, located)
        return ChatAnswer(**{**base, "task": "locate", "arguments": args}, image=image,
                          image_label=state.label(image), answer=answer, expert="conversation state",
                          resolved=f"the {'regions' if whole else 'region'} located in turn {facts['turn']}",
                          facts={"area_m2": item.get("area_m2"), "pixels": item["pixels"],
                                 "percent": item["percent"]}, regions=regions, boxes=boxes,
                          coordinates=facts.get("coordinates")), {"located": facts}
    if facts and same and not facts.get("found"):
        answer = f"I found no {facts['object']} in turn {facts['turn']}, so there is nothing to measure."
        return ChatAnswer(**{**base, "arguments": {"object": facts["object"]}}, answer=answer,
                          expert="conversation state", resolved=f"the search in turn {facts['turn']}"), {}
    obj = named or _last_object(state)
    if not obj:
        return None
    args = {"object": obj}
    image = state.current_image()
    if len(state.images) == 2:
        args["image"] = image
    answer, facts = _locate(state, image, args, {**base, "task": "locate", "arguments": args, "image": image,
                                                 "image_label": state.label(image)}, models)
    if answer.facts.get("found"):
        answer = answer.model_copy(update={"answer": f"{obj} covers {_area(answer.boxes[0])}. " + answer.answer})
    return answer, facts


def _located_shapes(state: ChatState, turn: ChatTurn) -> tuple[dict | None, list[dict]]:
    """The region a size answer refers to, as regions and boxes the map can draw (from the state: no model)."""
    region = turn.facts["located"]["region"]
    coordinates = turn.facts["located"].get("coordinates")
    shape = region.get("box")
    if shape is None or coordinates != "wgs84":
        return None, [region]
    feature = {"type": "Feature", "geometry": shape,
               "properties": {k: region[k] for k in ("rank", "score", "area_m2", "pixels", "position")}}
    return {"type": "FeatureCollection", "features": [feature]}, [region]


_NOT_OBJECT = {"where", "they", "them", "it", "is", "are", "located", "there", "those", "these", "that", "this",
               "one", "ones", "show", "me", "find", "the", "located?"}


def _object(args: dict, state: ChatState) -> str:
    """The object to count or locate: the router's, unless it holds no noun (a pronoun, "where they"), then the
    previous count's or locate's."""
    obj = str(args.get("object") or "").strip()
    if obj and any(w not in _NOT_OBJECT for w in obj.lower().split()):
        return obj
    return _last_object(state)


def _last_object(state: ChatState) -> str:
    turn = state.last("count", "locate")
    return str(turn.arguments.get("object", "")) if turn else ""


def _number(text: str) -> int | None:
    words = {"zero": 0, "none": 0, "no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
             "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
    m = re.search(r"\d+", text)
    if m:
        return int(m.group())
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in words:
            return words[word]
    return None


# ---------------------------------------------------------------------------------------------------- pair, archive
def _change_options(state: ChatState, models: ChatModels) -> dict:
    from terravl.tasks.change import DEFAULT_MAX_PIXELS

    options: dict[str, Any] = {"method": models.change_method, "trusted": state.trusted,
                               "labels": (state.label(1), state.label(2)),
                               "max_pixels": models.max_pixels or DEFAULT_MAX_PIXELS, "progress": False}
    if models.change_method == "trained":
        options["detector"] = models.need("detector", "the trained change detector")
    if models.change_method == "embedding":  # the encoder it was calibrated with (not the default's)
        from terravl.tasks.change_detect import EMBEDDING_MODEL, make_method

        options["method"] = make_method("embedding", encoder=models.encoder_for(EMBEDDING_MODEL))
    captioner = models.get("captioner")
    if captioner is not None:
        options.update(captioner=captioner, encoder=captioner.encoder)
    else:
        options.update(describe=False, encoder=models.get("encoder"))
    return options


def _change(state, args, base, models):
    from terravl.tasks.change import change
    from terravl.tasks.change_ask import ask_change

    options = _change_options(state, models)
    before, after = state.images
    result = change(before, after, **options)
    facts = {"changed": {"fraction": round(result.changed_fraction, 6), "area_m2": result.changed_area_m2,
                         "pixels": result.changed_pixels, "regions": result.region_count, "turn": base["turn"]}}
    pixel = "coordinates" in (result.regions.get("properties") or {})
    shapes = dict(regions=result.regions, coordinates="pixel" if pixel else "wgs84", warnings=list(result.warnings),
                  facts={"changed": result.changed, "changed_fraction": result.changed_fraction,
                         "changed_area_m2": result.changed_area_m2, "region_count": result.region_count})
    question = args.get("question")
    if question:
        options.pop("captioner", None)
        said = ask_change(before, after, question, models.need("captioner", "question answering"), result=result,
                          **{k: v for k, v in options.items() if k not in ("encoder",)})
        return ChatAnswer(**base, answer=said.answer, expert=f"change ({said.based_on})", **shapes), facts
    from terravl.tasks.change_text import area_text

    summary = result.caption if "%" in result.caption else (
        f"{result.caption} ({100 * result.changed_fraction:.1f} % changed, "
        f"{area_text(result.changed_area_m2, result.changed_pixels)}, {result.region_count} region(s))")
    return ChatAnswer(**base, answer=summary, expert=f"change detection ({result.method})", **shapes), facts


def _search(state, args, base, models):
    from terravl.index.shards import open_index
    from terravl.tasks.retrieve import search

    query = args.get("query")
    with open_index(state.index, readonly=True) as store:  # a single index or a sharded one
        encoder = models.encoder_for(store.model)
        if query:
            hits = search(store, text=query, k=SEARCH_K, encoder=encoder)
        else:
            image = state.current_image()
            hits = search(store, image=view(state, image), k=SEARCH_K, encoder=encoder)
    rows = [h.to_dict() for h in hits]
    about = f"{query!r}" if query else f"images like {state.label(state.current_image())}"
    if not rows:
        text = f"Nothing in the index matches {about}."
    else:
        listed = "; ".join(f"{i}. {Path(h['path']).name}" + (f" ({h['acquired']})" if h.get("acquired") else "") +
                           f" {h['score']:.2f}" for i, h in enumerate(rows, 1))
        text = f"{len(rows)} best matches for {about}: {listed}."
    features = [{"type": "Feature", "geometry": h["footprint"], "properties": {"rank": i, "id": h["id"],
                                                                             "score": round(h["score"], 4)}}
                for i, h in enumerate(rows, 1) if h.get("footprint")]
    regions = {"type": "FeatureCollection", "features": features} if features else None
    return ChatAnswer(**base, answer=text, expert="archive search", hits=rows, regions=regions,
                      coordinates="wgs84" if features else None), {"hits": [h["id"] for h in rows]}


def _knowledge(state, args, base, models):
    from terravl.kb import KBStore
    from terravl.tasks.rag import ask_kb

    question = args.get("question") or base["instruction"]
    with KBStore(state.kb, readonly=True) as store:
        answer = ask_kb(store, question, encoder=models.encoder_for(store.model))
    evidence = [e.to_dict() for e in answer.evidence]
    return ChatAnswer(**base, answer=answer.answer, expert=f"knowledge base ({answer.answered_by})",
                      evidence=evidence, facts={"found": answer.found, "citations": answer.citations,
                                                "best_relevance": answer.best_relevance}), \
        {"kb": {"found": answer.found, "citations": answer.citations}}


__all__ = ["ChatAnswer", "ChatModels", "ChatState", "ChatTurn", "Lazy", "MAX_TURNS", "chat_turn", "describe_image",
           "view"]
