"""Scene class names: the standard datasets' class lists, and readable prompt words from the names datasets use.

Datasets spell classes as folder names — ``denseresidential``, ``storagetanks``, ``BaseballField``,
``mobile_home_park`` — and a text tower reads "denseresidential" as one unknown word, so zero-shot prompts built
from raw names score worse than readable ones (UC Merced: 39.5 % with its folder names against 43.8 % with the
readable list, terravl-default v1). :func:`class_phrase` turns any of these spellings into the words a caption
would use, splitting squashed names with the vocabulary of the standard class lists.
"""

from __future__ import annotations

import re
from functools import lru_cache

BUILTIN_CLASSES: dict[str, list[str]] = {
    "aid": ["Airport", "BareLand", "BaseballField", "Beach", "Bridge", "Center", "Church", "Commercial",
            "DenseResidential", "Desert", "Farmland", "Forest", "Industrial", "Meadow", "MediumResidential",
            "Mountain", "Park", "Parking", "Playground", "Pond", "Port", "RailwayStation", "Resort", "River",
            "School", "SparseResidential", "Square", "Stadium", "StorageTanks", "Viaduct"],
    "ucm": ["agricultural", "airplane", "baseball diamond", "beach", "buildings", "chaparral", "dense residential",
            "forest", "freeway", "golf course", "harbor", "intersection", "medium residential", "mobile home park",
            "overpass", "parking lot", "river", "runway", "sparse residential", "storage tanks", "tennis court"],
    "resisc45": ["airplane", "airport", "baseball diamond", "basketball court", "beach", "bridge", "chaparral",
                 "church", "circular farmland", "cloud", "commercial area", "dense residential", "desert", "forest",
                 "freeway", "golf course", "ground track field", "harbor", "industrial area", "intersection",
                 "island", "lake", "meadow", "medium residential", "mobile home park", "mountain", "overpass",
                 "palace", "parking lot", "railway", "railway station", "rectangular farmland", "river",
                 "roundabout", "runway", "sea ice", "ship", "snowberg", "sparse residential", "stadium",
                 "storage tank", "tennis court", "terrace", "thermal power station", "wetland"],
    "eurosat": ["annual crop", "forest", "herbaceous vegetation", "highway", "industrial buildings", "pasture",
                "permanent crop", "residential buildings", "river", "sea or lake"],
    "whu-rs19": ["airport", "beach", "bridge", "commercial area", "desert", "farmland", "football field", "forest",
                 "industrial area", "meadow", "mountain", "park", "parking lot", "pond", "port", "railway station",
                 "residential area", "river", "viaduct"],
    "patternnet": ["airplane", "baseball field", "basketball court", "beach", "bridge", "cemetery", "chaparral",
                   "christmas tree farm", "closed road", "coastal mansion", "crosswalk", "dense residential",
                   "ferry terminal", "football field", "forest", "freeway", "golf course", "harbor", "intersection",
                   "mobile home park", "nursing home", "oil gas field", "oil well", "overpass", "parking lot",
                   "parking space", "railway", "river", "runway", "runway marking", "shipping yard", "solar panel",
                   "sparse residential", "storage tank", "swimming pool", "tennis court", "transformer station",
                   "wastewater treatment plant"],
}
"""Class lists of the standard scene datasets (``--classes NAME``)."""

_EXTRA_WORDS = ("area", "areas", "bare", "building", "car", "cars", "court", "courts", "crop", "diamond", "farm",
                "field", "fields", "green", "ground", "home", "homes", "house", "houses", "industrial", "land",
                "lot", "lots", "park", "plant", "pool", "power", "residential", "road", "sea", "ship", "ships",
                "soil", "station", "tank", "tanks", "track", "tree", "trees", "water", "yard")


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    words = set(_EXTRA_WORDS)
    for names in BUILTIN_CLASSES.values():
        for name in names:
            words.update(_spaced(name).split())
    return frozenset(w for w in words if len(w) > 1)


def _spaced(name: str) -> str:
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").replace("-", " ")
    return " ".join(spaced.lower().split())


def _segment(word: str) -> str:
    """``storagetanks`` → ``storage tanks``: the split into known words with the fewest pieces, else the word."""
    vocab = _vocabulary()
    if word in vocab or not word.isalpha():
        return word
    best: list[list[str] | None] = [[]] + [None] * len(word)
    for end in range(1, len(word) + 1):
        for begin in range(max(0, end - 20), end):
            piece, before = word[begin:end], best[begin]
            if before is not None and piece in vocab and (best[end] is None or len(before) + 1 < len(best[end])):
                best[end] = before + [piece]
    return " ".join(best[-1]) if best[-1] else word


def class_phrase(name: str) -> str:
    """Readable prompt words for a class name: ``DenseResidential``, ``dense_residential`` and
    ``denseresidential`` all give ``dense residential``; unknown single words are kept as they are."""
    return " ".join(_segment(w) for w in _spaced(name).split())
