"""``terravl datasets build instructions``: RS-GPT4V / GAIA-style instruction data from a caption set and its labels.

Per image, one multi-turn conversation in the LLaVA layout (``{"id", "image", "conversations": [{"from": "human",
"value": "<image>\\n…"}, {"from": "gpt", "value": …}, …]}``), every answer taken from what the annotations say:

* a short caption (the caption closest to the image's other captions: the consensus one);
* a detailed description: the scene class, the distinct captions, and the labelled objects (and, where the labels
  are an exhaustive annotation as UCM's 17 are, some that are absent);
* yes/no and open questions from :func:`terravl.datasets.derived_vqa.derive_questions` (scene, presence, class)
  and from the labels ("what objects can be seen?");
* counting where the annotation gives a number: ``counts`` of a set built by ``terravl datasets build captions``
  (features per object), counts in a ``--labels`` file, or a number the captions state and none contradicts
  ("two tennis courts").

With ``grounding`` > 0, region grounding conversations come from composites (:mod:`terravl.datasets.composites`,
the grounding issue's generator): scenes of other classes pasted into a host scene, each with a referring
expression and its box; the answer is the box in 0–1 image coordinates, or "there is none" for a negative.
Composites of a split are drawn from that split's images only.

Each conversation records ``turn_types`` (one per answer: caption, detail, scene, presence, class, objects, count,
grounding) so a router can learn which question goes to which answerer.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from terravl.datasets.class_names import class_phrase
from terravl.datasets.derived_vqa import OBJECTS, derive_questions, tag_object
from terravl.datasets.records import CaptionRecord
from terravl.errors import InputError, OutputError
from terravl.results import Problem

SHORT_PROMPTS = ("Describe this image in one sentence.", "Give a short caption for this image.",
                 "Summarise what this remote sensing image shows in one sentence.")
DETAIL_PROMPTS = ("Describe this image in detail.", "Give a detailed description of this aerial scene.",
                  "What can you see in this image? Describe it thoroughly.")
OBJECT_PROMPTS = ("What objects can be seen in this image?", "List the objects and land covers visible here.")
GROUNDING_PROMPT = 'Find "{}" in this image: answer with its bounding box [x0, y0, x1, y1] in 0-1 image coordinates.'
NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
                "ten": 10, "eleven": 11, "twelve": 12}
_NUMBER_NAMES = {v: k for k, v in NUMBER_WORDS.items()}
_WORD_TO_OBJECT = {w: obj for obj, words in OBJECTS.items() for w in words}


@dataclass
class InstructionBuild:
    """What an instruction build wrote: counts per split and turn type, the files, a sample, the problems."""

    out_dir: str
    dataset: str
    images: int = 0
    conversations: int = 0
    turns: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    turn_types: dict[str, int] = field(default_factory=dict)
    grounding: dict = field(default_factory=dict)
    labels_source: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    sample: dict | None = None
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "dataset": self.dataset, "images": self.images,
                "conversations": self.conversations, "turns": self.turns, "splits": self.splits,
                "turn_types": self.turn_types, "grounding": self.grounding, "labels_source": self.labels_source,
                "files": self.files, "sample": self.sample, "problems": [p.to_dict() for p in self.problems]}


def clean(sentence: str) -> str:
    """"there is a piece of farmland ." → "There is a piece of farmland."."""
    text = " ".join(sentence.replace(" .", ".").replace(" ,", ",").split()).strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def consensus_caption(captions: tuple[str, ...]) -> str:
    """The caption sharing the most words with the others (ties: the first): the one most annotators agree on."""
    if len(captions) == 1:
        return captions[0]
    sets = [_words(c) for c in captions]

    def agreement(i: int) -> float:
        return sum(len(sets[i] & s) / max(1, len(sets[i] | s)) for j, s in enumerate(sets) if j != i)

    return captions[max(range(len(captions)), key=lambda i: (agreement(i), -i))]


def distinct_captions(captions: tuple[str, ...], limit: int = 3, overlap: float = 0.7) -> list[str]:
    """Up to ``limit`` captions, dropping repeats and near-repeats (word-set Jaccard ≥ ``overlap``)."""
    out: list[str] = []
    seen: list[set[str]] = []
    for c in captions:
        words = _words(c)
        if any(len(words & s) / max(1, len(words | s)) >= overlap for s in seen):
            continue
        out.append(c)
        seen.append(words)
        if len(out) == limit:
            break
    return out


def caption_counts(captions: tuple[str, ...]) -> dict[str, int]:
    """Objects whose number the captions state ("two tennis courts", "3 planes") with no caption stating another."""
    found: dict[str, set[int]] = defaultdict(set)
    for caption in captions:
        tokens = re.findall(r"[a-z]+|\d+", caption.lower())
        for i, tok in enumerate(tokens):
            n = NUMBER_WORDS.get(tok) or (int(tok) if tok.isdigit() and 1 < int(tok) < 100 else None)
            if n is None:
                continue
            for j in range(i + 1, min(i + 4, len(tokens))):
                two = " ".join(tokens[j:j + 2])
                obj = _WORD_TO_OBJECT.get(two) or _WORD_TO_OBJECT.get(tokens[j])
                if obj is not None:
                    found[obj].add(n)
                    break
    return {obj: next(iter(ns)) for obj, ns in found.items() if len(ns) == 1}


def _plural(obj: str) -> str:
    words = OBJECTS.get(obj)
    if words and len(words) > 1 and words[1].startswith(obj.split()[0][:3]):
        return words[1]
    return obj if obj.endswith("s") else obj + "s"


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _label_words(tag: str) -> str:
    """A multi-label as words for a list: ``bare-soil`` → "bare soil", ``cars`` stays plural."""
    return " ".join(tag.replace("-", " ").replace("_", " ").split()).lower()


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def read_labels(path: str | Path) -> dict[str, dict[str, int]]:
    """Labels per image from a file: JSON ``{filename: [labels]}`` or ``{filename: {label: count}}``, or CSV with
    an image-name column then one column per label (0/1, or a count: UCM's ``multilabels.csv`` layout). Keys are
    matched on file name and on stem."""
    path = Path(path)
    out: dict[str, dict[str, int]] = {}
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise InputError(path, "expected an object {filename: [labels] or {label: count}}")
            for name, value in data.items():
                if isinstance(value, list):
                    out[str(name)] = {str(v): 1 for v in value}
                elif isinstance(value, dict):
                    out[str(name)] = {str(k): int(v) for k, v in value.items() if int(v) > 0}
                else:
                    raise InputError(f"{path}#{name}", "expected a list of labels or an object of counts")
        else:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
            if len(rows) < 2 or len(rows[0]) < 2:
                raise InputError(path, "expected a header row (image, label…) and one row per image")
            header = [h.strip() for h in rows[0]]
            for line, row in enumerate(rows[1:], start=2):
                if not row or not row[0].strip():
                    continue
                try:
                    values = [int(float(v)) for v in row[1:len(header)]]
                except ValueError:
                    raise InputError(f"{path}:{line}", "label columns must be numbers (0/1 or counts)") from None
                out[row[0].strip()] = {h: v for h, v in zip(header[1:], values) if v > 0}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(path, f"cannot read the labels ({exc})") from None
    return out


def _raw_items(dataset: Path) -> dict[str, dict]:
    """The dataset JSON's items by file name (for ``counts`` written by the caption builder)."""
    file = dataset
    if dataset.is_dir():
        file = dataset / "captions.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    images = data.get("images") if isinstance(data, dict) else None
    return {i["filename"]: i for i in images or [] if isinstance(i, dict) and isinstance(i.get("filename"), str)}


def build_instructions(dataset: str | Path, out_dir: str | Path, labels: str | Path | None = None,
                       grounding: int = 0, seed: int = 0, limit: int | None = None,
                       log: Callable[[str], None] | None = None) -> InstructionBuild:
    """Write ``llava_<split>.json`` per split, ``composites/`` (grounding), ``card.json`` and ``README.md``."""
    from terravl.datasets.inspect import open_dataset

    log = log or (lambda _: None)
    dataset = Path(dataset)
    reader = open_dataset(dataset)
    out = Path(out_dir)
    result = InstructionBuild(str(out), str(dataset))
    records = [r for r in reader if isinstance(r, CaptionRecord)]
    if not records:
        raise InputError(dataset, f"no caption records ({reader.format}): the instruction builder reads caption "
                                  "sets (Karpathy JSON, or a set built by `terravl datasets build captions`)")
    result.problems += [Problem(p.path, p.error) for p in reader.problems]
    raw = _raw_items(dataset)
    built = any("objects" in item for item in raw.values())
    extra = read_labels(labels) if labels else {}
    result.labels_source = str(labels) if labels else ("dataset labels" if any(r.tags for r in records) else
                                                        "objects of the built set" if built else None)
    if limit:
        records = records[:limit]
    records = [_with_labels(r, extra) for r in records]
    # a built set's objects are what the vector data maps, not an exhaustive annotation: they name what is there
    # (objects, description) but never answer "no", so its questions come from captions and class alone
    exhaustive = not built and any(r.tags for r in records)
    shown = {r.filename: _with_objects(r, raw.get(r.filename, {})) for r in records}
    counts_of = {r.filename: _counts(r, raw.get(r.filename, {}), extra) for r in records}
    questions = defaultdict(list)
    for q in derive_questions(records, seed=seed):
        questions[q.image_id].append(q)
    vocabulary = sorted({tag_object(t) for r in records for t in r.tags})
    class_tags: dict[str, set[str]] = defaultdict(set)
    for r in records:
        class_tags[r.label] |= {tag_object(t) for t in r.tags}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(out, f"cannot write here ({exc.strerror or exc})") from None
    by_split: dict[str, list[dict]] = defaultdict(list)
    types: Counter = Counter()
    missing = 0
    for r in records:
        if r.path is None:
            missing += 1
            continue
        if not r.captions:
            result.problems.append(Problem(f"{dataset}#{r.filename}", "no caption: no conversation"))
            continue
        conv = _conversation(shown[r.filename], questions.get(r.image_id, []), counts_of[r.filename], vocabulary,
                             class_tags.get(r.label, set()), exhaustive, seed, out)
        by_split[r.split].append(conv)
        types.update(conv["turn_types"])
    if missing:
        result.problems.append(Problem(str(dataset), f"{missing} image file(s) not found: no conversation for them"))
    result.images = sum(len(v) for v in by_split.values())
    if grounding > 0:
        _grounding(records, by_split, types, grounding, seed, out, result, log)
    for split, convs in sorted(by_split.items()):
        _write_json(out / f"llava_{split}.json", convs)
        result.files[split] = str(out / f"llava_{split}.json")
    result.splits = {k: len(v) for k, v in sorted(by_split.items())}
    result.conversations = sum(result.splits.values())
    result.turns = sum(types.values())
    result.turn_types = dict(sorted(types.items()))
    first = next((c for convs in by_split.values() for c in convs if "grounding" not in c["turn_types"]), None)
    result.sample = first
    _write_card(out, result)
    return result


def _with_labels(r: CaptionRecord, extra: dict[str, dict[str, int]]) -> CaptionRecord:
    found = extra.get(r.filename) or extra.get(Path(r.filename).stem)
    if not found:
        return r
    tags = tuple(dict.fromkeys(list(r.tags) + list(found)))
    return CaptionRecord(r.image_id, r.filename, r.split, r.captions, r.path, r.label, tags)


def _with_objects(r: CaptionRecord, item: dict) -> CaptionRecord:
    """``r`` with the ``objects`` a built set lists for it as its tags (for display only, see above)."""
    objects = item.get("objects")
    if r.tags or not isinstance(objects, list):
        return r
    return CaptionRecord(r.image_id, r.filename, r.split, r.captions, r.path, r.label,
                         tuple(str(o) for o in objects))


def _counts(r: CaptionRecord, item: dict, extra: dict[str, dict[str, int]]) -> dict[str, int]:
    """Object → number, from the builder's ``counts``, a labels file's counts (> 1), or the captions."""
    counts = caption_counts(r.captions)
    found = extra.get(r.filename) or extra.get(Path(r.filename).stem) or {}
    counts.update({tag_object(k): v for k, v in found.items() if v > 1})
    built = item.get("counts")
    if isinstance(built, dict):
        counts.update({str(k): int(v) for k, v in built.items() if isinstance(v, int) and v > 0})
    return counts


def _conversation(r: CaptionRecord, questions, counts: dict[str, int], vocabulary: list[str], in_class: set[str],
                  exhaustive: bool, seed: int, out: Path) -> dict:
    rng = random.Random(int(hashlib.sha1(f"{seed}:{r.filename}".encode()).hexdigest()[:12], 16))
    turns: list[tuple[str, str, str]] = []
    turns.append(("caption", rng.choice(SHORT_PROMPTS), clean(consensus_caption(r.captions))))
    turns.append(("detail", rng.choice(DETAIL_PROMPTS), _detail(r, counts, vocabulary, in_class, exhaustive, rng)))
    for q in questions:
        turns.append((q.question_type, q.question[0].upper() + q.question[1:], q.answer[0].upper() + q.answer[1:]))
    own = sorted(dict.fromkeys(_label_words(t) for t in r.tags))
    if own:
        turns.append(("objects", rng.choice(OBJECT_PROMPTS), _listed(own).capitalize() + "."))
    for obj, n in sorted(counts.items()):
        turns.append(("count", f"How many {_plural(obj)} are there in this image?", str(n)))
    conversations = []
    for i, (_, question, answer) in enumerate(turns):
        conversations.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + question})
        conversations.append({"from": "gpt", "value": answer})
    return {"id": f"{Path(r.filename).stem}-{r.image_id}", "image": os.path.relpath(r.path, out),
            "split": r.split, "class": class_phrase(r.label) if r.label else None,
            "conversations": conversations, "turn_types": [t for t, _, _ in turns]}


def _detail(r: CaptionRecord, counts: dict[str, int], vocabulary: list[str], in_class: set[str], exhaustive: bool,
            rng: random.Random) -> str:
    parts = []
    if r.label:
        phrase = class_phrase(r.label)
        parts.append(f"This aerial image shows {_article(phrase)} scene.")
    parts += [clean(c) for c in distinct_captions(r.captions)]
    own = sorted(dict.fromkeys(tag_object(t) for t in r.tags))
    if own:
        parts.append(f"Visible in the scene: {_listed(sorted(dict.fromkeys(_label_words(t) for t in r.tags)))}.")
        if exhaustive:
            absent = [o for o in vocabulary if o not in own]
            likely = [o for o in absent if o in in_class] or absent
            rng.shuffle(likely)
            if likely:
                parts.append(f"There is no {_listed(sorted(likely[:3])).replace(' and ', ' or ')} in it.")
    numbered = [f"{_NUMBER_NAMES.get(n, str(n))} {_plural(o)}" for o, n in sorted(counts.items()) if n > 1]
    if numbered:
        parts.append(f"It contains {_listed(numbered)}.")
    return " ".join(parts)


def _grounding(records: list[CaptionRecord], by_split: dict[str, list[dict]], types: Counter, n: int, seed: int,
               out: Path, result: InstructionBuild, log: Callable[[str], None]) -> None:
    """``n`` composite grounding conversations per split, from that split's labelled images."""
    try:
        from terravl.datasets import composites as module
        from terravl.datasets.composites import Scene, composites
    except ImportError as exc:
        result.grounding = {"status": f"left out: the composites module is not available ({exc})"}
        return
    from PIL import Image

    noun = getattr(module, "noun", lambda label: label)  # "sparse residential" → "sparse residential area"
    folder = out / "composites"
    folder.mkdir(exist_ok=True)
    made: dict[str, int] = {}
    for split in sorted(by_split):
        scenes = [Scene(Path(r.path), class_phrase(r.label), tuple(r.captions), "data") for r in records
                  if r.split == split and r.path is not None and r.label and r.captions]
        if len({s.label for s in scenes}) < 3:
            result.problems.append(Problem(split, "fewer than 3 scene classes in this split: no grounding "
                                                  "composites"))
            continue
        log(f"grounding composites for {split}")
        split_seed = int(hashlib.sha1(f"{seed}:{split}".encode()).hexdigest()[:8], 16)
        try:
            made_here = composites(scenes, n, split_seed, negative_rate=0.1)
        except TypeError:  # an older composites() without negatives
            made_here = composites(scenes, n, split_seed)
        for i, comp in enumerate(made_here):
            name = f"{split}_{i:05d}.jpg"
            Image.fromarray(comp.image).save(folder / name, quality=92)
            size = comp.image.shape[1], comp.image.shape[0]
            question = GROUNDING_PROMPT.format(clean(comp.expression).rstrip(".").lower())
            box = comp.box
            absent = noun(comp.target)
            there = "There are no" if absent.endswith("s") and not absent.endswith("ss") else "There is no"
            answer = (f"{there} {absent} in this image." if comp.negative or box is None
                      else _box_text(box, size))
            regions = "; ".join(f"{noun(reg['class'])} {_box_text(reg['box'], size)}" for reg in comp.regions
                                if reg.get("box"))
            by_split[split].append({
                "id": f"composite-{split}-{i}", "image": os.path.relpath(folder / name, out), "split": split,
                "class": class_phrase(comp.host),
                "conversations": [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer},
                                  {"from": "human", "value": "Which regions were placed in this image, and where?"},
                                  {"from": "gpt", "value": f"On {_article(class_phrase(comp.host))} scene: {regions}."}],
                "turn_types": ["grounding", "regions"], "expression_kind": comp.kind, "negative": comp.negative})
            types.update(["grounding", "regions"])
        made[split] = n
    result.grounding = {"status": "from terravl.datasets.composites", "per_split": made}


def _box_text(box, size: tuple[int, int]) -> str:
    x0, y0, x1, y1 = box
    w, h = size
    return f"[{x0 / w:.2f}, {y0 / h:.2f}, {x1 / w:.2f}, {y1 / h:.2f}]"


def _write_json(path: Path, data: object) -> None:
    from terravl.datasets.builder.card import write_json

    write_json(path, data)


def _write_card(out: Path, result: InstructionBuild) -> None:
    from terravl.datasets.builder.card import card_data, write_json

    data = card_data("terravl-instructions", result.to_dict())
    write_json(out / "card.json", data)
    lines = [f"# Instruction set built by TerraVL ({data['created']})", "",
             f"From `{result.dataset}`: {result.images} images, {result.conversations} conversations, "
             f"{result.turns} question–answer turns, in the LLaVA layout (`llava_<split>.json`; `image` is relative "
             "to this folder). Answers come from the dataset's captions, scene classes and labels "
             f"({result.labels_source or 'no labels'}), never from a model.", "", "| split | conversations |",
             "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result.splits.items()]
    lines += ["", "| turn type | turns |", "|---|---|"] + [f"| {k} | {v} |" for k, v in result.turn_types.items()]
    lines += ["", f"Grounding: {result.grounding.get('status', 'not asked for (--grounding 0)')}."]
    if result.problems:
        lines += ["", "## Problems", ""] + [f"- `{p.path}`: {p.error}" for p in result.problems[:50]]
    lines += ["", "## Licence", "", "The conversations are derived from the source dataset's annotations and carry "
              "its licence and citation requirements.", ""]
    try:
        (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    except OSError as exc:
        raise OutputError(out / "README.md", f"cannot write ({exc.strerror or exc})") from None
