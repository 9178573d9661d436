"""Vectors stay with the weights that made them: an index records a fingerprint of its encoder's weights and
refuses other weights under the same name; an index or knowledge base that recorded only ``terravl-default``
before v3 shipped is read with the version it was built with (``terravl-default-v2``)."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

import terravl.models as m
from fakedata import write_image
from terravl.errors import InputError
from terravl.index import IndexOpenError, IndexStore, build_index
from terravl.model_versions import SAME_VECTORS, SHIPPED_FINGERPRINTS, pinned_model, same_weights
from terravl.models.feature_cache import weights_fingerprint
from terravl.models.terravl_encoder import DEFAULT_CONFIG, TerraVLModel
from terravl.tasks import search


def test_pinned_model_names_the_version_that_holds_the_weights():
    assert pinned_model("terravl-default", None) == "terravl-default-v2"  # recorded before fingerprints were
    assert pinned_model("terravl-default", "") == "terravl-default"  # recorded, unknown: a store made now
    assert pinned_model("terravl-default", None, "2026-11-26T10:00:00Z") == "terravl-default-v1"  # before v2 shipped
    assert pinned_model("terravl-default", None, "2026-11-27T12:00:00Z") == "terravl-default-v2"
    v1 = next(k for k, v in SHIPPED_FINGERPRINTS.items() if v == "terravl-default-v1")
    assert pinned_model("terravl-default", v1) == "terravl-default-v1"
    assert pinned_model("terravl-default", "0123456789abcdef") == "terravl-default"
    assert pinned_model("remoteclip-vit-b-32", None) == "remoteclip-vit-b-32"


def test_the_recorded_fingerprints_are_those_of_the_shipped_earlier_versions():
    for fingerprint, name in SHIPPED_FINGERPRINTS.items():
        assert weights_fingerprint(m.load(name)) == fingerprint
    installed = weights_fingerprint(m.load("terravl-default"))
    assert installed not in SHIPPED_FINGERPRINTS
    assert set(SAME_VECTORS.values()) == {installed}  # v3 as first shipped stands in for the int8-memory v3


def test_vectors_of_v3_as_first_shipped_are_accepted_and_nothing_else_is(tmp_path):
    """An index built with v3 before its caption memory was stored as int8 opens with today's v3 (the vectors are
    within cosine 0.9993); any other recorded fingerprint under the same name is still refused."""
    installed = weights_fingerprint(m.load("terravl-default"))
    first_v3 = next(iter(SAME_VECTORS))
    assert all(same_weights(v3, installed) for v3 in SAME_VECTORS)  # float16 memory, int8 memory (no text side)
    assert same_weights(first_v3, installed) and same_weights(installed, installed)
    assert not same_weights(installed, first_v3) and not same_weights("0123456789abcdef", installed)
    IndexStore(tmp_path / "idx", create=True, model="terravl-default", dim=384, weights=first_v3).close()
    IndexStore(tmp_path / "idx", model="terravl-default", weights=installed).close()
    IndexStore(tmp_path / "other", create=True, model="terravl-default", dim=384, weights="0123456789abcdef").close()
    with pytest.raises(IndexOpenError, match="other weights"):
        IndexStore(tmp_path / "other", model="terravl-default", weights=installed)


def _tiny(folder, seed: int):
    torch.manual_seed(seed)
    config = {**DEFAULT_CONFIG, "embed_dim": 16,
              "image": {**DEFAULT_CONFIG["image"], "widths": [8, 16], "depths": [1, 1], "resolution": 32}}
    return TerraVLModel(config).save(folder)


def test_a_new_store_named_terravl_default_without_a_fingerprint_opens(tmp_path):
    """API users and the benchmarks create stores by name alone: that is not a store from before v3."""
    from terravl.kb.store import KBStore

    IndexStore(tmp_path / "idx", create=True, model="terravl-default", dim=384).close()
    assert IndexStore(tmp_path / "idx", model="terravl-default").model == "terravl-default"
    KBStore(tmp_path / "k.kb", create=True, model="terravl-default", dim=384).close()
    assert KBStore(tmp_path / "k.kb").model == "terravl-default"


def test_an_index_refuses_other_weights_under_the_same_name(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(3):
        write_image(archive / f"s{i}.png", 40, 40, seed=i)
    model = _tiny(tmp_path / "model", seed=0)
    built_with = m.load(model)
    build_index([archive], built_with, tmp_path / "idx")
    store = IndexStore(tmp_path / "idx")
    assert store.meta()["weights"] == weights_fingerprint(built_with)
    assert len(search(store, text="a beach", k=2, encoder=built_with)) == 2
    _tiny(tmp_path / "model", seed=1)  # retrained in place: same path, other weights
    retrained = m.load(model)
    with pytest.raises(InputError, match="other weights"):
        search(store, text="a beach", k=2, encoder=retrained)
    with pytest.raises(IndexOpenError, match="other weights"):  # adding to it with the new weights is refused too
        build_index([archive], retrained, tmp_path / "idx")
    store.close()


def test_an_index_recorded_as_terravl_default_before_v3_opens_with_v2(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    write_image(archive / "a.png", 40, 40, seed=0)
    v2 = m.load("terravl-default-v2")
    build_index([archive], v2, tmp_path / "idx")
    with sqlite3.connect(tmp_path / "idx" / "index.sqlite") as db:  # as an index built before fingerprints
        db.execute("UPDATE meta SET value = ? WHERE key = 'model'", (json.dumps("terravl-default"),))
        db.execute("DELETE FROM meta WHERE key = 'weights'")
    store = IndexStore(tmp_path / "idx")
    assert store.model == "terravl-default-v2"
    hits = search(store, text="a forest")  # loads terravl-default-v2 by itself
    assert len(hits) == 1 and hits[0].score == pytest.approx(float(v2.encode_texts(["a forest"])[0]
                                                                   @ v2.encode_images([archive / "a.png"])[0]),
                                                             abs=1e-5)
    with pytest.raises(InputError, match="terravl-default-v2"):
        search(store, text="a forest", encoder=m.load("terravl-default"))
    store.close()
    with pytest.raises(IndexOpenError, match="give --model terravl-default-v2"):
        build_index([archive], m.load("terravl-default"), tmp_path / "idx")


def test_the_shipped_heads_name_the_encoder_front_ends_share_with_them():
    """Front ends hand the router, grounder and object head one loaded encoder (HEADS_ENCODER): it must be the one
    each was trained on, or they would read embeddings of another space without any error."""
    from terravl.model_versions import HEADS_ENCODER
    from terravl.models.grounder import GrounderArch, load_grounder
    from terravl.models.object_head import load_object_head
    from terravl.router import load_router

    assert load_router().settings["encoder"] == HEADS_ENCODER
    assert load_object_head().encoder_name == HEADS_ENCODER
    assert load_grounder().arch.encoder == GrounderArch.encoder == HEADS_ENCODER


def test_chat_gives_the_embedding_change_baseline_the_encoder_it_was_calibrated_with():
    """Not the default the conversation classifies with (v3): the baseline's thresholds were set on v2."""
    from terravl.tasks.change_detect import EMBEDDING_MODEL
    from terravl.tasks.chat import ChatModels, ChatState, _change_options

    asked = []
    default, calibrated = object(), object()

    def encoders(name):
        asked.append(name)
        return calibrated

    models = ChatModels(encoder=default, encoders=encoders, change_method="embedding")
    options = _change_options(ChatState(images=("a.png", "b.png")), models)
    assert asked == [EMBEDDING_MODEL] == ["terravl-default-v2"]
    assert options["method"].encoder is calibrated and options["encoder"] is default
