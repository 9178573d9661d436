"""``terravl kb calibrate``: fit how much TerraVL's answerer trusts a knowledge base's evidence against the VQA
bridge, per collection of the knowledge base.

Why per collection: how good the bridge is, and how informative the evidence is, depends on the imagery. On
``rsicd_aid`` the bridge already answers scene and presence questions better than the nearest stored images do, on
UC Merced it does not; one weight for both either spoils the first or wastes the second.

How: labelled images of the caption datasets the knowledge base was built from (their train split: the images *in*
the knowledge base) are asked the scene and presence questions that :mod:`terravl.datasets.derived_vqa` derives;
each image's own item is left out of the retrieval before fusion (leave-one-out), so the evidence is close to what
a new image of that collection would get, and each question counts for the collection its best image evidence
comes from, the rule that picks the weights at question time. One bias remains: the bridge was trained on these
images, so it looks more reliable here than on new ones, and the fitted weights lean to the bridge.

The bridge's log-probabilities and the evidence tallies are computed once; each weight of :data:`GRID` is then
scored by accuracy, and the best (the smaller on ties) is kept per collection and question type,
with the pooled best for collections not calibrated. The weights are written into the knowledge base (metadata
``fusion``) with the captioner they were fitted for (its name and weights fingerprint);
:func:`terravl.tasks.rag.fusion_weights` reads them.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from terravl.errors import InputError

GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 8.0)
"""Weights of the evidence tried (0: the bridge alone)."""
EVIDENCE = 5
"""Evidence retrieved per question, as ``terravl ask`` and ``terravl eval kb`` retrieve (the image's own item left
out before fusion)."""


def calibrate_kb(kb: str | Path, datasets: list[tuple[str | Path, str]], captioner=None, encoder=None,
                 sample: int = 500, seed: int = 0, progress: bool | None = None, save: bool = True) -> dict:
    """Fit and (with ``save``) store the fusion weights of ``kb`` from ``sample`` labelled images of each (caption
    dataset, split) in ``datasets``; returns the calibration (weights, accuracies, counts)."""
    import terravl.models as m
    from terravl.kb import KBStore
    from terravl.tasks.rag import captioner_identity

    if not datasets:
        raise InputError("dataset", "give at least one caption dataset the knowledge base was built from")
    if int(sample) < 1:
        raise InputError("sample", f"must be at least 1, got {sample}")
    started = time.perf_counter()
    with KBStore(kb, readonly=not save) as store:
        if save:
            store._writable()  # a clear error before minutes of work
        encoder = encoder or m.load(store.model)
        captioner = captioner or m.load_captioner(m.DEFAULT_CAPTIONER)
        if not hasattr(captioner, "answer_logprobs"):
            raise InputError("captioner", f"{getattr(captioner, 'name', 'the captioner')} cannot score answers")
        rows: list[dict] = []
        for dataset, split in datasets:
            rows += _questions(store, encoder, captioner, dataset, split, int(sample), seed, progress)
        calibration = _fit(rows)
        calibration.update(captioner=captioner_identity(captioner), sample=int(sample), seed=int(seed),
                           datasets=[f"{Path(d).name}:{s}" for d, s in datasets],
                           calibrated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           seconds=round(time.perf_counter() - started, 1))
        if save:
            store.set_meta("fusion", calibration)
    return calibration


def _questions(store, encoder, captioner, dataset, split, sample, seed, progress) -> list[dict]:
    """One row per scene/presence question: its collection, truth, evidence tallies and the bridge's log-probs."""
    from terravl.datasets import KarpathyCaptions
    from terravl.datasets.derived_vqa import derive_questions
    from terravl.kb import retrieve
    from terravl.models.bridge import question_prompt
    from terravl.models.progress import progress_bar
    from terravl.tasks.rag import (ANSWER_TOKENS, _norm, image_side, presence_votes, routing_collection,
                                   scene_candidates, scene_votes)

    everything = KarpathyCaptions(dataset).records
    records = [r for r in everything if r.split == split and r.path is not None and r.label]
    if not records:
        raise InputError(dataset, f"no images with a class in split {split!r}")
    records = random.Random(seed).sample(records, min(sample, len(records)))
    own = store.image_items_of_sources(str(r.path.resolve()) for r in records)  # as the KB records sources
    records = [r for r in records if str(r.path.resolve()) in own]
    if not records:
        raise InputError(dataset, f"none of the images of split {split!r} is in the knowledge base: calibrate on "
                                  f"the split it was built from")
    features, vectors, captions = image_side(captioner, encoder, store.model, [r.path for r in records], progress)
    row_of = {r.image_id: n for n, r in enumerate(records)}
    questions = [q for q in derive_questions(everything) if q.split == split and q.image_id in row_of
                 and q.question_type in ("scene", "presence")]
    out: list[dict] = []
    bar = progress_bar(len(questions), progress, f"calibrating on {Path(dataset).name}")
    for q in questions:
        n = row_of[q.image_id]
        item_id, _ = own[str(records[n].path.resolve())]
        got = retrieve(store, encoder, q.question, None, EVIDENCE, expansion=captions[n], image_vector=vectors[n],
                       exclude={item_id})  # its own item shapes neither the ranking nor the re-ranking
        bar.update(1)
        if not got.found:  # answered by the bridge alone at question time: no weight applies
            continue
        row = {"collection": routing_collection(got.evidence), "type": q.question_type, "truth": _norm(q.answer),
               "row": n, "prompt": question_prompt(q.question)}
        evidence = got.evidence
        if q.question_type == "scene":
            row["votes"] = scene_votes(evidence)
        else:
            yes, no = presence_votes(q.question, evidence)
            row["yes"], row["no"] = sum(e.relevance for e in yes), sum(e.relevance for e in no)
            row["candidates"] = ["yes", "no"]
        out.append(row)
    bar.close()
    scenes = [r for r in out if r["type"] == "scene"]  # candidates as at question time: the evidence's and the bridge's
    said = captioner.generate(features[[r["row"] for r in scenes]], [r["prompt"] for r in scenes], beams=1,
                              max_tokens=ANSWER_TOKENS) if scenes else []
    for row, answer in zip(scenes, said):
        row["candidates"] = scene_candidates(row["votes"], answer)
    out = [r for r in out if r["candidates"]]  # no labelled evidence and no answer: nothing to weigh
    logps = captioner.answer_logprobs(features[[r["row"] for r in out]], [r["prompt"] for r in out],
                                      [r["candidates"] for r in out])
    for row, lp in zip(out, logps):
        row["logp"] = dict(zip(row["candidates"], lp.tolist()))
    return out


def _answer(row: dict, weight: float) -> str:
    from terravl.tasks.rag import fuse_presence, fuse_scene

    if row["type"] == "scene":
        return fuse_scene(row["votes"], row["logp"], weight)
    return fuse_presence(row["yes"], row["no"], row["logp"]["yes"], row["logp"]["no"], weight)


def _best(rows: list[dict]) -> tuple[float, float, float]:
    """(best weight, its accuracy %, the bridge-alone accuracy %) over ``rows``; the smaller weight on ties."""
    scores = [float(np.mean([_answer(r, w) == r["truth"] for r in rows])) for w in GRID]
    best = int(np.argmax(scores))
    return GRID[best], round(100 * scores[best], 2), round(100 * scores[0], 2)


def _fit(rows: list[dict]) -> dict:
    def fit(group: list[dict]) -> dict:
        found: dict = {"questions": {}, "accuracy": {}, "bridge_alone": {}}
        for kind in ("scene", "presence"):
            mine = [r for r in group if r["type"] == kind]
            weight, acc, alone = _best(mine) if mine else (1.0, None, None)
            found[kind] = weight
            found["questions"][kind], found["accuracy"][kind], found["bridge_alone"][kind] = len(mine), acc, alone
        return found

    collections = sorted({r["collection"] for r in rows if r["collection"] is not None})
    return {"collections": {c: fit([r for r in rows if r["collection"] == c]) for c in collections},
            "pooled": fit(rows)}
