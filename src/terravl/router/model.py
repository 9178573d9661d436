"""The router's classifier and its model folder, and :func:`route`, the pure function the chat layer calls.

The classifier is one linear layer over two views of the instruction: the shipped dual encoder's text embedding
(meaning: "tally the ships" is near "count the boats") and hashed character and word n-grams (surface: typos,
"hw many", punctuation). Its classes are the tasks plus ``followup`` ("and in the second image?"), whose task is
the previous turn's. Arguments come from :mod:`terravl.router.extract`.

A model folder holds ``router.json`` (the encoder's name, the classes, the n-gram settings), ``model.safetensors``
(the weights) and ``training.json`` (the recipe and its scores). Named routers are registered like the grounders:
one JSON file per router in ``models/configs/routers/``; weights shipped in the package or in
``$TERRAVL_HOME/models/<file>``.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, ValidationError

from terravl.errors import InputError
from terravl.results import Result
from terravl.router import extract
from terravl.router.templates import FOLLOWUP, LABELS, TASKS
from terravl.router.text import canonical, clean

DEFAULT_ROUTER = "terravl-router"
SETTINGS_FILE = "router.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "models" / "configs" / "routers"
MAX_CHARS = 500

Task = Literal["caption", "describe", "yesno", "question", "count", "locate", "classify", "change", "search",
               "knowledge", "unknown"]

REPLY = ("I can caption or describe an image, answer yes/no or open questions about it, count or locate objects "
         "(\"how many ships?\", \"where is the runway?\"), classify the scene, compare two dates, search the "
         "archive, and answer from the knowledge base.")
"""What an instruction the router cannot route is answered with."""

IMAGE_TASKS = {"caption", "describe", "yesno", "question", "count", "locate", "classify"}
"""Tasks about one image, which may name which image of a pair ("the second image")."""


class RouterContext(Result):
    """The conversation so far, as far as routing needs it: how many images the conversation is about (1, or 2
    for a pair of dates) and the previous turn's task and arguments (for follow-ups: "and in the second image?",
    "how many are there?")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    images: Literal[1, 2] | None = None
    previous_task: Task | None = None
    previous_arguments: dict[str, Any] = Field(default_factory=dict)


class Route(Result):
    """Where an instruction goes: the task, its arguments, the classifier's probability for the chosen class and,
    for ``unknown``, a short reply saying what the router can do."""

    task: Task
    arguments: dict[str, Any] = Field(default_factory=dict)
    confidence: float
    reply: str | None = None


@dataclass(frozen=True)
class RouterConfig:
    """One named router (``models/configs/routers/<name>.json``), resolved like the other registries."""

    name: str
    arch: str
    file: str
    shipped: bool = False
    encoder: str = "terravl-default"
    hf_repo: str | None = None
    hf_filename: str | None = None
    source: str = ""
    description: str = ""
    notes: str = ""
    kind: str = field(default="router", repr=False)
    family: str = field(default="linear-text", repr=False)


def routers() -> dict[str, RouterConfig]:
    from terravl.models.registry import read_configs

    return read_configs(RouterConfig, CONFIG_DIR)


# ---------------------------------------------------------------------------------------------------- features
def ngram_ids(text: str, dim: int, chars: tuple[int, int] = (2, 5)) -> list[int]:
    """Hashed ids of the character n-grams of the lower-cased text and of the word uni- and bigrams of its
    canonical tokens (crc32: the same ids on every machine and Python)."""
    low = " " + clean(text.lower()) + " "
    grams = [f"c{low[i:i + n]}" for n in range(chars[0], chars[1] + 1) for i in range(max(len(low) - n + 1, 0))]
    words = ["<s>"] + canonical(text).split() + ["</s>"]
    grams += [f"w{w}" for w in words[1:-1]] + [f"b{a} {b}" for a, b in zip(words, words[1:])]
    return [zlib.crc32(g.encode("utf-8")) % dim for g in grams]


class Router:
    """The trained classifier (a linear layer over the text embedding and hashed n-grams) and its settings."""

    def __init__(self, settings: dict, weights: dict[str, np.ndarray], encoder=None, folder: Path | None = None):
        self.settings = settings
        self.labels: list[str] = list(settings["labels"])
        self.dim = int(settings["hash_dim"])
        self.chars = tuple(settings.get("char_ngrams", (2, 5)))
        self.min_confidence = float(settings.get("min_confidence", 0.0))
        self.w_embed = np.asarray(weights["embed.weight"], dtype=np.float32)     # (labels, D)
        self.w_ngram = np.asarray(weights["ngram.weight"], dtype=np.float32)     # (dim, labels)
        self.bias = np.asarray(weights["bias"], dtype=np.float32)                # (labels,)
        self._encoder = encoder
        self.folder = folder
        self.name = settings.get("name", folder.name if folder else "router")

    @property
    def encoder(self):
        """The dual encoder whose text tower the classifier reads (loaded on first use)."""
        if self._encoder is None:
            import terravl.models as m

            self._encoder = m.load(self.settings["encoder"])
        return self._encoder

    def probabilities(self, texts: list[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        """(N, labels) class probabilities."""
        emb = self.encoder.encode_texts(texts) if embeddings is None else embeddings
        logits = emb @ self.w_embed.T + self.bias
        for i, text in enumerate(texts):
            ids = ngram_ids(text, self.dim, self.chars)
            if ids:
                logits[i] += self.w_ngram[ids].sum(0) / np.sqrt(len(ids))
        logits = logits - logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    @classmethod
    def load(cls, folder: str | Path, encoder=None) -> "Router":
        from safetensors.numpy import load_file

        folder = Path(folder)
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text())
            weights = load_file(str(folder / WEIGHTS_FILE))
        except (OSError, ValueError) as exc:
            raise InputError(folder, f"not a router folder ({exc})") from None
        if settings.get("kind") != "router" or list(settings.get("labels", [])) != list(LABELS):
            raise InputError(folder / SETTINGS_FILE, f"not a router of this TerraVL version (classes "
                                                     f"{settings.get('labels')}, expected {list(LABELS)})")
        return cls(settings, weights, encoder, folder)

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"embed.weight": self.w_embed, "ngram.weight": self.w_ngram, "bias": self.bias},
                  str(folder / WEIGHTS_FILE))
        (folder / SETTINGS_FILE).write_text(json.dumps(self.settings, indent=2) + "\n")
        if extra is not None:
            (folder / "training.json").write_text(json.dumps(extra, indent=2, default=str) + "\n")
        return folder


_LOADED: dict[str, Router] = {}


def load_router(name_or_path: str | Path = DEFAULT_ROUTER, encoder=None) -> Router:
    """A router by registered name (shipped folder, then ``$TERRAVL_HOME/models/<file>``), by the name of a
    folder in ``$TERRAVL_HOME/models``, or by folder path. ``encoder`` overrides the encoder named in its settings
    (pass the one already loaded to share it; it must be the one the router was trained on)."""
    from terravl.models.registry import model_folder

    return Router.load(model_folder(name_or_path, routers(), SETTINGS_FILE, "router", "terravl train router"),
                       encoder)


def default_router() -> Router:
    """The shipped router, loaded once per process (a model cache, not conversation state)."""
    if DEFAULT_ROUTER not in _LOADED:
        _LOADED[DEFAULT_ROUTER] = load_router(DEFAULT_ROUTER)
    return _LOADED[DEFAULT_ROUTER]


# ---------------------------------------------------------------------------------------------------- routing
def check_instruction(text: Any) -> str:
    """The instruction with its whitespace normalised, or an :class:`InputError` naming ``instruction``."""
    if not isinstance(text, str):
        raise InputError("instruction", f"must be text, got {type(text).__name__}")
    cleaned = clean(text)
    if not cleaned:
        raise InputError("instruction", "is empty: say what to do with the image (e.g. \"caption this\")")
    if len(cleaned) > MAX_CHARS:
        raise InputError("instruction", f"is {len(cleaned)} characters long; the limit is {MAX_CHARS}")
    return cleaned


def as_context(context: RouterContext | dict | None) -> RouterContext:
    """A :class:`RouterContext` from itself, a dict or None; bad fields are an :class:`InputError` naming them."""
    if context is None:
        return RouterContext()
    if isinstance(context, RouterContext):
        return context
    if not isinstance(context, dict):
        raise InputError("context", f"must be a RouterContext or a dict, got {type(context).__name__}")
    try:
        return RouterContext(**context)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "context"
        raise InputError(f"context.{where}", first.get("msg", "invalid")) from None


def route(text: str, context: RouterContext | dict | None = None, router: Router | None = None) -> Route:
    """Map one instruction, with the conversation ``context``, to a task and its arguments. Pure: the same
    inputs always give the same route, and nothing is remembered between calls (the caller passes the previous
    turn in ``context``). Instructions that try to steer the router ("ignore previous instructions…") are read
    as plain text like any other."""
    cleaned = check_instruction(text)
    ctx = as_context(context)
    router = router or default_router()
    return decide(cleaned, ctx, router.probabilities([cleaned])[0], router)


def decide(text: str, ctx: RouterContext, probs: np.ndarray, router: Router) -> Route:
    """The route of ``text`` given the classifier's ``probs`` (split from :func:`route` so evaluation can
    embed a whole file in one batch)."""
    labels = router.labels
    order = [labels[i] for i in np.argsort(-probs, kind="stable")]
    if not re.search(r"[A-Za-z]", text):
        return Route(task="unknown", confidence=1.0, reply=REPLY)
    label = order[0]
    if label == FOLLOWUP and (ctx.previous_task is None or ctx.previous_task == "unknown"):
        label = next(x for x in order if x != FOLLOWUP)
    confidence = float(probs[labels.index(label)])
    if confidence < router.min_confidence:
        label = "unknown"
    if label == "unknown":
        return Route(task="unknown", confidence=round(confidence, 4), reply=REPLY)
    if label == FOLLOWUP:
        task, arguments = _follow(text, ctx)
    else:
        task, arguments = label, arguments_for(label, text, ctx)
    return Route(task=task, arguments=arguments, confidence=round(confidence, 4))


def _follow(text: str, ctx: RouterContext) -> tuple[str, dict]:
    """A follow-up takes the previous turn's task and arguments, with the image or object it names."""
    task = ctx.previous_task or "caption"
    arguments = {k: v for k, v in ctx.previous_arguments.items() if k != "image"}
    if task in IMAGE_TASKS:
        image = extract.image_ref(text, followup=True)
        if image:
            arguments["image"] = image
    new = extract.followup_object(text)
    if new and task in ("count", "locate"):
        arguments["object"] = new
    elif new and task == "search":
        arguments["query"] = new
    return task, arguments


def arguments_for(task: str, text: str, ctx: RouterContext | None = None) -> dict:
    """The arguments of ``task`` in ``text`` (see :mod:`terravl.router.extract` for the policy)."""
    ctx = ctx or RouterContext()
    text = clean(text)
    args: dict[str, Any] = {}
    if task in ("yesno", "question", "knowledge"):
        args["question"] = text
    elif task in ("count", "locate"):
        obj = extract.count_object(text) if task == "count" else extract.locate_object(text)
        if not obj or obj in extract.PRONOUNS:
            obj = str(ctx.previous_arguments.get("object", "")) if ctx.previous_task in ("count", "locate") else ""
        if obj:
            args["object"] = obj
    elif task == "classify":
        found = extract.labels(text)
        if found:
            args["labels"] = found
    elif task == "search":
        query = extract.search_query(text)
        if query:
            args["query"] = query
    elif task == "change":
        question = extract.change_question(text)
        if question:
            args["question"] = question
    if task in IMAGE_TASKS:
        image = extract.image_ref(text)
        if image:
            args["image"] = image
    return args


__all__ = ["DEFAULT_ROUTER", "REPLY", "Route", "Router", "RouterConfig", "RouterContext", "TASKS", "arguments_for",
           "as_context", "check_instruction", "decide", "default_router", "load_router", "ngram_ids", "route",
           "routers"]
