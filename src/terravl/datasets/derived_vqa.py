"""Visual questions derived honestly from what a caption dataset does say: its scene class and its five captions.

No public RS VQA set could be obtained here (RSVQA's images are not in ``../shared/data``), so TerraVL trains and
measures question answering on three question types whose answers follow from the annotations alone:

- ``scene``: "what kind of area is this?" → the scene class ("dense residential").
- ``presence``: "is there a bridge in this image?" → "yes" when a caption of the image names the object; "no" for
  an object that no caption of any image of this scene class names (a real negative taken from other classes).
  Where a record carries object multi-labels (``CaptionRecord.tags``; UCM's 17: "cars", "bare-soil", "ship" …)
  they are the image's own exhaustive annotation, so its presence questions come from them instead: "yes" for
  one of its labels, "no" for a label of the dataset's vocabulary it lacks — half the time one that other images
  of its class do have ("is there a tree?" on the farmland without trees), so the answer needs the image, not
  only its class. Caption-based negatives would be wrong there (a caption never saying "trees" does not mean
  there are none).
- ``class``: "is this a port?" → "yes" for the image's own class, "no" for another class.

The questions are a deterministic function of the records (seeded per image), so train and test questions never
mix: derive them from each split's records. A user with RSVQA trains on it instead with the same command
(``terravl train caption --data RSVQA_FOLDER``).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from typing import Iterable

from terravl.datasets.class_names import class_phrase
from terravl.datasets.records import CaptionRecord, VQARecord

OBJECTS: dict[str, tuple[str, ...]] = {
    "building": ("building", "buildings"), "tree": ("tree", "trees"), "road": ("road", "roads"),
    "river": ("river", "rivers"), "car": ("car", "cars"), "boat": ("boat", "boats", "ship", "ships"),
    "bridge": ("bridge", "bridges"), "pond": ("pond", "ponds"), "lake": ("lake", "lakes"),
    "playground": ("playground", "playgrounds"), "stadium": ("stadium", "stadiums"),
    "airplane": ("plane", "planes", "airplane", "airplanes"), "runway": ("runway", "runways"),
    "parking lot": ("parking lot", "parking lots"), "church": ("church", "churches"),
    "storage tank": ("storage tank", "storage tanks", "tank", "tanks"), "railway": ("railway", "railways"),
    "house": ("house", "houses"), "swimming pool": ("swimming pool", "swimming pools", "pool", "pools"),
    "farmland": ("farmland", "farmlands"), "mountain": ("mountain", "mountains"), "beach": ("beach", "beaches"),
    "sea": ("sea", "ocean"), "desert": ("desert", "deserts"), "forest": ("forest", "forests"),
    "meadow": ("meadow", "meadows", "grassland", "lawn", "lawns"), "viaduct": ("viaduct", "viaducts"),
    "wharf": ("wharf", "wharfs", "port"), "factory": ("factory", "factories"),
    "tennis court": ("tennis court", "tennis courts"), "basketball court": ("basketball court", "basketball courts"),
    "baseball field": ("baseball field", "baseball fields"), "football field": ("football field", "football fields"),
    "square": ("square", "squares"), "snow": ("snow", "snows"),
}
"""Objects asked about, with the caption words that count as naming them."""

TAG_OBJECTS: dict[str, str] = {
    "cars": "car", "car": "car", "trees": "tree", "tree": "tree", "buildings": "building", "building": "building",
    "airplane": "airplane", "airplanes": "airplane", "ship": "boat", "ships": "boat", "boat": "boat",
    "boats": "boat", "tanks": "storage tank", "tank": "storage tank", "storage-tanks": "storage tank",
    "mobile-home": "mobile home", "mobile-homes": "mobile home", "court": "court", "courts": "court",
    "dock": "dock", "docks": "dock", "field": "field", "fields": "field",
}
"""Multi-label names → the object a question names, with the words of :data:`OBJECTS` where both mean the same
(UCM "cars" and RSICD captions' "car" give one question, "is there a car in this image?")."""

MASS_NOUNS = frozenset({"bare soil", "grass", "pavement", "sand", "water", "chaparral", "soil", "vegetation",
                        "concrete", "asphalt"})
"""Objects asked about without an article: "is there grass in this image?"."""

SCENE_QUESTIONS = ("what kind of area is this?", "what type of scene is shown?", "what is this area?")
QUESTION_TYPES = ("scene", "presence", "class")


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _mentions(captions: Iterable[str]) -> set[str]:
    text = " " + " ".join(re.sub(r"[^a-z ]", " ", c.lower()) for c in captions) + " "
    text = " ".join(text.split())
    padded = f" {text} "
    return {obj for obj, words in OBJECTS.items() if any(f" {w} " in padded for w in words)}


def tag_object(tag: str) -> str:
    """The object a multi-label names, as a question words it: ``cars`` → ``car``, ``bare-soil`` → ``bare soil``;
    an unknown label keeps its words (lower case, ``-``/``_`` as spaces)."""
    key = tag.strip().lower()
    return TAG_OBJECTS.get(key) or " ".join(key.replace("-", " ").replace("_", " ").split())


def presence_question(obj: str) -> str:
    """The presence question about ``obj``: "is there a car in this image?", "is there grass in this image?" (a
    mass noun), "are there solar panels in this image?" (an unknown label that stays plural)."""
    if obj in MASS_NOUNS:
        return f"is there {obj} in this image?"
    if obj.endswith("s") and not obj.endswith("ss") and obj not in OBJECTS and obj not in TAG_OBJECTS.values():
        return f"are there {obj} in this image?"
    return f"is there {_article(obj)} in this image?"


def class_object_table(records: Iterable[CaptionRecord]) -> dict[str, set[str]]:
    """Per scene class, every object that any caption of any of its images names."""
    named: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.label:
            named[r.label] |= _mentions(r.captions)
    return named


def derive_questions(records: list[CaptionRecord], seed: int = 0, per_image: int = 4) -> list[VQARecord]:
    """Questions for every labelled caption record, in record order (about ``per_image`` each).

    Negatives for ``presence`` come from the class table of the given records; give all of a dataset's records
    (every split) so that "never named for this class" is judged on every caption. Records with multi-labels
    (``tags``) are asked about those instead (see the module docstring), against the label vocabulary of the given
    records: give one dataset's records per call."""
    records = [r for r in records if isinstance(r, CaptionRecord) and r.label]
    named = class_object_table(records)
    classes = sorted(named)
    vocabulary = sorted({tag_object(t) for r in records for t in r.tags})
    class_tags: dict[str, set[str]] = defaultdict(set)
    for r in records:
        class_tags[r.label] |= {tag_object(t) for t in r.tags}
    out: list[VQARecord] = []
    for r in records:
        rng = random.Random(int(hashlib.sha1(f"{seed}:{r.filename}".encode()).hexdigest()[:12], 16))
        phrase = class_phrase(r.label)
        items: list[tuple[str, str, str]] = [("scene", rng.choice(SCENE_QUESTIONS), phrase)]
        if r.tags:
            items += _tag_presence(r, vocabulary, class_tags[r.label], rng)
        else:
            present = sorted(_mentions(r.captions))
            absent = sorted(set(OBJECTS) - named[r.label])
            if present:
                obj = rng.choice(present)
                items.append(("presence", f"is there {_article(obj)} in this image?", "yes"))
            if absent:
                obj = rng.choice(absent)
                items.append(("presence", f"is there {_article(obj)} in this image?", "no"))
        if len(classes) > 1:
            own = rng.random() < 0.5
            other = phrase if own else class_phrase(rng.choice([c for c in classes if c != r.label]))
            items.append(("class", f"is this {_article(other)} area?", "yes" if own else "no"))
        for qtype, question, answer in items[:per_image]:
            out.append(VQARecord(len(out), r.image_id, question, answer, qtype, r.split, r.path))
    return out


def _tag_presence(record: CaptionRecord, vocabulary: list[str], in_class: set[str],
                  rng: random.Random) -> list[tuple[str, str, str]]:
    """One "yes" (a label of the image) and one "no" (a vocabulary label it lacks; half the time, where there is
    one, a label that other images of its class have — a negative the class alone does not give away)."""
    own = sorted({tag_object(t) for t in record.tags})
    items = [("presence", presence_question(rng.choice(own)), "yes")]
    absent = [o for o in vocabulary if o not in own]
    hard = [o for o in absent if o in in_class]
    pool = hard if hard and rng.random() < 0.5 else absent
    if pool:
        items.append(("presence", presence_question(rng.choice(pool)), "no"))
    return items
