"""Zero-shot scene classification with remote-sensing prompt ensembles, and its metrics."""

from __future__ import annotations

import numpy as np

from terravl.datasets.class_names import class_phrase

RS_TEMPLATES = (
    "a satellite photo of {}.",
    "an aerial image of {}.",
    "a remote sensing image of {}.",
    "an aerial photograph of {}.",
    "a satellite image of {}.",
    "a high resolution aerial image of {}.",
    "{} seen from above.",
    "an overhead view of {}.",
)
"""Prompt templates in the style of the RS CLIP papers (RemoteCLIP, GeoRSCLIP, SkyCLIP); the class embedding is
the normalised mean over templates."""


def class_embeddings(encoder, classes: list[str], templates: tuple[str, ...] = RS_TEMPLATES) -> np.ndarray:
    """(n_classes, D) L2-normalised prompt-ensemble embeddings."""
    prompts = [t.format(class_phrase(c)) for c in classes for t in templates]
    emb = encoder.encode_texts(prompts).reshape(len(classes), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(true: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """top-1 accuracy (%), per-class accuracy (%) and the confusion matrix (rows: true class, columns: predicted)."""
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    support = confusion.sum(axis=1)
    per_class = {c: (100.0 * confusion[i, i] / support[i]) if support[i] else None for i, c in enumerate(classes)}
    return {"top1": 100.0 * float(np.mean(true == pred)) if len(true) else 0.0, "per_class": per_class,
            "confusion": confusion.tolist(), "classes": classes, "n": int(len(true))}
