"""Visual questions derived honestly from what a caption dataset does say: its scene class and its five captions.

No public RS VQA set could be obtained here (RSVQA's images are not in ``../shared/data``), so TerraVL trains and
measures question answering on three question types whose answers follow from the annotations alone:

- ``scene``: "what kind of area is this?" → the scene class ("dense residential").
- ``presence``: "is there a bridge in this image?" → "yes" when a caption of the image names the object; "no" for
  an object that no caption of any image of this scene class names (a real negative taken from other classes).
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

from terravl.datasets.records import CaptionRecord, VQARecord, class_phrase

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

SCENE_QUESTIONS = ("what kind of area is this?", "what type of scene is shown?", "what is this area?")
QUESTION_TYPES = ("scene", "presence", "class")


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _mentions(captions: Iterable[str]) -> set[str]:
    text = " " + " ".join(re.sub(r"[^a-z ]", " ", c.lower()) for c in captions) + " "
    text = " ".join(text.split())
    padded = f" {text} "
    return {obj for obj, words in OBJECTS.items() if any(f" {w} " in padded for w in words)}


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
    (every split) so that "never named for this class" is judged on every caption."""
    records = [r for r in records if isinstance(r, CaptionRecord) and r.label]
    named = class_object_table(records)
    classes = sorted(named)
    out: list[VQARecord] = []
    for r in records:
        rng = random.Random(int(hashlib.sha1(f"{seed}:{r.filename}".encode()).hexdigest()[:12], 16))
        phrase = class_phrase(r.label)
        items: list[tuple[str, str, str]] = [("scene", rng.choice(SCENE_QUESTIONS), phrase)]
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
