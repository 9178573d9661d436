"""Argument extraction: rules over the canonical tokens of an instruction (:func:`terravl.router.text.canonical`).

Why rules and not a tagger: the arguments are spans of the user's own words (an object phrase, a search query, a
label list), their boundaries follow a few syntactic cues ("how many X are", "find the X in the second image",
"A, B or C"), and rules keep every decision readable and testable. The policy each rule implements:

* **object** (count, locate): the noun phrase the user named, with the words attached to it ("cars in the parking
  lot" after "count the …"), without leading determiners, without a verb phrase that follows ("how many cars *are
  parked …*" → "cars") and without references to the image itself ("in this picture", "in the second image").
* **query** (search): what the user wants found, without the request around it ("find images of …", "in the
  archive"); none when the search is by the image itself ("find similar images").
* **labels** (classify): the candidate classes the user listed ("A, B or C", "options: A / B"), or none.
* **image** (every task but change and search): 1 or 2 when the instruction names one image of a pair ("the second
  image", "the earlier date", "the after image").
"""

from __future__ import annotations

import re

from terravl.router.text import DETERMINERS, TOKEN, canonical, canonical_word, is_known, phrase

PRONOUNS = {"it", "them", "they", "those", "these", "this", "that", "one", "ones", "this one", "that one", "there"}

_IMG_NOUN = r"(?:image|images|picture|pictures|photo|photos|scene|tile|shot|view|frame|one|date|acquisition|raster|pic)"
_SECOND = r"(?:second|2nd|later|latter|last|latest|after|newer|newest|recent|more recent|right|other|next|new|current)"
_FIRST = r"(?:first|1st|earlier|former|before|older|oldest|left|original|initial|previous|old)"
_PREP = r"(?:(?:in|on|of|for|from|at|with|to|within|inside) )?"
IMAGE_2 = re.compile(rf"\b{_PREP}(?:the |this |that )?(?:{_SECOND} {_IMG_NOUN}|(?:image|picture|photo) (?:2|two|b)\b)")
IMAGE_1 = re.compile(rf"\b{_PREP}(?:the |this |that )?(?:{_FIRST} {_IMG_NOUN}|(?:image|picture|photo) (?:1|one|a)\b)")
BARE_WHEN = re.compile(r"^(?:and |what about |how about |now |same for |same |ok |okay )*(?:the )?(before|after|"
                       r"earlier|later|then|now)(?: one)? ?[?.!]*$")
IMAGE_SELF = re.compile(rf"\b(?:in|on|of|from|within|inside) (?:this|the|that|your|my|each|the current|this "
                        rf"whole|the whole)(?: (?:satellite|aerial|drone|sentinel|image|current|whole|big|large))? "
                        rf"(?:{_IMG_NOUN}|satellite image|aerial image|aerial photo|satellite photo|aerial view|"
                        rf"satellite picture|aerial picture|map|area shown|orthophoto|drone shot)\b"
                        rf"|\b(?:in|on) it\b(?= ?[?.!]*$)|\bin here\b|\bhere\b(?= ?[?.!,]*$)")

_STOP = {"are", "is", "were", "was", "be", "been", "do", "does", "did", "can", "could", "would", "will", "should",
         "there", "you", "i", "we", "have", "has", "had", "visible", "present", "shown", "exist", "exists", "appear",
         "appears", "seen", "please", "for", "here", "altogether", "total", "currently", "right", "now", "?", ".",
         "!", ",", ";", "—", "–", "then", "to", "that", "which", "when", "so", "if", "thanks", "thank", "ok",
         "okay", "all", "thx", "asap", "if", "real", "instead"}
"""Words that end an object phrase ("how many cars *are* …", "count the ships *for* me", "the X, *please*").
"all" ends it only after its first word (see :func:`_cut`)."""

_SOFT_STOP = {"all", "that", "which", "to", "right", "now", "then", "so", "here"}
"""Stops that only end a phrase once it has a word ("all the planes" keeps going; "planes *at* the gate" stops)."""

_PP_KEEP = {"in", "on", "near", "along", "by", "next", "beside", "around", "across", "behind", "over", "under",
            "with", "without", "of", "inside", "outside", "between", "north", "south", "east", "west", "close",
            "from", "at"}


def restore(found: str, text: str) -> str:
    """``found`` with the user's own spelling of each word the typo reader changed: corrections are for reading
    the request ("hw many"), never for the argument ("lanes" must not become "lines")."""
    changed = {}
    for tok in TOKEN.findall(text.lower().replace("’", "'")):
        fixed = canonical_word(tok)
        if fixed != tok and " " not in fixed:
            changed.setdefault(fixed, tok)
    if not changed or not found:
        return found
    return " ".join(changed.get(w, w) for w in found.split())


def image_ref(text: str, followup: bool = False) -> int | None:
    """2 or 1 when ``text`` names one image of a pair ("the second image", "the earlier date"); with ``followup``
    also a bare "and after?" / "and before?"."""
    canon = canonical(text)
    if IMAGE_2.search(canon) and not IMAGE_1.search(canon):
        return 2
    if IMAGE_1.search(canon) and not IMAGE_2.search(canon):
        return 1
    if followup:
        m = BARE_WHEN.search(canon)
        if m:
            return 1 if m.group(1) in ("before", "earlier", "then") else 2
    return None


_INJECTED = re.compile(r"^(?:.*\b(?:instructions|rules|prompt|above|override|mode|admin|system)\b.*?"
                       r"(?:\.|;|:|\]|>|\band\b|\bthen\b) )")
_LEAD = re.compile(r"^(?:(?:so|ok|okay|well|hey|hi|hello|yo|hmm|now|also|and|then|q|question|next|quick|please|"
                   r"kindly|one more thing|i wonder|tell me|go ahead and|can you|could you|would you|can u|"
                   r"would you mind to|i would like you to|i want you to|i need you to|i would like to know|"
                   r"(?:could|would|can) you please)(?: [,:!])? )+")


_TRAIL = re.compile(r"(?:\s*[,.!?;]*\s*\b(?:please|pls|thx|thanks|thank you|real quick|if you can|asap|for me|now|"
                   r"ok|okay|right now)\b)+\s*[.!?]*\s*$")


def request(text: str) -> str:
    """The canonical text of the request itself: without an injected or chatty lead-in ("ignore previous
    instructions and …", "SYSTEM: … .", "hey, could you please …"), which is read as plain text and dropped."""
    canon = _TRAIL.sub("", canonical(text)) or canonical(text)
    while True:
        stripped = _INJECTED.sub("", canon, count=1)
        stripped = re.sub(r"^[^.;!?]*[.;!] (?=\S)", "", stripped) if re.search(r"[.;!] \S", stripped) else stripped
        stripped = _LEAD.sub("", stripped, count=1)
        if stripped == canon or not stripped.strip():
            return canon
        canon = stripped


def _strip_image_refs(canon: str) -> str:
    canon = IMAGE_2.sub(" ", canon)
    canon = IMAGE_1.sub(" ", canon)
    canon = IMAGE_SELF.sub(" ", canon)
    return " ".join(canon.split())


def _cut(words: list[str]) -> list[str]:
    """``words`` up to the first stop word (a soft stop only after the phrase has a word)."""
    out: list[str] = []
    for w in words:
        lead = not [x for x in out if x not in DETERMINERS]
        if w == "to" and out and out[-1] in ("close", "next", "adjacent", "near"):
            out.append(w)
            continue
        if w in _STOP and not (lead and w in _SOFT_STOP):
            break
        if out and len(w) <= 3 and w.isalpha() and not is_known(w):
            break  # a misspelt "are"/"does" ("how many ships ae there")
        if w in ("me", "us") and lead:
            continue
        out.append(w)
    while out and out[-1] in _PP_KEEP | {"and", "or", "the", "a", "an", "of"}:
        out.pop()
    return out


def _span(rest: str, participle: bool = False) -> str:
    words = _cut(rest.split())
    if participle and len(words) > 1 and re.fullmatch(r"[a-z]+ed", words[-1]) and words[-2] not in _PP_KEEP:
        words = words[:-1]  # "where are the boats docked" → boats
    return phrase(" ".join(words))


COUNT_PATTERNS = [
    re.compile(r"\b(?:the )?(?:total )?(?:number|amount|quantity|count|tally) of (?P<o>.+)"),
    re.compile(r"\bhow many (?:of )?(?P<o>.+)"),
    re.compile(r"\b(?:count|tally|enumerate)(?: up)?(?: :)? (?:how many |the number of )?(?P<o>.+)"),
]
COUNT_PREFIX = re.compile(r"^(?:what is )?(?:the )?(?P<o>.+?) (?:[,:—–-] )?(?:how many|count|number|total|tally)\b")

LOCATE_PATTERNS = [
    re.compile(r"\b(?:which|what) (?:part|area|region|side|corner|section|half|quadrant)s? (?:of )?(?:the )?"
               r"(?:contains?|has|have|shows?|holds?|includes?) (?P<o>.+)"),
    re.compile(r"\b(?:in )?(?:which|what) (?:part|area|region|side|corner|section)s? (?:is|are) (?P<o>.+)"),
    re.compile(r"\bwhere (?:exactly |else |precisely )?(?:can|could|would|do|does|should|might|will) "
               r"(?:i|we|you|one) (?:find|see|spot|locate|look for|get to) (?P<o>.+)"),
    re.compile(r"\bwhere (?:exactly |precisely |else )?(?:is|are|was|were|lies|lie|sits|sit) (?P<o>.+)", ),
    re.compile(r"\b(?:show|tell|indicate|identify|mark|find out|let me know)(?: me| us)? where (?P<o>.+)"),
    re.compile(r"\b(?:draw|put|place|add)(?: me)? (?:a |the )?(?:bounding )?(?:box|boxes|circle|circles|outline|"
               r"outlines|polygon|polygons|rectangle|rectangles|marker|markers|pin|pins) (?:around|on|over|at|for) "
               r"(?P<o>.+)"),
    re.compile(r"\b(?:location|position|positions|locations|whereabouts|coordinates|place|spot) of (?P<o>.+)"),
    re.compile(r"\bwhere (?:would|will|might|could|should|do) (?P<o>.+?) (?:be|go|sit|lie)\b"),
    re.compile(r"\b(?:point|zoom)(?: me)? (?:to|at|out|in on|into) (?P<o>.+)"),
    re.compile(r"\b(?:locate|find|highlight|mark|outline|box|circle|pinpoint|identify|detect|segment|ground|spot|"
               r"indicate|show|trace|delineate|map|flag|isolate|select|pick out|tag|label|look for|search for|"
               r"where)(?: me| us)?(?: :)? (?P<o>.+)"),
]
LOCATE_PREFIX = re.compile(r"^(?P<o>.+?) (?:[,:—–-] )+(?:where|locate|find|show)\b")


def count_object(text: str) -> str:
    """The object phrase of a counting instruction ("" when it names none, e.g. "how many are there?")."""
    return restore(_object(text, COUNT_PATTERNS, COUNT_PREFIX, participle=False), text)


def locate_object(text: str) -> str:
    """The object phrase of a locate instruction ("" when it names none)."""
    return restore(_object(text, LOCATE_PATTERNS, LOCATE_PREFIX, participle=True), text)


def _object(text: str, patterns: list[re.Pattern], prefix: re.Pattern, participle: bool) -> str:
    """The first non-empty span a pattern finds; a pronoun ("it", "them") only when no pattern and no
    fronted phrase ("the dam, where is it?") names the object, so a follow-up can inherit it."""
    canon = _strip_image_refs(request(text))
    pronoun = ""
    for pattern in patterns:
        for m in pattern.finditer(canon):
            found = _span(m.group("o"), participle=participle)
            if found and found not in PRONOUNS:
                return found
            pronoun = pronoun or found
    m = prefix.search(canon)
    fronted = _span(m.group("o")) if m else ""
    if fronted and fronted not in PRONOUNS:
        return fronted
    m = re.search(r" (?:,|—|–|:) (?P<o>[^,:—–]+)$", canon)  # "where are they, the houses"
    after = _span(m.group("o")) if m and pronoun else ""
    return after if after and after not in PRONOUNS else pronoun


_ARCHIVE = r"(?:archive|database|index|collection|catalog|catalogue|library|imagery archive|data ?base)"
SEARCH_TRAIL = re.compile(rf"\b(?:in|from|within|across|inside|through|of) (?:the |my |our |your |this )?"
                          rf"(?:whole |entire )?{_ARCHIVE}\b|\b(?:please|pls|thanks|thank you|thx|for me|asap|"
                          rf"real quick|if you can|now|ok|okay)\b ?[,.!?]*$|\b(?:please|pls)\b|[?.!]+")
SEARCH_COLLECTION = re.compile(
    r"\b(?:images|image|pictures|picture|photos|photo|tiles|tile|scenes|shots|imagery|examples|results|ones|"
    r"chips|frames|others|matches|lookalikes|look-alikes|duplicates|neighbours|neighbors)\b"
    r"(?: (?:that|which|where|who) (?:show|shows|contain|contains|have|has|look|looks|depict|depicts|feature|"
    r"features|include|includes|are|is))?(?: (?:of|with|showing|containing|like|depicting|featuring|having|"
    r"including|for|where there (?:is|are)|where|show|shows|contain|contains|look like|looks like|similar to|about|"
    r"on|in which there (?:is|are)) )?(?: :)?(?P<q>.*)")
SEARCH_VERB = re.compile(rf"\b(?:search|look|query|retrieve|seek|find|browse|fetch|get|pull|bring|list|hunt)"
                         rf"(?: (?:up|for|through|in|the|{_ARCHIVE}|me|us|all|any|some|across|on|my|our|your|:|,))* (?P<q>.+)")


def search_query(text: str) -> str:
    """What to search the archive for ("" for a search by the image itself)."""
    canon = request(text)
    canon = " ".join(SEARCH_TRAIL.sub(" ", canon).split())
    m = SEARCH_COLLECTION.search(canon)
    query = m.group("q") if m and m.group("q").strip() else None
    if query is None and m is None:
        m2 = SEARCH_VERB.search(canon)
        query = m2.group("q") if m2 else ""
    query = phrase(query or "")
    by_image = {"like this", "like it", "like this one", "similar", "more", "similar ones", "same", "the same",
                "image", "this image", "picture", "this picture", "tile", "this tile", "one", "like this image",
                "the image", "mine", "my image", "ones like this", "like mine"}
    if query in PRONOUNS or query in by_image or re.fullmatch(
            r"(?:(?:more|other|similar|some) )*(?:ones? )?(?:like|similar to) (?:this|it|that|these|mine)"
            r"(?: (?:one|image|picture|tile|scene))?", query):
        return ""
    return restore(query, text)


_LABEL_MARKER = re.compile(
    r"\b(?:into|among|amongst|between|from|using|with|labels?|classes|categories|options|choices|candidates|one of|"
    r"of these(?: is it)?|of the following|fits best|fit best|choose|pick|either|as|call (?:this|it)|"
    r"look like|looks like|(?:is|are) (?:this|it|that|the)(?: (?:scene|image|place|area|tile|picture|photo|region|"
    r"one))?)\b(?: :)? (?P<l>.+)")
_LABEL_LEAD = re.compile(r"^(?:(?:the )?(?:following|labels?|classes|categories|options|choices)|one of|either|"
                         r"one|of|these|between|among|:|,|\(|with|as|a|an|the)\b ?")
_LABEL_END = re.compile(r"\s(?:[—–-] (?=which|what)|\)|\?|!|\.|;)|\b(?:which (?:one|is it|fits|is best|is correct)|"
                        r"please|pls)\b")


def labels(text: str) -> list[str]:
    """The candidate labels a classify instruction lists ([] when it lists none)."""
    canon = _strip_image_refs(request(text))
    candidates = []
    starts = [m.start() for m in re.finditer(_LABEL_MARKER.pattern.split("(?: :)?")[0], canon)]
    for start in reversed(starts):
        m = _LABEL_MARKER.match(canon, start)
        if m:
            candidates.append(m.group("l"))
    for mark in (" : ", " — ", " – "):
        if mark in f" {canon} ":
            before, after = canon.rsplit(mark.strip(), 1)
            candidates += [after, before]
    candidates.append(canon)
    for region in candidates:
        found = _split_labels(region)
        if len(found) >= 2:
            return [restore(label, text) for label in found]
    return []


def _split_labels(region: str) -> list[str]:
    region = " " + region + " "
    cut = _LABEL_END.search(region)
    if cut:
        region = region[:cut.start()]
    region = re.sub(r"\b(?:please|pls|thanks|thank you|thx|asap|real quick|if you can|now|for me)\b", " ", region)
    region = re.sub(r"^(?:(?:so|ok|okay|well|hey|hmm|hi|q|question|also|now|and|tell me) (?:, )?)+", "", region.strip())
    region = region.strip(" ,")
    while True:
        stripped = _LABEL_LEAD.sub("", region, count=1).strip()
        if stripped == region:
            break
        region = stripped
    parts = re.split(r" ?(?:,|/|\||;) ?| or | and | vs\.? | versus ", f" {region} ")
    out = []
    for part in parts:
        part = re.sub(r"^\s*(?:or|and|either)\s", " ", part.replace("(", " ").replace(")", " "))
        label = phrase(part)
        if label:
            out.append(label)
    if any(len(label.split()) > 4 for label in out):
        return []
    return out


_GENERIC_CHANGE = set("""what whats is are was were has have had did do does changed change changes changing
difference differences different differ between the a an two both images image pictures picture photos photo
scenes scene tiles tile dates date times time before after earlier later first second and compare comparison
contrast detect detection show me us highlight spot find list describe summarize summarise tell anything
something since now then any there in of from to over on this these those it them happened happen happening
pair years year period see can you could please pls new from notable main major visible what's else ? . ! , :
; — 1st 2nd two-date over-time vs versus against latest older newer one ones other one's look looks like
differently changed? differs got get gotten become became went went on around here the between s ' how run
well ok okay so hey hi hello question q quick quickly me tell i want like would need go ahead kindly mind thanks thx
thank just also now again changing altered alteration alterations modified evolve evolved evolution spot spotted
please real if your my overview summary identify detected shows shown present where when which""".split())


def change_question(text: str) -> str | None:
    """The instruction itself when it asks about something specific in the change ("has the lake shrunk?"),
    None for a generic request ("what changed between the two dates?")."""
    words = [w for w in request(text).split() if not re.fullmatch(r"(?:19|20)\d\d|\d+", w)]
    return None if all(w in _GENERIC_CHANGE for w in words) else " ".join(text.split())


FOLLOW_OBJECT = re.compile(r"^(?:and|or|ok|okay|now|then|also|so|but)?(?: )?(?:what about|how about|and|now|"
                           r"same for|what of|and what about|and how about|and also|also)?(?: the)? (?P<o>.+)$")


def followup_object(text: str) -> str:
    """A new object in a follow-up ("and ships?", "what about the trucks") or ""."""
    canon = _strip_image_refs(canonical(text))
    canon = re.sub(r"\b(?:same|again|too|as well|also|please|pls|question|thing|for|one|ones|the same|"
                   r"then|now|instead|do|repeat|that|this)\b", " ", canon)
    canon = " ".join(canon.split())
    m = re.match(r"^(?:and|or|ok|okay|so|but)? ?(?:what|how) about (?P<o>.+)$", canon) or \
        re.match(r"^(?:and|or) (?P<o>.+)$", canon)
    if not m:
        return ""
    words = _cut(m.group("o").split())
    found = phrase(" ".join(words))
    return "" if found in PRONOUNS or BARE_WHEN.match(found) or found in ("before", "after", "earlier", "later") \
        else restore(found, text)
