"""Answers grounded in a knowledge base (RS-RAG): retrieve evidence for a question (and an image), then answer from
it with numbered citations — or say that the knowledge base holds nothing relevant, never inventing an answer.

Who answers is always said (``answered_by``):

- a local Hugging Face causal language model (``lm``: a folder), generating from the question and the numbered
  evidence (and, with an image, what the VQA bridge sees in it);
- otherwise TerraVL's own answerer: the VQA bridge for the image part, and the evidence for the rest — a scene
  question ("what kind of area is this?") is answered from the labelled evidence, a presence question ("is there
  a car?") from how many of the most similar stored images' texts name the object, and any other question by
  extractive composition: the evidence sentences that share the most content words with the question, from the
  best-supported passages, each followed by its citation.

With an image, the bridge and the evidence are weighed against each other (:func:`fuse_scene`,
:func:`fuse_presence`): the bridge's log-probability of each candidate answer plus ``weight`` × the log of the
evidence's smoothed share for it. A confident bridge is overruled only by strong evidence, an unsure one follows
the evidence. The weights are fitted per collection of the knowledge base by ``terravl kb calibrate`` (leave-one-
out on the collection's own labelled images, :mod:`terravl.train.kb_fusion`) and kept in the knowledge base; the
collection of the most relevant stored image picks them at question time.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from terravl.errors import InputError
from terravl.kb.query import relevance_threshold, retrieve
from terravl.kb.results import Evidence, KBAnswer
from terravl.kb.store import KBStore
from terravl.kb.text import content_words, sentences
from terravl.validation import check_k, check_text

SCENE_QUESTION = re.compile(r"\b(what|which)\s+(kind|type|sort|class)\s+of\b|\bwhat\s+(is|are)\s+(this|these|"
                            r"the)\s+(area|scene|place|image|land ?use)\b|\bwhat\s+(scene|land ?use|place)\b",
                            re.IGNORECASE)
PRESENCE_QUESTION = re.compile(r"^\s*(is|are)\s+there\s+(an?\s+|any\s+|some\s+)?(?P<object>.+?)"
                               r"(\s+(in|on|at|near)\s+(this|the)\s+\w+)?\s*\??\s*$", re.IGNORECASE)
VQA_WEIGHT = 1.0
"""Weight of the VQA bridge's answer in a vote, against the summed relevance of the evidence that agrees (used
when the bridge cannot score candidate answers)."""
FUSION_DEFAULT = {"scene": 1.0, "presence": 1.0}
"""Weight of the evidence against the bridge's log-probabilities when the knowledge base has no calibration
(``terravl kb calibrate``) for the collection at hand: the two count equally."""
SCENE_SMOOTHING = 0.05
"""Relevance added to every candidate class's share of the evidence, so that a class no evidence carries is unlikely
but not impossible."""
PRESENCE_SMOOTHING = 0.5
"""Relevance added to both sides of the evidence's yes/no tally (five images at most, each ≤ 1)."""

AnswerScorer = Callable[[Sequence[str]], np.ndarray]
"""The bridge's log-probability of each candidate answer to the question about the image (one call per question)."""
ANSWER_TOKENS = 12
"""Longest answer the bridge gives to a question about the image."""
PRESENCE_EVIDENCE = 5
"""Most similar stored images whose texts vote on a presence question."""


def question_type(question: str) -> str:
    if SCENE_QUESTION.search(question):
        return "scene"
    if PRESENCE_QUESTION.match(question):
        return "presence"
    return "open"


def shares_vectors(captioner_encoder, encoder, kb_model: str) -> bool:
    """Whether the captioner's image features can stand for the knowledge base's image vectors: the same model
    with its caption memory used alike (a captioner turns the memory off, a knowledge base is built with it on;
    the two vectors then differ, and the query image must be embedded again by ``encoder``)."""
    return ((captioner_encoder.source or captioner_encoder.name) == kb_model
            and getattr(captioner_encoder, "use_memory", None) == getattr(encoder, "use_memory", None))


def image_side(captioner, encoder, kb_model: str, paths: list, progress: bool | None = None):
    """For many query images at once: (the bridge's features, the vectors that query the knowledge base, the
    captioner's descriptions). The features stand for the vectors only when :func:`shares_vectors` says so."""
    from terravl.models.bridge import CAPTION_PROMPT

    features = captioner.encoder.encode_images(paths, batch_size=64, progress=progress)
    vectors = features if shares_vectors(captioner.encoder, encoder, kb_model) else \
        encoder.encode_images(paths, batch_size=64)
    return features, vectors, captioner.generate(features, CAPTION_PROMPT)


def not_found_text(best: float, threshold: float) -> str:
    return (f"Not found in the knowledge base: no evidence is relevant enough (best evidence score {best:.2f}, "
            f"below {threshold:.2f}).")


def ask_kb(kb: str | Path | KBStore, question: str, image=None, encoder=None, captioner=None, lm: str | Path | None
           = None, k: int = 5, bbox=None, date_from: str | None = None, date_to: str | None = None,
           retrievers=None, rerank: bool = True, path: str | None = None,
           min_relevance: float | None = None) -> KBAnswer:
    """Answer ``question`` (about ``image``, if given) from the knowledge base ``kb`` (a file or an open store).

    ``encoder`` must be the knowledge base's model (loaded by name when None); ``captioner`` answers about the
    image and describes it for retrieval (the shipped one when None); ``lm`` is a local causal LM folder that
    writes the answer instead of TerraVL's answerer. ``path`` is how the image is named in the answer;
    ``min_relevance`` replaces the not-found threshold (:data:`~terravl.kb.query.MIN_RELEVANCE`)."""
    asked = check_text(question, "question")
    k = check_k(k, maximum=50)
    relevance_threshold(image is not None, min_relevance)  # a clear error before any work
    args = (asked, image, encoder, captioner, lm, k, bbox, date_from, date_to, retrievers, rerank, path,
            min_relevance)
    if isinstance(kb, KBStore):
        return _ask(kb, *args)
    with KBStore(kb, readonly=True) as store:
        return _ask(store, *args)


def _ask(store: KBStore, asked: str, image, encoder, captioner, lm, k, bbox, date_from, date_to, retrievers, rerank,
         path, min_relevance) -> KBAnswer:
    import terravl.models as m

    if lm is not None:
        _load_lm(str(Path(lm).resolve()))  # a clear error before any work
    encoder = encoder or m.load(store.model)
    image_answer = description = scorer = None
    image_vector = None
    if image is not None:
        from terravl.models.bridge import CAPTION_PROMPT, question_prompt

        captioner = captioner or m.load_captioner(m.DEFAULT_CAPTIONER)
        features = captioner.encoder.encode_images([image])
        image_answer = captioner.generate(features, question_prompt(asked), beams=1, max_tokens=ANSWER_TOKENS)[0]
        scorer = bridge_scorer(captioner, features[0], asked)
        description = captioner.generate(features, CAPTION_PROMPT, beams=1, max_tokens=30)[0]
        if shares_vectors(captioner.encoder, encoder, store.model):
            image_vector = features[0]
    kind = question_type(asked)
    retrieval = retrieve(store, encoder, asked, image if image_vector is None else None, k, bbox, date_from, date_to,
                         retrievers, rerank, expansion=description, image_vector=image_vector,
                         min_relevance=min_relevance)
    threshold = relevance_threshold(image is not None, min_relevance)
    common = dict(question=asked, path=path, question_type=kind, best_relevance=retrieval.best_relevance,
                  evidence=retrieval.evidence, image_answer=image_answer, image_description=description)
    if not retrieval.found or not retrieval.evidence:
        return KBAnswer(answer=not_found_text(retrieval.best_relevance, threshold), answered_by="nobody: "
                        "nothing relevant in the knowledge base", found=False, citations=[], **common)
    if lm is not None:
        text, cited = _generate(str(Path(lm).resolve()), asked, retrieval.evidence, image_answer, description)
        return KBAnswer(answer=text, answered_by=f"language model {Path(lm).name} (from the question and the "
                        f"retrieved evidence)", found=True, citations=cited, **common)
    fusion = fusion_weights(store.meta().get("fusion"), retrieval.evidence,
                            captioner_identity(captioner) if captioner is not None else None)
    text, short, cited, by = compose(asked, retrieval.evidence, image_answer, image is not None, scorer, fusion)
    return KBAnswer(answer=text, short=short, answered_by=by, found=True, citations=cited, **common)


def compose(asked: str, evidence: list[Evidence], image_answer: str | None, has_image: bool,
            scorer: AnswerScorer | None = None, fusion: dict | None = None) -> tuple[str, str | None, list[int], str]:
    """TerraVL's own answer from relevant evidence: (answer with citations, short answer or None, cited numbers,
    who answered). With ``scorer`` (the bridge's log-probabilities, :func:`bridge_scorer`), scene and presence
    answers weigh the bridge against the evidence by ``fusion`` (:func:`fusion_weights`)."""
    kind = question_type(asked)
    fusion = fusion or {**FUSION_DEFAULT, "collection": None}
    weighed = (f"the bridge's confidence weighed against the evidence (weight {fusion[kind]:g}, "
               f"{'calibrated on ' + repr(fusion['collection']) if fusion.get('collection') else 'uncalibrated'})"
               if scorer is not None and kind in ("scene", "presence") else "")
    if kind == "scene":
        short, cited = _vote_scene(evidence, image_answer, scorer, fusion["scene"])
        text = _scene_text(short, cited, evidence)
        how = weighed or "a vote of the labelled evidence"
    elif kind == "presence" and has_image:
        short, cited, said = _vote_presence(asked, evidence, image_answer, scorer, fusion["presence"])
        text = f"{short}: {said} {_cite(cited)}".strip()
        how = weighed or "the most similar stored images' descriptions"
    else:
        short = None
        text, cited = _extract(asked, evidence)
        if image_answer:
            text = f"The image: {image_answer}. {text}".strip()
        how = "extractive composition of the best-supported passages"
    return text, short, cited, "TerraVL's answerer: " + ("the VQA bridge on the image and " if has_image else "") + how


def caption_with_kb(plain: str, evidence: list[Evidence], weight: float = 1.0, images: int = 5) -> str:
    """Retrieval-augmented captioning at decoding time: the captioner's caption (``plain``) and the captions of the
    ``images`` most relevant stored images compete, each weighted (the caption by ``weight``, a stored caption by
    its image's relevance); the consensus caption — the one sharing the most words and word pairs with the others
    (Devlin et al., 2015) — wins. The captioner is not retrained to read the retrieved captions."""
    from terravl.models.retrieval_captioner import RetrievalCaptioner

    candidates = [(weight, plain)]
    for e in [e for e in evidence if e.kind == "image" and e.text][:images]:
        for sent in sentences(e.text or ""):
            if not sent.startswith("Objects:"):
                candidates.append((e.relevance, sent))
    return RetrievalCaptioner._consensus(candidates)


def _cite(numbers: list[int]) -> str:
    return "".join(f"[{n}]" for n in numbers)


def _norm(label: str | None) -> str:
    return " ".join((label or "").lower().replace("-", " ").split())


def scene_votes(evidence: list[Evidence]) -> dict[str, float]:
    """Summed relevance of the labelled evidence per scene class."""
    votes: dict[str, float] = {}
    for e in evidence:
        if e.label:
            votes[_norm(e.label)] = votes.get(_norm(e.label), 0.0) + e.relevance
    return votes


def scene_candidates(votes: dict[str, float], image_answer: str | None) -> list[str]:
    """The classes a scene answer chooses among: those of the evidence and the bridge's own answer."""
    return sorted(set(votes) | ({_norm(image_answer)} if _norm(image_answer) else set()))


def fuse_scene(votes: dict[str, float], logp: dict[str, float], weight: float) -> str:
    """The candidate class maximising the bridge's log-probability (normalised over the candidates) plus ``weight``
    × the log of its smoothed share of the evidence's relevance."""
    names = sorted(logp)
    bridge = np.array([logp[c] for c in names], dtype=np.float64)
    bridge -= np.logaddexp.reduce(bridge)
    total = sum(votes.values()) + SCENE_SMOOTHING * len(names)
    evidence = np.array([math.log((votes.get(c, 0.0) + SCENE_SMOOTHING) / total) for c in names])
    return names[int(np.argmax(bridge + weight * evidence))]


def _vote_scene(evidence: list[Evidence], image_answer: str | None, scorer: AnswerScorer | None = None,
                weight: float = 1.0) -> tuple[str, list[int]]:
    """The scene class: weighed with the bridge's log-probabilities when ``scorer`` is given, else the class with
    the most summed relevance among labelled evidence (the VQA answer adds its vote)."""
    votes = scene_votes(evidence)
    if scorer is not None and (votes or _norm(image_answer)):
        candidates = scene_candidates(votes, image_answer)
        best = fuse_scene(votes, dict(zip(candidates, np.asarray(scorer(candidates), dtype=np.float64))), weight)
        return best, [e.rank for e in evidence if _norm(e.label) == best]
    if image_answer:
        votes[_norm(image_answer)] = votes.get(_norm(image_answer), 0.0) + VQA_WEIGHT * max(
            (e.relevance for e in evidence), default=1.0)
    if not votes:
        return (image_answer or "unknown"), []
    best = max(votes, key=lambda c: (votes[c], c))
    return best, [e.rank for e in evidence if _norm(e.label) == best]


def _scene_text(label: str, cited: list[int], evidence: list[Evidence]) -> str:
    """The class, cited, and the first sentence of a passage describing it when the evidence holds one."""
    for e in evidence:
        if e.kind == "text" and _norm(e.label) == label and e.text:
            others = [n for n in cited if n != e.rank]
            head = f"{label} {_cite(others)}".strip()
            return f"{head}. {sentences(e.text)[0].rstrip('.')}. [{e.rank}]"
    return f"{label} {_cite(cited)}".strip()


def presence_object(question: str) -> str | None:
    m = PRESENCE_QUESTION.match(question)
    return m.group("object").strip().lower() if m else None


def _object_words(obj: str) -> set[str]:
    from terravl.datasets.derived_vqa import OBJECTS, TAG_OBJECTS

    key = TAG_OBJECTS.get(obj, obj)
    singular = key[:-1] if key.endswith("s") and key[:-1] in OBJECTS else key
    found = set(OBJECTS.get(singular, ())) | {obj, singular, singular + "s"}
    found |= {t.replace("-", " ") for t, o in TAG_OBJECTS.items() if o == singular}
    return {w for w in found if w}


def _mentions(text: str, words: set[str]) -> bool:
    padded = " " + " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split()) + " "
    return any(f" {w} " in padded for w in words)


def presence_votes(question: str, evidence: list[Evidence]) -> tuple[list[Evidence], list[Evidence]]:
    """(the most similar stored images whose text names the object, those whose text does not)."""
    words = _object_words(presence_object(question) or "")
    images = [e for e in evidence if e.kind == "image" and e.text][:PRESENCE_EVIDENCE]
    yes = [e for e in images if _mentions(e.text or "", words)]
    return yes, [e for e in images if e not in yes]


def fuse_presence(yes: float, no: float, logp_yes: float, logp_no: float, weight: float) -> str:
    """yes/no from the bridge's log-odds plus ``weight`` × the log-odds of the evidence's smoothed relevance tally."""
    evidence = math.log((yes + PRESENCE_SMOOTHING) / (no + PRESENCE_SMOOTHING))
    return "yes" if (logp_yes - logp_no) + weight * evidence > 0 else "no"


def _vote_presence(question: str, evidence: list[Evidence], image_answer: str | None,
                   scorer: AnswerScorer | None = None, weight: float = 1.0) -> tuple[str, list[int], str]:
    """yes/no: the relevance-weighted share of the most similar stored images whose text names the object, weighed
    with the bridge's log-odds when ``scorer`` is given, else with the VQA answer's vote."""
    obj = presence_object(question) or ""
    yes, no = presence_votes(question, evidence)
    score_yes = sum(e.relevance for e in yes)
    score_no = sum(e.relevance for e in no)
    vqa = _norm(image_answer)
    if scorer is not None:
        logp_yes, logp_no = (float(v) for v in scorer(["yes", "no"]))
        short = fuse_presence(score_yes, score_no, logp_yes, logp_no, weight)
        vqa = f"yes with probability {1 / (1 + math.exp(min(logp_no - logp_yes, 700))):.2f}"
    else:
        if vqa in ("yes", "no"):
            weight = VQA_WEIGHT * max((e.relevance for e in evidence), default=1.0)
            score_yes += weight if vqa == "yes" else 0.0
            score_no += weight if vqa == "no" else 0.0
        short = "yes" if score_yes > score_no else "no"
    said = f"{len(yes)} of the {len(yes) + len(no)} most similar images in the knowledge base show {obj or 'it'}"
    if vqa in ("yes", "no") or scorer is not None:
        said += f"; the VQA model says {vqa}" if scorer is None else f"; the VQA model gives {vqa}"
    return short, [e.rank for e in (yes if short == "yes" else no)], said


def bridge_scorer(captioner, feature: np.ndarray, question: str) -> AnswerScorer | None:
    """The bridge's log-probabilities of candidate answers to ``question`` about the image of ``feature`` (None
    for a captioner that cannot score answers)."""
    if not hasattr(captioner, "answer_logprobs"):
        return None
    from terravl.models.bridge import question_prompt

    prompt = question_prompt(question)
    row = np.asarray(feature)[None]
    return lambda candidates: captioner.answer_logprobs(row, [prompt], [list(candidates)])[0]


def fusion_weights(calibration: dict | None, evidence: list[Evidence], captioner: str | None) -> dict:
    """The weights for these evidence: those fitted for the collection (``ref``) of the most relevant stored image
    when ``terravl kb calibrate`` fitted them for this captioner (:func:`captioner_identity`), else the calibration's pooled weights, else
    :data:`FUSION_DEFAULT`. Returns ``{"scene", "presence", "collection"}``."""
    if not isinstance(calibration, dict) or calibration.get("captioner") != captioner:
        return {**FUSION_DEFAULT, "collection": None}
    ref = routing_collection(evidence)
    try:
        collections = calibration.get("collections") or {}
        chosen, name = (collections[ref], ref) if ref is not None and ref in collections else \
            (calibration.get("pooled"), "pooled")
        return {"scene": float(chosen["scene"]), "presence": float(chosen["presence"]), "collection": name}
    except (TypeError, KeyError, ValueError, AttributeError):  # a damaged calibration: as if there were none
        return {**FUSION_DEFAULT, "collection": None}


def captioner_identity(captioner) -> str | None:
    """The captioner's name and a fingerprint of its weights (computed once per object): a calibration holds only
    for the bridge it was fitted with, not for one retrained under the same name."""
    cached = getattr(captioner, "_terravl_identity", None)
    if cached is not None:
        return cached
    name = getattr(captioner, "name", None)
    identity = name
    if getattr(captioner, "mapper", None) is not None and hasattr(captioner, "state_dict"):
        from types import SimpleNamespace

        from terravl.models.feature_cache import weights_fingerprint

        identity = f"{name}@{weights_fingerprint(SimpleNamespace(model=captioner))[:12]}"
    try:
        captioner._terravl_identity = identity
    except AttributeError:
        pass
    return identity


def routing_collection(evidence: list[Evidence]) -> str | None:
    """The collection (``ref``) of the most relevant stored image among the evidence: whose weights apply."""
    images = [e for e in evidence if e.kind == "image"]
    return max(images, key=lambda e: e.relevance).ref if images else None


def _extract(question: str, evidence: list[Evidence], limit: int = 2) -> tuple[str, list[int]]:
    """The evidence sentences sharing the most content words with the question, from distinct passages (best
    supported first), each followed by its citation."""
    wanted = set(content_words(question))
    scored = []
    for e in evidence:
        if not e.text:
            continue
        for n, sent in enumerate(sentences(e.text)):
            overlap = len(wanted & set(content_words(sent))) / (len(wanted) or 1)
            scored.append((overlap + e.relevance, -e.rank, -n, sent, e.rank))
    scored.sort(reverse=True)
    chosen, used = [], set()
    for _, _, _, sent, rank in scored:
        if rank in used:
            continue
        used.add(rank)
        chosen.append((sent, rank))
        if len(chosen) == limit:
            break
    if not chosen:
        return "The evidence holds no text to quote; see the evidence list.", []
    chosen.sort(key=lambda x: x[1])
    return " ".join(f"{s.rstrip()} [{r}]" for s, r in chosen), [r for _, r in chosen]


# -- a local causal language model -------------------------------------------------------------------------
@lru_cache(maxsize=2)
def _load_lm(folder: str):
    """(model, tokenizer) of a local Hugging Face causal LM folder, loaded once per process (never downloads)."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise InputError("lm", f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from terravl.models.bridge import _quiet_transformers

        _quiet_transformers()
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError("lm", f"{folder}: cannot load a causal language model ({str(exc).splitlines()[0]})") \
            from None
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def lm_prompt(question: str, evidence: list[Evidence], image_answer: str | None = None,
              description: str | None = None) -> str:
    lines = ["Answer the question using only the numbered context; cite it as [n].", "", "Context:"]
    lines += [f"[{e.rank}] {(e.title + ': ') if e.title and e.kind == 'text' else ''}{e.text or e.label or e.source}"
              for e in evidence]
    if description or image_answer:
        lines.append(f"The image: {description or ''} (a visual model answers: {image_answer or '-'})")
    return "\n".join(lines + ["", f"Question: {question}", "Answer:"])


def _generate(folder: str, question: str, evidence: list[Evidence], image_answer, description,
              max_new_tokens: int = 64) -> tuple[str, list[int]]:
    """Greedy generation from the prompt; evidence is dropped from the end until the prompt fits the model."""
    import torch

    model, tokenizer = _load_lm(folder)
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    max_new_tokens = min(max_new_tokens, limit // 2)  # a small model's window holds the prompt and the answer
    budget = limit - max_new_tokens
    kept = list(evidence)
    while True:
        ids = tokenizer(lm_prompt(question, kept, image_answer, description), return_tensors="pt").input_ids
        if ids.shape[1] <= budget or not kept:
            break
        kept = kept[:-1]
    ids = ids[:, -budget:]
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = " ".join(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split())
    cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", text) if 1 <= int(n) <= len(kept)})
    return text or "(the language model gave no answer)", cited or [e.rank for e in kept]
