"""Which weights an index or a knowledge base was built with, when it recorded only the name ``terravl-default``.

The name ``terravl-default`` follows the shipped default (v3 since issue 19's second step); vectors made by an
earlier default are not comparable with v3's. A store records the name and, since v3, a fingerprint of the weights
(:func:`terravl.models.feature_cache.encoder_fingerprint`). :func:`pinned_model` turns what a store recorded into
the registry name that holds those weights, so a search of an index built with v2 loads ``terravl-default-v2``
instead of silently comparing v2 vectors with v3 queries."""

from __future__ import annotations

DEFAULT_NAME = "terravl-default"
SHIPPED_FINGERPRINTS = {"d79df781d809bf27": "terravl-default-v2", "4ba9892d54cd979a": "terravl-default-v1"}
"""Weights fingerprints of the earlier shipped defaults (``weights_fingerprint`` of each, loaded by name)."""
BEFORE_FINGERPRINTS = "terravl-default-v2"
"""What an index that recorded no fingerprint was built with: indexes started recording them with v3, and v2 was
the default before — since :data:`V2_SHIPPED`; one created earlier was built with v1."""
V2_SHIPPED = "2026-11-27T09:10:01Z"
"""When v2 became the default (the commit that shipped it); stores record ``created`` in this format."""
SAME_VECTORS = {"732a83366a39515d": "87fef9b6ef50ff19", "a2afcb9b4546896b": "87fef9b6ef50ff19"}
"""Recorded fingerprint → installed fingerprint whose vectors stand in for it. v3 as first shipped (float16 caption
memory, ``732a…``) → v3 with its memory stored as int8 rows (``a2af…``: image vectors within cosine 0.9993 of the
first's on both evaluation splits; text vectors identical) → v3 with the caption memory's text side (``87fe…``:
the same image vectors, bit for bit; new tensors, so a new fingerprint). Indexes built with any of them stay
usable; a knowledge base's text vectors are checked on their own (``text_side``, :mod:`terravl.kb.store`).
When a v4 ships, :data:`SHIPPED_FINGERPRINTS` must name all three v3 fingerprints ``terravl-default-v3``."""


def same_weights(built: str, installed: str) -> bool:
    """Whether vectors recorded with weights ``built`` may be compared with those of weights ``installed``."""
    return built == installed or SAME_VECTORS.get(built) == installed


def pinned_model(name: str, weights: str | None, created: str | None = None) -> str:
    """The registry name to load for vectors recorded as (``name``, ``weights`` fingerprint): ``terravl-default``
    with an earlier default's fingerprint, or with no fingerprint entry at all (``None``: a store from before they
    were recorded; ``created`` before :data:`V2_SHIPPED` means v1), becomes that version's own name; anything else
    stays (``""``, recorded but unknown, included)."""
    if name != DEFAULT_NAME:
        return name
    if weights is None:
        return "terravl-default-v1" if created and str(created) < V2_SHIPPED else BEFORE_FINGERPRINTS
    return SHIPPED_FINGERPRINTS.get(weights, name)

HEADS_ENCODER = "terravl-default-v2"
"""The dual encoder TerraVL's shipped heads read: the grounder and the change detector's ``backbone`` (its CNN
tower's feature maps), the object head (its image embedding) and the router (its text embedding) were trained on
v2. A front end that shares one loaded encoder among them passes this one, not the default (v3 embeds into another
space of the same 384 dimensions, so nothing would fail loudly). A test keeps it equal to each head's settings."""
