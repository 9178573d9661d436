"""``terravl eval kb``: does a knowledge base help? Measured on held-apart images of caption datasets against a
knowledge base built from their train splits (and the shipped scene-class descriptions):

1. evidence — precision@5 of retrieved items of the query image's scene class (an item counts when its label is the
   query's class, as :func:`~terravl.datasets.class_names.class_phrase` writes it), hybrid against each retriever
   alone and against fusion without re-ranking. The query is the image with "what kind of area is this?"; BM25 and
   the dense retriever read that question plus the captioner's description of the image.
2. answers — scene-class and presence questions (derived from the annotations, :mod:`terravl.datasets.derived_vqa`)
   answered by the VQA bridge alone and by TerraVL's answerer over the knowledge base (same bridge, weighed against
   the evidence with the knowledge base's calibrated weights, ``terravl kb calibrate``); and captions — the plain
   captioner against retrieval-augmented captioning (:func:`terravl.tasks.rag.caption_with_kb`) on CIDEr.

Each test image is encoded and described once; the knowledge base is opened read-only.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from terravl.errors import InputError

CONFIGS = {"hybrid": (None, True), "hybrid, no re-ranking": (None, False), "bm25 only": ("bm25", False),
           "dense text only": ("dense", False), "image only": ("image", False)}
SCENE_QUESTION = "what kind of area is this?"


def _records(dataset: str | Path, split: str, limit: int | None) -> tuple[list, list]:
    """(test records with an image and a class, every record of the dataset for question derivation)."""
    from terravl.datasets import KarpathyCaptions

    everything = KarpathyCaptions(dataset).records
    records = [r for r in everything if r.split == split and r.path is not None and r.label][:limit]
    if not records:
        raise InputError(dataset, f"no images with a class in split {split!r}")
    return records, everything


def evaluate_kb(kb: str | Path, datasets: list[tuple[str | Path, str]], captioner=None, encoder=None,
                limit: int | None = None, parts: tuple[str, ...] = ("evidence", "answers", "captions"),
                progress: bool | None = None) -> dict:
    """The three measurements on every (dataset, split) in ``datasets``; see the module docstring."""
    import terravl.models as m
    from terravl.kb import KBStore

    with KBStore(kb, readonly=True) as store:
        encoder = encoder or m.load(store.model)
        captioner = captioner or m.load_captioner(m.DEFAULT_CAPTIONER)
        result = {"kb": str(kb), "kb_items": store.count(), "model": store.model,
                  "captioner": getattr(captioner, "name", "captioner"), "datasets": {}}
        for dataset, split in datasets:
            result["datasets"][f"{Path(dataset).stem}:{split}"] = _evaluate_one(
                store, encoder, captioner, dataset, split, limit, parts, progress)
    return result


def _evaluate_one(store, encoder, captioner, dataset, split, limit, parts, progress) -> dict:
    from terravl.datasets.class_names import class_phrase
    from terravl.kb import retrieve
    from terravl.models.progress import progress_bar
    from terravl.tasks.rag import image_side

    records, everything = _records(dataset, split, limit)
    started = time.perf_counter()
    features, image_vectors, captions = image_side(captioner, encoder, store.model, [r.path for r in records],
                                                   progress)
    out: dict = {"images": len(records), "seconds": {}}
    out["seconds"]["encode_and_caption"] = round(time.perf_counter() - started, 1)
    hybrid: list = []
    if "evidence" in parts or "captions" in parts or "answers" in parts:
        started = time.perf_counter()
        hits = {name: [] for name in CONFIGS}
        bar = progress_bar(len(records), progress, "kb evidence")
        for n, record in enumerate(records):
            truth = class_phrase(record.label)
            query_vec = encoder.encode_texts([f"{SCENE_QUESTION} {captions[n]}"])[0]
            for name, (retrievers, rerank) in CONFIGS.items():
                if name != "hybrid" and "evidence" not in parts:
                    continue
                got = retrieve(store, None, SCENE_QUESTION, None, 10 if name == "hybrid" else 5,
                               retrievers=retrievers, rerank=rerank, expansion=captions[n], text_vector=query_vec,
                               image_vector=image_vectors[n])
                hits[name].append(sum(e.label == truth for e in got.evidence[:5]) / 5)
                if name == "hybrid":
                    hybrid.append(got)
            bar.update(1)
        bar.close()
        if "evidence" in parts:
            out["precision_at_5"] = {name: round(100 * float(np.mean(v)), 2) for name, v in hits.items()}
        out["seconds"]["evidence"] = round(time.perf_counter() - started, 1)
    if "answers" in parts:
        started = time.perf_counter()
        out["answers"] = _answers(store, encoder, captioner, records, everything, features, image_vectors,
                                  captions, split)
        out["seconds"]["answers"] = round(time.perf_counter() - started, 1)
    if "captions" in parts:
        from terravl.eval.captions import score_captions
        from terravl.tasks.rag import caption_with_kb

        started = time.perf_counter()
        refs = {r.image_id: list(r.captions) for r in records}
        plain = {r.image_id: c for r, c in zip(records, captions)}
        augmented = {r.image_id: caption_with_kb(c, got.evidence) for r, c, got in zip(records, captions, hybrid)}
        out["captions"] = {
            "plain captioner": score_captions(refs, plain, with_meteor=False),
            "retrieval-augmented": score_captions(refs, augmented, with_meteor=False)}
        out["seconds"]["captions"] = round(time.perf_counter() - started, 1)
    return out


def _answers(store, encoder, captioner, records, everything, features, image_vectors, captions, split) -> dict:
    """Scene and presence questions: the VQA bridge alone against TerraVL's answerer with the knowledge base."""
    from terravl.datasets.derived_vqa import derive_questions
    from terravl.eval.vqa import vqa_accuracy
    from terravl.kb import retrieve
    from terravl.models.bridge import question_prompt
    from terravl.tasks.rag import ANSWER_TOKENS, bridge_scorer, captioner_identity, compose, fusion_weights

    row = {r.image_id: n for n, r in enumerate(records)}
    questions = [q for q in derive_questions(everything) if q.split == split and q.image_id in row
                 and q.question_type in ("scene", "presence")]
    rows = [row[q.image_id] for q in questions]
    alone = captioner.generate(features[rows], [question_prompt(q.question) for q in questions], beams=1,
                               max_tokens=ANSWER_TOKENS)
    with_kb, calibration, weights, identity = [], store.meta().get("fusion"), {}, captioner_identity(captioner)
    for q, n, vqa in zip(questions, rows, alone):
        got = retrieve(store, encoder, q.question, None, 5, expansion=captions[n], image_vector=image_vectors[n])
        if not got.found:
            with_kb.append(vqa)  # nothing relevant: the answer rests on the image alone
            continue
        fusion = fusion_weights(calibration, got.evidence, identity)
        used = fusion["collection"] or "uncalibrated"
        weights[used] = weights.get(used, 0) + 1
        _, short, _, _ = compose(q.question, got.evidence, vqa, True, bridge_scorer(captioner, features[n],
                                                                                      q.question), fusion)
        with_kb.append(short if short is not None else vqa)
    matches = isinstance(calibration, dict) and calibration.get("captioner") == identity
    return {"questions": len(questions), "fusion": {"calibrated": matches,
                                                   "questions_by_collection": weights},
            "without kb": vqa_accuracy([(q.question_type, q.answer, a) for q, a in zip(questions, alone)]),
            "with kb": vqa_accuracy([(q.question_type, q.answer, a) for q, a in zip(questions, with_kb)])}
