"""The whitelist of tags visible from above (``tags.yaml`` beside this module) and the words a caption uses.

SkyScript's idea: an image–text pair is only as good as its text, and most OpenStreetMap tags name what no image
shows (names, operators, speed limits). ``tags.yaml`` keeps the tags whose object has a visible footprint and says
why; this module matches a feature's tags against it (first rule that matches wins, so one feature gives one word).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from terravl.errors import InputError

WHITELIST = Path(__file__).with_name("tags.yaml")
KINDS = ("area", "line", "point")


@dataclass(frozen=True)
class TagRule:
    """One whitelist rule: the conditions (``(key, value)``, value ``*`` for any) and the caption words."""

    match: str
    conditions: tuple[tuple[str, str], ...]
    noun: str
    plural: str
    mass: bool
    kinds: frozenset[str]

    def matches(self, tags: dict[str, str], kind: str) -> bool:
        if kind not in self.kinds:
            return False
        for key, value in self.conditions:
            have = tags.get(key)
            if have is None or have == "no" or (value != "*" and have != value):
                return False
        return True


@dataclass(frozen=True)
class Whitelist:
    """The ordered rules, and the keys they look at (a pre-filter for huge extracts)."""

    rules: tuple[TagRule, ...]
    source: str

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(sorted({k for r in self.rules for k, _ in r.conditions}))

    def rule_for(self, tags: dict[str, str], kind: str) -> TagRule | None:
        """The first rule matching ``tags`` for a geometry of ``kind`` (area, line, point), or None."""
        if not tags:
            return None
        for rule in self.rules:
            if rule.matches(tags, kind):
                return rule
        return None

    def any_match(self, tags: dict[str, str]) -> bool:
        """Whether some rule matches ``tags`` for some geometry kind (tells "wrong geometry" from "no tag")."""
        return any(self.rule_for(tags, k) for k in KINDS)


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def parse_rules(data: object, source: str) -> Whitelist:
    """Rules from the parsed YAML; a malformed rule is an :class:`InputError` naming the file and rule."""
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list) or not rules:
        raise InputError(source, "expected a mapping with a non-empty 'rules' list")
    out = []
    for i, item in enumerate(rules):
        where = f"{source}#rules[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("match"), str) or not item.get("noun"):
            raise InputError(where, "each rule needs 'match' (key=value) and 'noun'")
        conditions = []
        for part in item["match"].split(";"):
            key, sep, value = part.strip().partition("=")
            if not sep or not key or not value:
                raise InputError(where, f"condition {part!r} is not key=value")
            conditions.append((key.strip(), value.strip()))
        kinds = frozenset(item.get("kinds") or ("area",))
        if not kinds <= set(KINDS):
            raise InputError(where, f"kinds must be among {', '.join(KINDS)}")
        noun = str(item["noun"]).strip()
        out.append(TagRule(item["match"], tuple(conditions), noun, str(item.get("plural") or _plural(noun)),
                           bool(item.get("mass")), kinds))
    return Whitelist(tuple(out), source)


def load_whitelist(path: str | Path | None = None) -> Whitelist:
    """The whitelist shipped with TerraVL (parsed once), or the YAML file at ``path`` (same layout; read anew)."""
    return _read(Path(path)) if path else _shipped()


@lru_cache(maxsize=1)
def _shipped() -> Whitelist:
    return _read(WHITELIST)


def _read(file: Path) -> Whitelist:
    import yaml

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(file, f"cannot read the tag whitelist ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise InputError(file, "the tag whitelist is not UTF-8 text (a YAML file is expected)") from None
    except yaml.YAMLError as exc:
        raise InputError(file, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_rules(data, str(file))
