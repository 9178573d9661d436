"""Text helpers the router shares with its generator: whitespace and phrase normalisation, and a canonical token
stream in which contractions are expanded and common misspellings of the *trigger* words ("hw many", "lcoate",
"serch") are mapped to the word meant, so the extraction rules read one spelling. Object words are left as typed:
the router cannot know what a misspelt object was meant to be, and the expert models see the phrase verbatim."""

from __future__ import annotations

import re

TOKEN = re.compile(r"[a-z0-9]+(?:['’\-][a-z0-9]+)*|[^\sa-z0-9]")

DETERMINERS = {"the", "a", "an", "all", "any", "every", "each", "some", "these", "those", "this", "that", "its",
               "my", "our"}
"""Leading words an argument phrase loses: "count all the planes" and "count planes" ask for the same object."""

CONTRACTIONS = {
    "where's": "where is", "what's": "what is", "whats": "what is", "wheres": "where is", "there's": "there is",
    "theres": "there is", "it's": "it is", "how's": "how is", "who's": "who is", "that's": "that is",
    "i'd": "i would", "i'm": "i am", "can't": "can not", "don't": "do not", "doesn't": "does not",
    "isn't": "is not", "aren't": "are not", "let's": "let us", "they're": "they are", "what're": "what are",
    "where're": "where are", "when's": "when is", "you're": "you are", "i've": "i have",
}

SHORT = {"hw": "how", "hiw": "how", "r": "are", "u": "you", "ur": "your", "wher": "where", "whre": "where",
         "wat": "what", "wht": "what", "waht": "what", "teh": "the", "pls": "please", "plz": "please",
         "pic": "picture", "pics": "pictures", "img": "image", "imgs": "images", "nr": "number",
         "hwo": "how", "mnay": "many", "mny": "many", "manny": "many", "whcih": "which", "wich": "which",
         "ther": "there", "thre": "there", "si": "is", "fo": "of", "fro": "for", "adn": "and", "nad": "and",
         "imgae": "image", "iamge": "image", "pictrue": "picture", "ae": "are", "re": "are", "ar": "are"}
"""Short or frequent misspellings, mapped outright (edit distance is too loose on words this short)."""

KEYWORDS = ("locate", "count", "search", "classify", "where", "caption", "describe", "compare", "changed",
            "change", "changes", "number", "highlight", "categorize", "categorise", "category", "retrieve",
            "different", "difference", "differences", "images", "image", "picture", "pictures", "archive",
            "detailed", "description", "knowledge", "summarize", "summarise", "identify", "pinpoint", "outline",
            "similar", "photos", "tiles", "scenes", "labels", "between", "second", "earlier", "later", "first",
            "image", "photo", "tile", "scene", "label", "many")
PROTECTED = {"court", "courts", "counter", "county", "mount", "counts", "words", "were", "here", "there", "chance",
             "charge", "range", "orange", "imagery", "summary", "similarly", "search", "number", "numbers",
             "lumber", "label", "labelled", "later", "latter", "water", "first", "find", "seconds", "locate",
             "located", "location", "hanger", "charges", "ranged", "changes", "mage", "manage", "images", "vintage",
             "firs", "late", "tires", "miles", "piles", "files", "titles", "wheres", "counted"}
"""Real words one edit away from a keyword ("tennis court" is not "tennis count")."""


def clean(text: str) -> str:
    """``text`` with runs of whitespace collapsed and the ends stripped (how questions are passed on)."""
    return " ".join(text.split())


def _edit1(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by one insertion, deletion, substitution or adjacent transposition."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def _near(word: str, keyword: str) -> bool:
    """A likely misspelling of ``keyword``: one edit for keywords of six letters or more; for five-letter ones
    only a dropped letter or two swapped neighbours ("cont", "cuont"), as one substitution makes real words
    ("court", "mount")."""
    if len(keyword) >= 6:
        return _edit1(word, keyword)
    if len(keyword) == 5 and len(word) in (4, 5):
        return _edit1(word, keyword) and (len(word) == 4 or sorted(word) == sorted(keyword))
    return False


_FIXED: dict[str, str] = {}


_VOCAB: tuple[set[str], list[str]] | None = None


def _vocabulary() -> tuple[set[str], list[str]]:
    """(every word the generator knows, the words of its request frames, keywords first). A token outside the
    first set that is one edit away from a frame word is a misspelt request word ("gind the plane", "amny")."""
    global _VOCAB
    if _VOCAB is None:
        from terravl.router import templates as t

        frame_text = " ".join(str(x) for group in t.FRAME_GROUPS for x in group)
        frame = set(re.findall(r"[a-z]+", re.sub(r"\{[a-z_0-9]+\}", " ", frame_text.lower())))
        vocab_text = " ".join(" ".join(x) if isinstance(x, tuple) else x for group in t.VOCAB_GROUPS for x in group)
        known = frame | set(re.findall(r"[a-z]+", vocab_text.lower())) | PROTECTED | set(KEYWORDS)
        ordered = list(KEYWORDS) + sorted(w for w in frame if len(w) >= 3 and w not in KEYWORDS)
        _VOCAB = (known, ordered)
    return _VOCAB


def is_known(word: str) -> bool:
    """Whether ``word`` is one the generator uses (request wording or vocabulary)."""
    return word in _vocabulary()[0]


def canonical_word(word: str) -> str:
    """The request word a misspelt token stands for, or the token itself."""
    if word in SHORT:
        return SHORT[word]
    if len(word) < 3 or word in PROTECTED or word in KEYWORDS or not word.isalpha():
        return word
    if word not in _FIXED:
        known, frame = _vocabulary()
        fixed = word
        if word not in known:
            fixed = next((k for k in frame if (_edit1(word, k) if len(word) >= 4 and len(k) >= 3
                                               else len(k) in (3, 4) and _edit1(word, k))), word)
        _FIXED[word] = fixed
    return _FIXED[word]


def tokens(text: str) -> list[str]:
    """Lower-case canonical tokens: words (contractions expanded, trigger typos fixed) and punctuation marks."""
    out: list[str] = []
    for tok in TOKEN.findall(text.lower().replace("’", "'")):
        if tok in CONTRACTIONS:
            out.extend(CONTRACTIONS[tok].split())
        elif tok.endswith("'s") and tok[:-2] in ("where", "what", "how", "there", "it", "who", "that"):
            out.extend([tok[:-2], "is"])
        else:
            out.append(canonical_word(tok))
    return out


def canonical(text: str) -> str:
    """The canonical tokens joined by single spaces: what the extraction patterns match."""
    return " ".join(tokens(text))


def phrase(text: str) -> str:
    """An argument phrase as the router returns it: lower case, single spaces, no surrounding punctuation or
    quotes, no leading determiners ("the", "all the", "a", …)."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"\s+([,;:!?.])", r"\1", clean(text))
    text = text.strip(" \t\"'`“”‘’.,;:!?()[]{}—–-")
    words = text.split()
    while words and (words[0] in DETERMINERS or words[0] == "of" or words[:2] == ["one", "of"]):
        words = words[2:] if words[:2] == ["one", "of"] else words[1:]
    return " ".join(words).strip(" \"'`“”‘’.,;:!?()[]{}—–-")
