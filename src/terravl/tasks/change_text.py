"""Words about a measured change: the composed change caption, and answers to questions about the change.

Both are built only from the numbers of a :class:`~terravl.results.ChangeResult` (its regions, areas, positions and
classes), so that everything they state is true of the result: the tests parse the sentences back and compare. A
trained change captioner (``terravl train change-caption``) can replace the caption; questions these rules do not
cover go to the VQA model on each date.
"""

from __future__ import annotations

import re

from terravl.results import ChangeResult


def percent(fraction: float) -> str:
    """A share of the scene as printed in captions and answers: one decimal from 1 %, two below."""
    value = 100 * fraction
    return f"{value:.1f}" if value >= 1 or value == 0 else f"{value:.2f}"


def area_text(area_m2: float | None, pixels: int) -> str:
    """An area in the unit a reader expects: m² below 1 km², km² with two decimals above; pixels without a
    georeference."""
    if area_m2 is None:
        return f"{pixels:,} pixels"
    if area_m2 >= 1_000_000:
        return f"{area_m2 / 1_000_000:.2f} km²"
    return f"{area_m2:,.0f} m²"


def _regions(result: ChangeResult) -> list[dict]:
    return [f["properties"] for f in result.regions.get("features", [])]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def compose_caption(result: ChangeResult) -> str:
    """One to three sentences: what the largest change is and where, how much of the scene changed, and where the
    next change is. Every number, position and class is the result's own."""
    regions = _regions(result)
    share = percent(result.changed_fraction)
    if not result.changed or not regions:
        scattered = f" (scattered differences cover {share} % of the scene)" if result.changed_pixels else ""
        return f"No changed region was found between the two dates{scattered}."
    top = regions[0]
    before, after = top.get("class_before"), top.get("class_after")
    if before and after and before != after:
        lead = f"{after.capitalize()} appeared in the {top['position']} part, replacing {before}"
    elif after:
        lead = f"The largest change is in the {top['position']} part ({after} on both dates)"
    else:
        lead = f"The largest change is in the {top['position']} part"
    area = area_text(result.changed_area_m2, result.changed_pixels)
    text = f"{lead}; about {share} % of the scene changed ({area} in all, {_plural(result.region_count, 'region')})."
    if len(regions) > 1 and regions[1]["position"] != top["position"]:
        text += f" Another change is in the {regions[1]['position']} part."
    return text


_HOW_MANY = re.compile(r"\bhow many\b|\bnumber of\b|\bcount\b", re.I)
_HOW_MUCH = re.compile(r"\bhow (much|large|big)\b|\barea\b.*\bchang|\bchang.*\barea\b|\bpercent|\bfraction\b|"
                       r"\bproportion\b|\bshare\b|%", re.I)
_WHERE = re.compile(r"\bwhere\b|\bwhich part\b|\blocat", re.I)
_BEFORE = re.compile(r"\bbefore\b|\bused to\b|\bwas there\b|\bpreviously\b|\boriginally\b|\breplac", re.I)
_WHAT = re.compile(r"\bwhat\b.*\b(chang|new|happen|differ)|\bdescribe\b|\bsummar", re.I)
_WHETHER = re.compile(r"^\s*(has|have|had|did|does|do|is|are|was|were)\b", re.I)
_GENERIC = re.compile(r"\b(anything|something|any change|any changes|a change|changes|changed|change|differen\w*)\b",
                      re.I)
"""A yes/no question is answered from the measurement only when it asks about change in general ("has anything
changed?"): whether *a bridge* was built is not something the change mask knows, so that goes to the VQA model."""


def answer_change_question(question: str, result: ChangeResult) -> str | None:
    """The answer to ``question`` from the measured change, or None when the question is not about the change's
    existence, amount, count, place or former state (the caller then asks the VQA model)."""
    regions = _regions(result)
    n, share = result.region_count, percent(result.changed_fraction)
    area = area_text(result.changed_area_m2, result.changed_pixels)
    if _WHETHER.search(question) and _GENERIC.search(question) and not _WHERE.search(question):
        return ("Yes. " if result.changed else "No. ") + result.caption
    if _HOW_MANY.search(question):
        return f"{_plural(n, 'changed region')}; {share} % of the scene changed in all ({area})."
    if _HOW_MUCH.search(question):
        return f"About {share} % of the scene changed ({area})."
    if _WHERE.search(question):
        if not regions:
            return "Nowhere: no changed region was found."
        places = list(dict.fromkeys(r["position"] for r in regions[:3]))
        return "In the " + " and the ".join(places) + (" part." if len(places) == 1 else " parts.")
    if _BEFORE.search(question):
        before = f"Before: {result.before_caption.rstrip('.')}. " if result.before_caption else ""
        top = regions[0] if regions else None
        if top is None:
            return before + "No changed region was found, so nothing was replaced."
        if top.get("class_before"):
            return (f"{before}The largest changed region ({top['position']} part) was {top['class_before']} and "
                    f"is now {top['class_after']}.")
        return (f"{before}{_plural(n, 'changed region')} found; their scene classes were not measured (run with "
                "the description on).")
    if _WHAT.search(question):
        return result.caption
    return None
