"""Dataset-level evaluations behind ``terravl eval``: each loads a dataset split with :mod:`terravl.datasets`,
runs a model from :mod:`terravl.models` (or reads existing predictions) and returns a JSON-ready result."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

from terravl.datasets import KarpathyCaptions, LevirCC, open_dataset
from terravl.datasets.records import CaptionRecord, ImageRecord
from terravl.errors import DatasetFormatError, InputError
from terravl.eval.captions import score_captions
from terravl.eval.retrieval import retrieval_metrics
from terravl.eval.vqa import vqa_accuracy
from terravl.eval.zeroshot import RS_TEMPLATES, class_embeddings, classification_metrics


def load_predictions(path: str | Path, key: str = "image_id", value: str = "caption") -> dict:
    """COCO results format ``[{"image_id": …, "caption": …}]`` (or ``question_id``/``answer`` for VQA)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such predictions file") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise InputError(path, f"expected a JSON list of {{{key!r}, {value!r}}} objects")
    out = {}
    for index, item in enumerate(data):
        if not isinstance(item, dict) or key not in item or value not in item:
            raise InputError(f"{path}#[{index}]", f"each entry needs {key!r} and {value!r}")
        if not isinstance(item[value], str):
            raise InputError(f"{path}#[{index}].{value}", "must be a string")
        out[item[key]] = item[value]
    return out


def eval_caption(dataset: str | Path, predictions: str | Path, split: str = "test", meteor: bool = True,
                 implementation: str = "fast") -> dict:
    """coco-caption scores of a predictions file on a Karpathy caption dataset split (``image_id`` = ``imgid``)."""
    records = KarpathyCaptions(dataset, split=split).records
    if not records:
        raise InputError(dataset, f"no images in split {split!r}")
    preds = load_predictions(predictions)
    refs = {r.image_id: list(r.captions) for r in records}
    missing = [i for i in refs if i not in preds and str(i) not in preds]
    if missing:
        raise InputError(predictions, f"{len(missing)} of {len(refs)} {split} images have no caption "
                                      f"(e.g. image_id {missing[0]})")
    got = {i: preds[i] if i in preds else preds[str(i)] for i in refs}
    scores = score_captions(refs, got, with_meteor=meteor, implementation=implementation)
    return {"task": "caption", "dataset": str(dataset), "split": split, "images": len(refs), "scores": scores}


def eval_caption_model(dataset: str | Path, captioner, split: str = "test", beams: int | None = None,
                       max_tokens: int | None = None, meteor: bool = True, limit: int | None = None,
                       implementation: str = "fast") -> dict:
    """Generate a caption for every image of a Karpathy split with ``captioner`` (a bridge
    :class:`~terravl.models.bridge.Captioner` or the retrieval baseline) and score them like :func:`eval_caption`.
    The result carries the predictions in COCO results format."""
    from terravl.models.bridge import CAPTION_PROMPT
    from terravl.validation import check_beams, check_max_tokens

    beams, max_tokens = check_beams(beams), check_max_tokens(max_tokens)  # before any image is read
    records = [r for r in KarpathyCaptions(dataset, split=split).records][:limit]
    if not records:
        raise InputError(dataset, f"no images in split {split!r}")
    missing = [r.filename for r in records if r.path is None]
    if missing:
        raise InputError(dataset, f"{len(missing)} images of split {split!r} not found on disk (e.g. {missing[0]}); "
                                  f"captioning needs the images")
    features = captioner.encoder.encode_images([r.path for r in records], batch_size=64)
    captions = captioner.generate(features, CAPTION_PROMPT, beams=beams, max_tokens=max_tokens)
    refs = {r.image_id: list(r.captions) for r in records}
    preds = {r.image_id: c for r, c in zip(records, captions)}
    scores = score_captions(refs, preds, with_meteor=meteor, implementation=implementation)
    settings = getattr(captioner, "settings", {})
    return {"task": "caption", "model": captioner.name, "method": settings.get("method", "generate"),
            "beams": beams or settings.get("beams"), "dataset": str(dataset), "split": split, "images": len(refs),
            "scores": scores, "predictions": [{"image_id": i, "caption": c} for i, c in preds.items()]}


def vqa_questions(dataset: str | Path, split: str = "test") -> tuple[list, str]:
    """The questions of a split: a VQA dataset's own (RSVQA), else questions derived from a caption dataset's
    scene classes and captions (:mod:`terravl.datasets.derived_vqa`). Returns (records, "rsvqa" | "derived")."""
    from terravl.datasets.derived_vqa import derive_questions
    from terravl.datasets.records import VQARecord

    records = list(open_dataset(dataset))
    questions = [r for r in records if isinstance(r, VQARecord)]
    kind = "rsvqa"
    if not questions:
        questions, kind = derive_questions([r for r in records if isinstance(r, CaptionRecord)]), "derived"
    questions = [q for q in questions if q.split == split]
    if not questions:
        raise InputError(dataset, f"no questions in split {split!r} (needs RSVQA, or captions with a 'class' field)")
    return questions, kind


def eval_vqa_model(dataset: str | Path, captioner, split: str = "test", beams: int | None = None,
                   limit: int | None = None) -> dict:
    """Answer every question of a split with ``captioner`` and report accuracy per question type (each image is
    encoded once)."""
    from terravl.models.bridge import question_prompt
    from terravl.validation import check_beams

    beams = check_beams(beams)
    questions, kind = vqa_questions(dataset, split)
    images = list(dict.fromkeys(q.image_id for q in questions))[:limit]
    keep = set(images)
    questions = [q for q in questions if q.image_id in keep]
    missing = [q for q in questions if q.path is None]
    if missing:
        raise InputError(dataset, f"{len(missing)} questions refer to images not found on disk")
    paths = {q.image_id: q.path for q in questions}
    features = captioner.encoder.encode_images([paths[i] for i in images], batch_size=64)
    row = {image_id: k for k, image_id in enumerate(images)}
    answers = captioner.generate(features[[row[q.image_id] for q in questions]],
                                 [question_prompt(q.question) for q in questions], beams=beams or 1, max_tokens=8)
    result = vqa_accuracy([(q.question_type, q.answer, a) for q, a in zip(questions, answers)])
    return {"task": "vqa", "model": captioner.name, "questions_from": kind, "dataset": str(dataset), "split": split,
            "images": len(images), "scores": result,
            "predictions": [{"question_id": q.question_id, "question": q.question, "answer": a}
                            for q, a in zip(questions, answers)]}


def _split_records(dataset: str | Path, split: str | None) -> list:
    records = [r for r in open_dataset(dataset) if split is None or getattr(r, "split", None) == split]
    if not records:
        raise InputError(dataset, f"no records in split {split!r}" if split else "no records")
    return records


def eval_retrieval(encoder, dataset: str | Path, split: str = "test", batch_size: int = 64, views: int = 1,
                   rerank=None) -> dict:
    """Image↔text retrieval on a Karpathy caption split with the RS protocol (every caption of an image counts);
    ``views`` > 1 averages each image over flips/rotations (see ``Encoder.encode_images``). ``rerank`` (a
    :class:`~terravl.tasks.rerank.Reranker`) re-orders each query's top candidates with a captioner: image→text
    recalls then come from its ranking of texts for each image, text→image recalls from its ranking of images for
    each text."""
    from terravl.tasks.rerank import check_reranker

    check_reranker(rerank)
    records = _split_records(dataset, split)
    records = [r for r in records if isinstance(r, CaptionRecord)]
    if not records:
        raise DatasetFormatError(dataset, "retrieval needs a caption dataset (Karpathy JSON)")
    missing = [r.filename for r in records if r.path is None]
    if missing:
        raise InputError(dataset, f"{len(missing)} images of split {split!r} not found on disk (e.g. {missing[0]}); "
                                  f"retrieval needs the images")
    image_emb = encoder.encode_images([r.path for r in records], batch_size=batch_size, views=views)
    captions = [c for r in records for c in r.captions]
    caption_image = np.repeat(np.arange(len(records)), [len(r.captions) for r in records])
    text_emb = encoder.encode_texts(captions)
    similarity = image_emb @ text_emb.T
    extra = {}
    if rerank is None:
        metrics = retrieval_metrics(similarity, caption_image)
    else:
        features = rerank.image_features([r.path for r in records], batch_size)
        by_image, by_text = rerank.rerank_matrix(similarity, features, captions, progress=None)
        metrics = retrieval_metrics(by_image, caption_image, by_text=by_text)
        extra = {"rerank": rerank.settings(), "without_rerank": retrieval_metrics(similarity, caption_image)}
    return {"task": "retrieval", "model": encoder.name, "dataset": str(dataset), "split": split,
            "images": len(records), "captions": len(captions), "views": views, "scores": metrics, **extra}


def eval_zeroshot(encoder, dataset: str | Path, split: str | None = "test", templates=RS_TEMPLATES,
                  batch_size: int = 64, views: int = 1) -> dict:
    """Zero-shot top-1 with a prompt ensemble on class folders or on a caption JSON with a ``class`` field.

    For class folders without split lists every image is used (``split=None``)."""
    ds, records = _zeroshot_records(dataset, split)
    classes = sorted({label for _, label in records})
    index = {c: i for i, c in enumerate(classes)}
    weights = class_embeddings(encoder, classes, templates)
    image_emb = encoder.encode_images([p for p, _ in records], batch_size=batch_size, views=views)
    pred = np.argmax(image_emb @ weights.T, axis=1)
    true = np.array([index[label] for _, label in records])
    metrics = classification_metrics(true, pred, classes)
    return {"task": "zeroshot", "model": encoder.name, "dataset": str(dataset), "split": split,
            "templates": list(templates), "views": views, **metrics}


def _zeroshot_records(dataset, split):
    """(path, label) pairs. Class folders without split lists have no split: then every image is used."""
    ds = open_dataset(dataset)
    labelled = [r for r in ds if isinstance(r, ImageRecord) or (isinstance(r, CaptionRecord) and r.label and r.path)]
    if split is not None and any(r.split == split for r in labelled):
        labelled = [r for r in labelled if r.split == split]
    elif split is not None and any(r.split for r in labelled if isinstance(r, CaptionRecord)):
        labelled = []
    if not labelled:
        raise InputError(dataset, "no labelled images found (class folders, or caption JSON with 'class' and images)"
                         + (f" in split {split!r}" if split else ""))
    return ds, [(r.path, r.label) for r in labelled]


def eval_vqa(dataset: str | Path, predictions: str | Path, split: str = "test") -> dict:
    """Accuracy per question type from a predictions file ``[{"question_id", "answer"}]`` on RSVQA or on the
    questions derived from a caption dataset (see :func:`vqa_questions`)."""
    records, _ = vqa_questions(dataset, split)
    preds = load_predictions(predictions, "question_id", "answer")
    items, missing = [], 0
    for r in records:
        answer = preds.get(r.question_id, preds.get(str(r.question_id)))
        if answer is None:
            missing += 1
            answer = ""
        items.append((r.question_type, r.answer, answer))
    result = vqa_accuracy(items)
    return {"task": "vqa", "dataset": str(dataset), "split": split, "missing_predictions": missing, "scores": result}


def eval_change(dataset: str | Path, predictions: str | Path, split: str = "test", meteor: bool = True) -> dict:
    """Change-captioning scores on LEVIR-CC: all pairs, changed pairs and unchanged pairs.

    Predictions use the pair's file stem (``test_000123``) or its ``imgid`` as ``image_id``."""
    records = [r for r in LevirCC(dataset) if r.split == split]
    if not records:
        raise InputError(dataset, f"no pairs in split {split!r}")
    preds = {str(k): v for k, v in load_predictions(predictions).items()}
    refs = {r.name: list(r.captions) for r in records}
    missing = [n for n in refs if n not in preds]
    if missing:
        raise InputError(predictions, f"{len(missing)} of {len(refs)} pairs have no caption (e.g. {missing[0]})")
    out = OrderedDict(task="change", dataset=str(dataset), split=split, pairs=len(refs))
    groups = {"all": records, "changed": [r for r in records if r.changed],
              "unchanged": [r for r in records if not r.changed]}
    out["scores"] = {}
    for name, group in groups.items():
        if group:
            sub = {r.name: refs[r.name] for r in group}
            out["scores"][name] = score_captions(sub, {k: preds[k] for k in sub}, with_meteor=meteor)
    return dict(out)
