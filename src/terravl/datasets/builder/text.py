"""Caption sentences from what covers a tile: "an aerial image of a golf course with a parking lot and a pond".

A tile's whitelisted objects come ordered by weight (the share of the tile an area covers, a line's length over the
tile's side). The sentences name at most four of them, each worded by its count (a pond, two ponds, many
buildings) or as a mass noun (farmland), and say how they lie where the numbers allow it ("farmland covering most
of the image", "a road running through a forest").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
MOST = 0.6
"""Share of the tile above which an area "covers most of the image"."""
THROUGH = 0.3
"""Share of the tile above which a line "runs through" an area (below: "passing next to" it)."""


@dataclass(frozen=True)
class TileObject:
    """One kind of object in a tile: its words, geometry kind, weight (coverage) and how many features."""

    noun: str
    plural: str
    mass: bool
    kind: str
    coverage: float
    count: int


def article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def phrase(obj: TileObject) -> str:
    """"farmland", "a pond", "two ponds", "many buildings", "roads"."""
    if obj.mass:
        return obj.noun
    if obj.count <= 1:
        return article(obj.noun)
    if obj.kind == "line":
        return obj.plural  # one road is often several ways: no number for lines
    if obj.count < len(NUMBER_WORDS):
        return f"{NUMBER_WORDS[obj.count]} {obj.plural}"
    return f"many {obj.plural}"


def join_words(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def compose(objects: list[TileObject], seed: int = 0) -> list[str]:
    """One to three distinct captions for a tile whose ``objects`` are ordered by weight (heaviest first)."""
    if not objects:
        return []
    rng = random.Random(seed)
    top = objects[:4]
    words = [phrase(o) for o in top]
    first = f"an aerial image of {words[0]}"
    if len(words) >= 2:
        first += f" with {words[1]}"
    if len(words) >= 3:
        first += f" and {words[2]}"
    out = [first]
    main = top[0]
    if main.kind == "area" and main.coverage >= MOST:
        second = f"{words[0]} covering most of the image"
        rest = [w for w in words[1:3]]
        if rest:
            second += f", with {join_words(rest)}"
        out.append(second)
    elif len(words) >= 2:
        view = rng.choice(("a satellite image showing", "an overhead view of", "a remote sensing image of"))
        out.append(f"{view} {join_words(words)}")
    else:
        out.append(f"{words[0]} seen from above")
    line = next((o for o in top if o.kind == "line"), None)
    area = next((o for o in top if o.kind == "area"), None)
    if line is not None and area is not None:
        place = f"the {area.noun}" if area.mass else phrase(area)
        if area.coverage >= THROUGH:
            out.append(f"{phrase(line)} {'runs' if line.count <= 1 else 'run'} through {place}")
        else:
            out.append(f"{phrase(line)} passing next to {place}")
    elif len(top) >= 2:
        out.append(f"{words[1]} next to {words[0]}")
    seen: set[str] = set()
    return [s for s in out if not (s in seen or seen.add(s))][:3]
