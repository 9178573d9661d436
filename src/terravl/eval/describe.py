"""``terravl eval describe``: the composed description (:func:`terravl.tasks.describe.describe`) against the single
captioner on a held-apart caption split.

Two measurements, on the same images:

* coco-caption scores (BLEU-1..4, METEOR, ROUGE-L, CIDEr) of the description and of the plain caption against the
  five reference captions. The references are one short sentence each, so a 2–4 sentence description is expected
  to score lower on these n-gram metrics (BLEU's brevity penalty does not punish length, but precision does, and
  CIDEr's tf-idf vectors of a longer text are further from a short one's);
* **object recall**: per reference caption, the share of the object words it names (the object head's vocabulary,
  :func:`terravl.models.object_head.object_mentions`: plurals and synonyms merged) that the text mentions; averaged
  over the references of an image that name any object, then over the images. **Object precision** beside it:
  the share of the objects the text names that at least one reference names, averaged over images whose text
  names any — mentioning everything would raise recall and lower this.

Where the split has multi-labels (UCM) the object head's mean average precision on them is reported too, and its
mAP on the caption nouns of the references.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from terravl.datasets import KarpathyCaptions
from terravl.errors import InputError
from terravl.eval.captions import score_captions


def object_recall(references: list[list[str]], texts: list[str], vocabulary: dict) -> float | None:
    """Mean over images of the mean over their references (those naming an object) of the share of the
    reference's objects that the text mentions; None when no reference names an object."""
    from terravl.models.object_head import object_mentions

    per_image = []
    for refs, text in zip(references, texts):
        said = object_mentions(text, vocabulary)
        shares = [len(wanted & said) / len(wanted) for wanted in (object_mentions(r, vocabulary) for r in refs)
                  if wanted]
        if shares:
            per_image.append(float(np.mean(shares)))
    return round(100 * float(np.mean(per_image)), 2) if per_image else None


def object_precision(references: list[list[str]], texts: list[str], vocabulary: dict) -> float | None:
    """Mean over images whose text names an object of the share of those objects some reference names."""
    from terravl.models.object_head import object_mentions

    per_image = []
    for refs, text in zip(references, texts):
        said = object_mentions(text, vocabulary)
        if said:
            named = set().union(*(object_mentions(r, vocabulary) for r in refs))
            per_image.append(len(said & named) / len(said))
    return round(100 * float(np.mean(per_image)), 2) if per_image else None


def _head_scores(experts, records, vectors: np.ndarray) -> dict:
    """The object head's macro mAP on the split's multi-labels (where it has them) and on its captions' nouns."""
    from terravl.models.object_head import object_mentions
    from terravl.train.object_head import average_precision

    head = experts.objects
    scores = head.scores(vectors)
    nouns = [object_mentions(" . ".join(r.captions), head.vocabulary) for r in records]
    tag_aps, noun_aps = [], []
    for j, lab in enumerate(head.labels):
        kind, name = lab.name.split(":", 1)
        if kind == "tag":
            if not any(r.tags for r in records):
                continue
            y = np.array([name in r.tags for r in records], np.float32)
        else:
            y = np.array([lab.canonical in n for n in nouns], np.float32)
        if y.sum():
            (tag_aps if kind == "tag" else noun_aps).append(average_precision(scores[:, j], y))
    out = {}
    if tag_aps:
        out["tag_map"] = round(100 * float(np.mean(tag_aps)), 2)
        out["tag_labels"] = len(tag_aps)
    if noun_aps:
        out["noun_map"] = round(100 * float(np.mean(noun_aps)), 2)
        out["noun_labels"] = len(noun_aps)
    return out


def eval_describe(dataset: str | Path, experts=None, split: str = "test", limit: int | None = None,
                  meteor: bool = True, implementation: str = "fast", progress: bool | None = None) -> dict:
    """Describe every image of a held-apart split (``val`` or ``test``) and score the descriptions and the plain
    captions (the description's own first sentence: the same captioner, same decoding) side by side.
    ``experts``: an :class:`~terravl.tasks.describe.Experts`, or a function returning one (called once the
    dataset has been read, so a bad dataset is refused before any model loads); default: the shipped models."""
    from terravl.results import Problem
    from terravl.tasks.describe import Experts, describe

    if split == "train":
        raise InputError("split", "the object head was trained on the train splits: measure on a held-apart split "
                                  "(ucm_captions val, rsicd_aid test)")
    records = list(KarpathyCaptions(dataset, split=split).records)[:limit]
    if not records:
        raise InputError(dataset, f"no images in split {split!r}")
    missing = [r.filename for r in records if r.path is None]
    if missing:
        raise InputError(dataset, f"{len(missing)} images of split {split!r} not found on disk (e.g. {missing[0]}); "
                                  "describing needs the images")
    experts = experts() if callable(experts) else experts or Experts()
    answers = describe([r.path for r in records], experts=experts, progress=progress)
    done = [(r, a) for r, a in zip(records, answers) if not isinstance(a, Problem)]
    if not done:
        raise InputError(dataset, f"no image of split {split!r} could be described ({answers[0].error})")
    refs = {r.image_id: list(r.captions) for r, _ in done}
    captions = {r.image_id: a.caption for r, a in done}
    descriptions = {r.image_id: a.description for r, a in done}
    vocab = experts.objects.vocabulary
    ref_lists = list(refs.values())
    result = {"task": "describe", "dataset": str(dataset), "split": split, "images": len(done),
              "problems": [p.to_dict() for p in answers.problems],
              "models": {"encoder": getattr(experts.encoder, "name", str(experts.encoder)),
                         "captioner": getattr(experts.captioner, "name", str(experts.captioner)),
                         "objects": experts.objects.name}}
    result["scores"] = {
        "caption": score_captions(refs, captions, with_meteor=meteor, implementation=implementation),
        "description": score_captions(refs, descriptions, with_meteor=meteor, implementation=implementation)}
    result["object_recall"] = {"caption": object_recall(ref_lists, list(captions.values()), vocab),
                               "description": object_recall(ref_lists, list(descriptions.values()), vocab)}
    result["object_precision"] = {"caption": object_precision(ref_lists, list(captions.values()), vocab),
                                  "description": object_precision(ref_lists, list(descriptions.values()), vocab)}
    result["words"] = {"caption": round(float(np.mean([len(c.split()) for c in captions.values()])), 2),
                       "description": round(float(np.mean([len(d.split()) for d in descriptions.values()])), 2),
                       "references": round(float(np.mean([len(c.split()) for v in ref_lists for c in v])), 2)}
    vectors = experts.encoder.encode_images([r.path for r, _ in done], batch_size=64)
    result["object_head"] = _head_scores(experts, [r for r, _ in done], vectors)
    result["predictions"] = [{"image_id": r.image_id, "caption": a.caption, "description": a.description}
                             for r, a in done]
    return result
