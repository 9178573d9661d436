"""A detailed description of an image, composed by several small experts (the RS-MoE idea with small experts):

* **caption** — the captioner's one sentence opens the description;
* **scene** — zero-shot scene type over the AID and UC Merced classes (readable class phrases, the remote-sensing
  prompt ensemble), with its probability;
* **objects** — the multi-label object head (``terravl-objects``, :mod:`terravl.models.object_head`) over the same
  image embedding: which objects are there, with scores;
* **where** — for each object mentioned, where it stands out in the image: the training-free grounding baseline's
  per-location probability (:meth:`terravl.tasks.ground_methods.BaselineMethod.coarse`: the tower's last feature
  map through its own linear head, against the scene classes), read as "in the top left", "across the image"…,
  and the share of the image it covers;
* **counts and density** — a number word the caption puts before the object ("two tennis courts", "many cars"),
  else the captioner's answer to "how many …?" when that answer is a number; extent from the covered share (said
  only for an object standing out over more than a quarter of the image).

The composition is a template (deterministic, no sampling): the caption, then the scene, then the objects with
their count and position, then the most extensive object's extent — 2 to 4 sentences. The parts come back beside
the text, so a caller can show what the description rests on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from terravl.results import Answers, LabelScore, Located, Result
from terravl.tasks.inputs import answer_each, encoded

SCENE_CLASSES = ("aid", "ucm")
"""The built-in class lists whose readable phrases the scene expert chooses among."""

NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
                "ten": 10, "eleven": 11, "twelve": 12}
QUANTIFIERS = {"many": "many", "several": "several", "some": "some", "few": "a few", "lots": "many",
               "numerous": "many", "a": "one", "an": "one", "single": "one", "dozens": "many", "plenty": "many"}
"""Words before an object noun that say how many (``lots of cars`` → many; ``a river`` → one)."""

POSITIONS = (("in the top left", "at the top", "in the top right"),
             ("on the left", "in the centre", "on the right"),
             ("in the bottom left", "at the bottom", "in the bottom right"))
ACROSS = "across the image"
SPREAD = 0.5
"""Share of the image above which an object is "across the image" rather than in one place."""


class ScenePart(Result):
    """The scene expert's answer: the best class phrase, its probability, and the runners-up."""

    label: str
    probability: float
    top: list[LabelScore]


class ObjectPart(Result):
    """One object the description rests on. ``score``: the object head's probability (None for an object only the
    caption names); ``count`` and ``count_source`` (``caption`` or ``question``) when a number is known;
    ``position`` in words and ``centre`` (x, y in [0, 1], from the top left) where it stands out; ``coverage``: the
    share of the image where it does."""

    name: str
    score: float | None = None
    in_caption: bool = False
    mentioned: bool = False
    count: str | None = None
    count_source: str | None = None
    position: str | None = None
    centre: list[float] | None = None
    coverage: float | None = None


class Description(Located):
    """A detailed description (2–4 sentences) and the parts it was composed from: the caption, the scene, the
    objects (with scores, counts and positions) and the UC Merced multi-labels the head finds."""

    description: str
    caption: str
    scene: ScenePart
    objects: list[ObjectPart]
    labels: list[LabelScore] = []
    warnings: list[str] = []


class Experts:
    """The loaded experts, reusable across calls (the chat front end keeps one): the dual encoder, the captioner,
    the object head, the scene classes' text embeddings and the grounding baseline. Missing ones are loaded:
    the encoder the object head was trained on, ``terravl-captioner``, ``terravl-objects``."""

    def __init__(self, encoder=None, captioner=None, objects=None):
        import terravl.models as m
        from terravl.models.object_head import ObjectHead, load_object_head

        if objects is None or not isinstance(objects, ObjectHead):
            objects = load_object_head(objects or "terravl-objects", encoder=encoder)
        self.encoder = encoder if encoder is not None else objects.encoder
        if encoder is not None:
            objects.check_encoder(encoder)
        if captioner is None or isinstance(captioner, str):
            captioner = m.load_captioner(captioner or m.DEFAULT_CAPTIONER)
        self.captioner, self.objects = captioner, objects
        self.warnings: list[str] = list(objects.warnings)
        self._where = None
        self._where_failed = False
        self._scene = None
        self._states: dict[str, np.ndarray] = {}

    @property
    def scene_bank(self) -> tuple[list[str], np.ndarray]:
        """The readable phrases of the AID and UCM classes and their prompt-ensemble embeddings."""
        if self._scene is None:
            from terravl.datasets.class_names import BUILTIN_CLASSES, class_phrase
            from terravl.eval.zeroshot import class_embeddings

            names = sorted({class_phrase(c) for key in SCENE_CLASSES for c in BUILTIN_CLASSES[key]})
            self._scene = (names, class_embeddings(self.encoder, names))
        return self._scene

    @property
    def where(self):
        """The grounding baseline over the encoder's tower, or None (with a warning) for an encoder without a CNN
        tower whose maps keep location."""
        if self._where is None and not self._where_failed:
            from terravl.errors import InputError
            from terravl.tasks.ground_methods import BaselineMethod

            try:
                self._where = BaselineMethod(self.encoder)
            except InputError as exc:
                self._where_failed = True
                self.warnings.append(f"no positions: {exc.message}")
        return self._where

    def coarse(self, rgb: np.ndarray, phrase: str) -> np.ndarray | None:
        """(h, w) probability that each location of the tower's last map shows ``phrase`` rather than a scene
        class (the grounding baseline's own calibration)."""
        method = self.where
        if method is None:
            return None
        if phrase not in self._states:
            self._states[phrase] = method.prepare(phrase)
        return method.coarse(rgb, self._states[phrase])


def describe(images: list, encoder=None, captioner=None, objects=None, max_objects: int = 4,
             beams: int | None = None, ask_counts: bool = True, experts: Experts | None = None,
             batch_size: int = 32, tile_size: int = 256, whole_below: int | None = None,
             progress: bool | None = None, bands="auto") -> Answers[Description]:
    """One :class:`Description` per image (or tile of a large raster, with its window and footprint), or a
    :class:`~terravl.results.Problem`, in input order.

    ``encoder`` is the dual encoder the object head reads (default: the one it was trained on, terravl-default-v2),
    ``captioner`` a captioner or its name (default terravl-captioner), ``objects`` an object head or its name
    (default terravl-objects); or pass ``experts`` loaded once. ``max_objects`` caps the objects the text names
    (the parts list all found). ``ask_counts`` asks the captioner "how many …?" for objects whose number the
    caption does not say (only a numeric answer is used)."""
    from terravl.validation import check_beams, check_int

    max_objects = check_int(max_objects, "max_objects", 0, 20)
    beams = check_beams(beams)
    experts = experts or Experts(encoder, captioner, objects)

    def answer(units, vectors):
        return _answer(experts, units, vectors, max_objects, beams, ask_counts)

    chunks = encoded(experts.encoder, images, tile_size, whole_below, batch_size, bands=bands)
    return Answers(tuple(answer_each(chunks, answer, progress)))


# ------------------------------------------------------------------------------------------------ the experts
def _answer(experts: Experts, units: list, vectors: np.ndarray, max_objects: int, beams: int | None,
            ask_counts: bool) -> list:
    from terravl.eval.zeroshot import softmax
    from terravl.models.bridge import CAPTION_PROMPT
    from terravl.results import Problem

    head = experts.objects
    names, bank = experts.scene_bank
    scene_probs = softmax(experts.encoder.logit_scale * vectors @ bank.T)
    object_probs = head.scores(vectors)
    cap_vectors, failed = _captioner_features(experts, units, vectors)
    keep = [i for i in range(len(units)) if i not in failed]
    captions = dict(zip(keep, experts.captioner.generate(cap_vectors[keep], CAPTION_PROMPT, beams=beams)
                        if keep else []))
    plans = {i: _plan(head, captions[i], object_probs[i], max_objects) for i in keep}
    asked = _ask_counts(experts, cap_vectors, plans, head) if ask_counts else {}
    experts.where  # built (or found missing, with its warning) before the warnings are copied
    out: list[Any] = []
    for i, unit in enumerate(units):
        if i in failed:
            out.append(Problem(unit.where["path"], failed[i], unit.index))
            continue
        plan = plans[i]
        for name, count in asked.get(i, {}).items():
            plan[name].count, plan[name].count_source = count, "question"
        warnings = list(experts.warnings)
        _locate(experts, unit, plan, head, warnings)
        order = np.argsort(-scene_probs[i], kind="stable")[:3]
        scene = ScenePart(label=names[order[0]], probability=round(float(scene_probs[i][order[0]]), 4),
                          top=[LabelScore(label=names[j], probability=round(float(scene_probs[i][j]), 4))
                               for j in order])
        parts = [ObjectPart(**vars(p)) for p in plan.values()]
        labels = [LabelScore(label=lab.name.split(":", 1)[1], probability=round(float(p), 4))
                  for lab, p in zip(head.labels, object_probs[i]) if lab.source == "tag" and p >= lab.threshold]
        text = compose(captions[i], scene, parts, head.mass_nouns, head.plural_share)
        out.append(Description(**unit.where, description=text, caption=captions[i], scene=scene, objects=parts,
                               labels=sorted(labels, key=lambda s: -s.probability), warnings=warnings))
    return out


def _captioner_features(experts: Experts, units: list, vectors: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """The captioner's features of ``units``: the vectors already computed when it reads the same encoder, else its
    own encoder's (an input it cannot read is a problem of its own)."""
    cap_encoder = experts.captioner.encoder
    if cap_encoder is experts.encoder:
        return vectors, {}
    result = cap_encoder.encode_batch([u.item for u in units], progress=False)
    out = np.zeros((len(units), result.vectors.shape[1] if len(result.kept) else cap_encoder.embed_dim), np.float32)
    for row, k in enumerate(result.kept):
        out[k] = result.vectors[row]
    return out, {p.index: p.error for p in result.problems}


class _Plan:
    """What the description will say about one object (mutable while the experts fill it in)."""

    def __init__(self, name: str, score: float | None, in_caption: bool, mentioned: bool):
        self.name, self.score, self.in_caption, self.mentioned = name, score, in_caption, mentioned
        self.count: str | None = None
        self.count_source: str | None = None
        self.position: str | None = None
        self.centre: list[float] | None = None
        self.coverage: float | None = None


def _plan(head, caption: str, probs: np.ndarray, max_objects: int) -> dict[str, _Plan]:
    """The objects of one image: those the head finds (best first; the first ``max_objects`` are mentioned) and
    those the caption names, with the count the caption gives."""
    from terravl.models.object_head import find_objects, tokens

    present = head.present(probs)
    best = head.object_scores(probs)
    words = tokens(caption)
    counted: dict[str, str] = {}
    in_caption: list[str] = []
    for canonical, start, _, many in find_objects(caption, head.vocabulary):
        if canonical not in in_caption:
            in_caption.append(canonical)
        count = caption_count(words, start, many)
        if count and canonical not in counted:
            counted[canonical] = count
    plans: dict[str, _Plan] = {}
    for rank, (name, score) in enumerate(present.items()):
        plans[name] = _Plan(name, round(score, 4), name in in_caption, rank < max_objects)
    for name in in_caption:
        if name not in plans:
            plans[name] = _Plan(name, round(best[name], 4) if name in best else None, True, False)
    for name, count in counted.items():
        plans[name].count, plans[name].count_source = count, "caption"
    return plans


def caption_count(words: list[str], start: int, plural: bool) -> str | None:
    """The number a caption gives an object mentioned at ``words[start]``: a number word or a quantifier among the
    three words before it ("two white storage tanks", "lots of cars"); "a"/"an" only before a singular."""
    for j in range(start - 1, max(start - 4, -1), -1):
        word = words[j]
        if word in NUMBER_WORDS or word.isdigit():
            return word
        if word == "lot" and plural:  # "a lot of cars"
            return "many"
        if word in QUANTIFIERS:
            quantity = QUANTIFIERS[word]
            return None if (quantity == "one") == plural else quantity
        if word in ("and", "with", "near", "by", "is", "are", "in", "on", "beside", "around", "surrounded"):
            return None
    return None


def _ask_counts(experts: Experts, features: np.ndarray, plans: dict[int, dict[str, _Plan]], head
                ) -> dict[int, dict[str, str]]:
    """The captioner's answers to "how many <objects> are there?" for mentioned countable objects whose number the
    caption does not give; only an answer that is a number counts."""
    from terravl.models.bridge import question_prompt
    from terravl.models.object_head import plural

    rows, prompts, keys = [], [], []
    for i, plan in plans.items():
        for name, p in plan.items():
            if p.mentioned and p.count is None and name not in head.mass_nouns:
                rows.append(i)
                prompts.append(question_prompt(f"how many {plural(name)} are there?"))
                keys.append((i, name))
    if not rows:
        return {}
    answers = experts.captioner.generate(features[rows], prompts, beams=1, max_tokens=4)
    out: dict[int, dict[str, str]] = {}
    for (i, name), text in zip(keys, answers):
        word = (text.strip().split() or [""])[0].lower()
        if word in NUMBER_WORDS or (word.isdigit() and 0 < int(word) < 10_000):
            out.setdefault(i, {})[name] = word
    return out


def _locate(experts: Experts, unit, plan: dict[str, _Plan], head, warnings: list[str]) -> None:
    """Fill in where each mentioned object stands out, and the share of the image it covers."""
    from terravl.models.images import to_pil
    from terravl.models.object_head import plural

    mentioned = [p for p in plan.values() if p.mentioned]
    if not mentioned or experts.where is None:
        return
    try:
        rgb = np.asarray(to_pil(unit.item).convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - the encoder read it; a second read failing is reported, not fatal
        warnings.append(f"no positions: could not read the image again ({exc})")
        return
    for p in mentioned:
        phrase = p.name if p.name in head.mass_nouns else plural(p.name)
        prob = experts.coarse(rgb, phrase)
        if prob is None:
            return
        p.position, p.centre, p.coverage = position(prob)


def position(prob: np.ndarray) -> tuple[str | None, list[float] | None, float | None]:
    """Where a (h, w) map of probabilities stands out: the locations at least half as likely as the best one; their
    weighted centre (x, y from the top left, in [0, 1]) as one of nine places, or "across the image" when they
    cover more than :data:`SPREAD` of it."""
    prob = np.nan_to_num(np.asarray(prob, dtype=np.float64))
    top = prob.max() if prob.size else 0.0
    if top <= 0:
        return None, None, None
    region = prob >= 0.5 * top
    h, w = prob.shape
    weights = np.where(region, prob, 0.0)
    ys, xs = np.mgrid[0:h, 0:w]
    cx = float((weights * (xs + 0.5)).sum() / weights.sum() / w)
    cy = float((weights * (ys + 0.5)).sum() / weights.sum() / h)
    coverage = float(region.mean())
    if coverage > SPREAD:
        words = ACROSS
    else:
        words = POSITIONS[min(int(cy * 3), 2)][min(int(cx * 3), 2)]
    return words, [round(cx, 3), round(cy, 3)], round(coverage, 3)


# ------------------------------------------------------------------------------------------------ composition
def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _sentence(text: str) -> str:
    text = " ".join(text.split()).strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def object_phrase(part: ObjectPart, mass_nouns, plural_share: dict[str, float]) -> str:
    """"two tennis courts in the top left", "water on the right", "a river across the image"."""
    from terravl.models.object_head import plural

    name = part.name
    if name in mass_nouns:
        words = name
    elif part.count in ("one", "1"):
        words = _article(name)
    elif part.count:
        words = f"{part.count} {plural(name)}"
    elif plural_share.get(name, 1.0) >= 0.5:
        words = plural(name)
    else:
        words = _article(name)
    return f"{words} {part.position}" if part.position else words


def compose(caption: str, scene: ScenePart, objects: list[ObjectPart], mass_nouns=frozenset(),
            plural_share: dict[str, float] | None = None) -> str:
    """The description: the caption; the scene type; the mentioned objects with count and position; the extent of
    the one that covers most of the image. Deterministic: the same parts always give the same text."""
    plural_share = plural_share or {}
    sentences = [_sentence(caption), f"It is most likely {_article(scene.label)} scene."]
    mentioned = [p for p in objects if p.mentioned]
    if mentioned:
        sentences.append(f"It shows {_join([object_phrase(p, mass_nouns, plural_share) for p in mentioned])}.")
        extent = [p for p in mentioned if p.coverage is not None and p.coverage > 0.25]
        if extent:
            widest = max(extent, key=lambda p: (p.coverage, p.score or 0.0))
            subject = _extent_subject(widest, mass_nouns, plural_share)
            sentences.append(_sentence(f"{subject} {_extent(widest.coverage)}"))
    return " ".join(s for s in sentences if s)


def _extent_subject(part: ObjectPart, mass_nouns, plural_share: dict[str, float]) -> str:
    from terravl.models.object_head import plural

    if part.name in mass_nouns:
        return f"{part.name} covers"
    if part.count in ("one", "1") or (part.count is None and plural_share.get(part.name, 1.0) < 0.5):
        return f"the {part.name} covers"
    return f"{plural(part.name)} cover"


def _extent(coverage: float) -> str:
    if coverage > 0.75:
        return "most of the image"
    if coverage > SPREAD:
        return "more than half of the image"
    if coverage > 0.25:
        return "about a third of the image"
    return "a small part of the image"
