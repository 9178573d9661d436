"""TerraVL's multi-label object head ("terravl-objects"): which objects are in an image?

Why a head over the frozen ``terravl-default`` image embedding: the dual encoder already places a scene near the
captions that describe it, so which objects those captions name is mostly a linear read of the embedding. The head
is a linear layer (or a one-hidden-layer MLP) with one sigmoid output per label, trained in seconds over cached
embeddings (:mod:`terravl.train.object_head`). Its labels come from two sources:

* ``tag:NAME`` — UC Merced's 17 object multi-labels (an exhaustive annotation of each UCM image: "trees" whenever
  trees are there), learned from UCM images only;
* ``noun:NAME`` — an object noun of :data:`OBJECT_WORDS` that a caption of the image names (what people mention:
  salient objects), learned from UCM and RSICD captions.

Both read the same canonical object names (UCM's "cars" and a caption's "vehicles" are both ``car``), so a
description can merge them. :func:`object_mentions` is the one matcher of object words in text, used for the
labels, for the objects a caption already names, and for the object recall of ``terravl eval describe``.

A folder holds ``objects.json`` (the encoder's name and weights checksum, the labels with their thresholds, the
vocabulary), ``model.safetensors`` and ``training.json``. Named heads are registered like the grounders: one JSON
file per head in ``models/configs/objects/``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from terravl.errors import InputError

DEFAULT_OBJECTS = "terravl-objects"
SETTINGS_FILE = "objects.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "objects"

OBJECT_WORDS: dict[str, tuple[str, ...]] = {
    "building": ("building",), "house": ("house", "villa", "home", "residence"), "mobile home": ("mobile home",),
    "tree": ("tree",), "forest": ("forest", "woods", "woodland"), "plant": ("plant", "bush", "shrub", "vegetation"),
    "lawn": ("lawn", "grass", "turf"), "meadow": ("meadow", "grassland", "pasture"),
    "farmland": ("farmland", "cropland", "crop", "field"), "bare land": ("bareland", "bare land", "bare soil",
                                                                         "wasteland"),
    "chaparral": ("chaparral",), "desert": ("desert",), "sand": ("sand",), "beach": ("beach",),
    "sea": ("sea", "ocean"), "water": ("water",), "river": ("river",), "lake": ("lake",), "pond": ("pond",),
    "island": ("island",), "mountain": ("mountain", "hill"), "car": ("car", "vehicle"),
    "road": ("road", "street", "highway", "freeway"), "intersection": ("intersection", "crossroad", "junction"),
    "overpass": ("overpass",), "bridge": ("bridge",), "viaduct": ("viaduct",), "railway": ("railway", "railroad"),
    "train": ("train",), "runway": ("runway",), "airplane": ("airplane", "plane", "aircraft"),
    "parking lot": ("parking lot", "parkinglot", "car park"), "boat": ("boat", "ship"),
    "dock": ("dock", "wharf", "pier"), "storage tank": ("storage tank", "tank", "oil tank"),
    "swimming pool": ("swimming pool", "pool"), "tennis court": ("tennis court",),
    "basketball court": ("basketball court",), "baseball field": ("baseball field", "baseball diamond",
                                                                   "baseballfield"),
    "football field": ("football field", "soccer field"), "playground": ("playground",), "stadium": ("stadium",),
    "golf course": ("golf course",), "bunker": ("bunker",), "church": ("church",), "factory": ("factory",),
    "pavement": ("pavement",), "snow": ("snow",), "people": ("people", "pedestrian", "person"),
}
"""Canonical visible objects and the caption words (singular; plurals are added by :func:`plural`) that name them.
A longer phrase wins over its parts: "a tennis court" is a tennis court, not a court; "mobile homes" are not
houses; "parking lot" is no car."""

MASS_NOUNS = frozenset({"forest", "lawn", "meadow", "farmland", "bare land", "chaparral", "desert", "sand", "sea",
                        "water", "pavement", "snow"})
"""Objects described by extent, not number ("sand", not "three sands")."""

UCM_TAGS: dict[str, str] = {
    "airplane": "airplane", "bare-soil": "bare land", "buildings": "building", "cars": "car",
    "chaparral": "chaparral", "court": "tennis court", "dock": "dock", "field": "farmland", "grass": "lawn",
    "mobile-home": "mobile home", "pavement": "pavement", "sand": "sand", "sea": "sea", "ship": "boat",
    "tanks": "storage tank", "trees": "tree", "water": "water",
}
"""UC Merced's 17 multi-labels → the canonical object each means (its "court" is the tennis courts of its
``tenniscourt`` class; its "field" the fields of ``agricultural``)."""

_IRREGULAR = {"people": "people", "person": "people", "woods": "woods", "grass": "grass", "sand": "sands",
              "water": "waters", "vegetation": "vegetation"}


def plural(word: str) -> str:
    """English plural of the last word of a phrase: ``storage tank`` → ``storage tanks``, ``factory`` →
    ``factories``, ``bush`` → ``bushes``."""
    head, _, last = word.rpartition(" ")
    if last in _IRREGULAR:
        out = _IRREGULAR[last]
    elif last.endswith(("s", "sh", "ch", "x", "z")):
        out = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out


def _forms(vocabulary: dict[str, tuple[str, ...]]) -> list[tuple[tuple[str, ...], str, bool]]:
    """(token tuple, canonical, plural?) for every singular and plural form, longest first (longest match wins)."""
    forms: dict[tuple[str, ...], tuple[str, bool]] = {}
    for canonical, words in vocabulary.items():
        for word in words:
            many = plural(word)
            forms.setdefault(tuple(many.split()), (canonical, many != word or canonical == "people"))
            forms.setdefault(tuple(word.split()), (canonical, canonical == "people"))
    return sorted(((k, c, p) for k, (c, p) in forms.items()), key=lambda f: (-len(f[0]), f[0]))


_TOKEN = re.compile(r"[a-z]+|\d+")
_FORMS_CACHE: dict[int, tuple[dict, list]] = {}


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def find_objects(text: str, vocabulary: dict[str, tuple[str, ...]] | None = None
                 ) -> list[tuple[str, int, int, bool]]:
    """The object mentions of ``text``, in order: ``(canonical, first token, end token, plural?)`` over
    :func:`tokens`, longest phrase first ("tennis courts" is one plural mention of ``tennis court``)."""
    vocabulary = OBJECT_WORDS if vocabulary is None else vocabulary
    cached = _FORMS_CACHE.get(id(vocabulary))
    if cached is None or cached[0] is not vocabulary:  # the id of a dict that is gone may be reused
        cached = _FORMS_CACHE[id(vocabulary)] = (vocabulary, _forms(vocabulary))
    forms = cached[1]
    words = tokens(text)
    found, i = [], 0
    while i < len(words):
        for form, canonical, many in forms:
            if tuple(words[i:i + len(form)]) == form:
                found.append((canonical, i, i + len(form), many))
                i += len(form)
                break
        else:
            i += 1
    return found


def object_mentions(text: str, vocabulary: dict[str, tuple[str, ...]] | None = None) -> set[str]:
    """The canonical objects ``text`` names (plural or singular, synonyms merged)."""
    return {mention[0] for mention in find_objects(text, vocabulary)}


# ------------------------------------------------------------------------------------------------------ the head
@dataclass
class ObjectLabel:
    """One output: ``tag:NAME`` (a UCM multi-label) or ``noun:NAME`` (a caption noun), the canonical object it
    means, and the probability from which it counts as present (chosen on held-apart train images)."""

    name: str
    canonical: str
    threshold: float = 0.5

    @property
    def source(self) -> str:
        return self.name.split(":", 1)[0]


class ObjectHead:
    """The trained head: ``scores(embeddings)`` → (N, labels) probabilities. Plain numpy at inference (a linear
    layer or a one-hidden-layer MLP)."""

    def __init__(self, settings: dict, weights: dict[str, np.ndarray], encoder=None, folder: Path | None = None):
        self.settings = settings
        self.labels = [ObjectLabel(**entry) for entry in settings["labels"]]
        self.vocabulary = {k: tuple(v) for k, v in settings.get("vocabulary", OBJECT_WORDS).items()}
        self.mass_nouns = frozenset(settings.get("mass_nouns", MASS_NOUNS))
        self.plural_share: dict[str, float] = dict(settings.get("plural_share", {}))
        """Share of the training captions' mentions of each object that are plural ("cars" but "a river"): how a
        description names an object whose number it does not know."""
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.folder = folder
        self.name = settings.get("name", folder.name if folder else "objects")
        self._encoder = encoder
        self.warnings: list[str] = []

    @property
    def encoder_name(self) -> str:
        return str(self.settings.get("encoder", "terravl-default"))

    @property
    def encoder(self):
        """The dual encoder whose image embedding the head reads (loaded on first use)."""
        if self._encoder is None:
            import terravl.models as m

            self._encoder = m.load(self.encoder_name)
        return self._encoder

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) L2-normalised image embeddings → (N, labels) probabilities."""
        x = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        w = self.weights
        if "hidden.weight" in w:
            x = np.maximum(x @ w["hidden.weight"].T + w["hidden.bias"], 0.0)
        logits = x @ w["out.weight"].T + w["out.bias"]
        return (1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))).astype(np.float32)

    def _deciding(self) -> str:
        return "noun" if any(lab.source == "noun" for lab in self.labels) else "tag"

    def object_scores(self, probabilities: np.ndarray) -> dict[str, float]:
        """Canonical object → the score of the outputs that decide presence (see :meth:`present`)."""
        source = self._deciding()
        out: dict[str, float] = {}
        for lab, p in zip(self.labels, probabilities):
            if lab.source == source:
                out[lab.canonical] = max(out.get(lab.canonical, 0.0), float(p))
        return out

    def present(self, probabilities: np.ndarray) -> dict[str, float]:
        """Canonical objects judged present in one image → their score, best first. The caption-noun outputs
        decide (they learned what a description mentions: UCM's exhaustive "pavement" and "grass" labels are true
        of most urban scenes but seldom said); a head without them falls back on its multi-label outputs."""
        source = self._deciding()
        out: dict[str, float] = {}
        for lab, p in zip(self.labels, probabilities):
            if lab.source == source and p >= lab.threshold:
                out[lab.canonical] = max(out.get(lab.canonical, 0.0), float(p))
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    @classmethod
    def load(cls, folder: str | Path, encoder=None) -> "ObjectHead":
        from safetensors.numpy import load_file

        folder = Path(folder)
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text())
            weights = load_file(str(folder / WEIGHTS_FILE))
        except (OSError, ValueError) as exc:
            raise InputError(folder, f"not an object-head folder ({exc})") from None
        if not isinstance(settings, dict) or settings.get("kind") != "objects" or "labels" not in settings:
            raise InputError(folder / SETTINGS_FILE, "not an object head's settings (kind 'objects' with labels)")
        if "out.weight" not in weights or weights["out.weight"].shape[0] != len(settings["labels"]):
            raise InputError(folder / WEIGHTS_FILE, "weights do not fit the labels of objects.json")
        head = cls(settings, weights, encoder, folder)
        if encoder is not None:
            head.check_encoder(encoder)
        return head

    def check_encoder(self, encoder) -> None:
        """Warn (not fail) when ``encoder`` is not the one the head was trained on: its scores would be off."""
        from terravl.models.grounder import encoder_checksum

        expected = self.settings.get("encoder_sha256", "")
        dim = self.weights["hidden.weight" if "hidden.weight" in self.weights else "out.weight"].shape[1]
        if getattr(encoder, "embed_dim", dim) != dim:
            raise InputError("encoder", f"the object head reads {dim}-d embeddings of {self.encoder_name!r}; "
                                        f"{getattr(encoder, 'name', encoder)!r} gives {encoder.embed_dim}")
        checksum = encoder_checksum(encoder)
        if expected and checksum and checksum != expected:
            self.warnings.append(f"the object head was trained on other weights of {self.encoder_name!r} than "
                                 "those loaded; its scores may be worse than measured")

    def save(self, folder: str | Path, training: dict | None = None) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in self.weights.items()}, str(folder / WEIGHTS_FILE))
        settings = dict(self.settings)
        settings["labels"] = [{"name": lab.name, "canonical": lab.canonical, "threshold": round(lab.threshold, 4)}
                              for lab in self.labels]
        (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        if training is not None:
            (folder / "training.json").write_text(json.dumps(training, indent=2, default=str) + "\n")
        return folder


# -------------------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class ObjectHeadConfig:
    """One named object head (``models/configs/objects/<name>.json``), resolved like the other registries."""

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
    kind: str = field(default="objects", repr=False)
    family: str = field(default="linear-head", repr=False)


def object_heads() -> dict[str, ObjectHeadConfig]:
    from terravl.models.registry import read_configs

    return read_configs(ObjectHeadConfig, CONFIG_DIR)


def load_object_head(name_or_path: str | Path = DEFAULT_OBJECTS, encoder=None) -> ObjectHead:
    """An object head by registered name (shipped folder, then ``$TERRAVL_HOME/models/<file>``), by the name of a
    folder in ``$TERRAVL_HOME/models``, or by folder path. ``encoder`` is the dual encoder it reads (default: the
    one named in its settings; another one is refused by dimension and warned about by checksum)."""
    from terravl.models.registry import model_folder

    return ObjectHead.load(model_folder(name_or_path, object_heads(), SETTINGS_FILE, "object head",
                                        "terravl train objects", "object-head"), encoder)
