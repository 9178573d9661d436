"""The shipped default model: it loads offline, its weights match the checksum in the model card, and it matches
real test images to their own captions. The images were chosen by a fixed rule before any result was seen: the
first test-split image (in file order) of five visually distinct classes. For v2 (issue 19) five UC Merced images
were added by the same rule before v2 was trained: the first val-split image (the split UCM retrieval papers test
on; never trained on) of airplane, beach, golfcourse, harbor and tenniscourt, each against the five images' first
captions; v1 (`terravl-default-v1`) is held to the AID five it was registered with. v3 (the EfficientNet-Lite0
default) is held to the same ten, fixed before it was trained; v2 stays held to them under its own name."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import terravl.models as m
from terravl import config

CLASSES = ["Airport", "Beach", "Forest", "Port", "Stadium"]
UCM_CLASSES = ["airplane", "beach", "golfcourse", "harbor", "tenniscourt"]


def test_shipped_weights_load_and_match_the_model_card():
    folder = config.packaged_models_dir() / "terravl-default"
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 20 * 1024 * 1024  # the int8 caption memory keeps it under the 20 MiB flag
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = (Path(__file__).resolve().parents[1] / "MODEL_CARD.md").read_text()
    assert digest in card, "MODEL_CARD.md must state the sha256 of the shipped weights"
    training = json.loads((folder / "training.json").read_text())
    # v2 trains on the train splits of rsicd_aid (8,973 images) and ucm_captions (1,680), validation part included
    assert training["data"]["train_images"] + training["data"]["validation_images"] == 8973 + 1680
    encoder = m.load("terravl-default")
    assert encoder.embed_dim == json.loads((folder / "terravl_config.json").read_text())["embed_dim"]


def test_v2_stays_loadable_by_name_with_the_weights_the_heads_were_trained_on():
    folder = config.packaged_models_dir() / "terravl-default-v2"
    training = json.loads((folder / "training.json").read_text())
    assert training["data"]["train_images"] + training["data"]["validation_images"] == 8973 + 1680
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert digest == "3422963444e5e2b04124f95aa0feec5c551863611394fe8367f53e744e994513"  # v2's, as its card says
    assert m.load("terravl-default-v2").embed_dim == 384


def test_v1_stays_loadable_by_name():
    folder = config.packaged_models_dir() / "terravl-default-v1"
    training = json.loads((folder / "training.json").read_text())
    assert training["data"]["train_images"] + training["data"]["validation_images"] == 8973
    assert m.load("terravl-default-v1").embed_dim == 384


def _similarities(shared_data, model: str, dataset: str, split: str, classes: list[str]) -> np.ndarray:
    data = json.loads((shared_data / dataset).read_text())
    held_out = [i for i in data["images"] if i["split"] == split]
    chosen = [next(i for i in held_out if i["class"] == c) for c in classes]
    encoder = m.load(model)
    images = encoder.encode_images([shared_data / i["filepath"] / i["filename"] for i in chosen])
    captions = encoder.encode_texts([i["sentences"][0]["raw"] for i in chosen])
    return images @ captions.T


CASES = {"aid": ("rsicd_aid/dataset_rsicd_aid.json", "test", CLASSES),
         "ucm": ("ucm_captions/dataset_ucm_captions.json", "val", UCM_CLASSES)}


@pytest.fixture(scope="module")
def similarities(shared_data):
    return {(model, name): _similarities(shared_data, model, *case) for name, case in CASES.items()
            for model in ("terravl-default", "terravl-default-v2", "terravl-default-v1")
            if model != "terravl-default-v1" or name == "aid"}


@pytest.mark.parametrize("model, name, index",
                         [(model, name, i) for model in ("terravl-default", "terravl-default-v2")
                          for name in ("aid", "ucm") for i in range(5)]
                         + [("terravl-default-v1", "aid", i) for i in range(5)],
                         ids=[f"{v}-{c}" for v in ("v3", "v2") for c in CLASSES + UCM_CLASSES]
                         + [f"v1-{c}" for c in CLASSES])
def test_default_model_ranks_the_image_own_caption_first(similarities, model, name, index):
    """The images were fixed before any result was seen. The 30-epoch v1 shipped before missed the beach image
    (a strict xfail then); the 60-epoch v1 ranks all five AID images right (scores in MODEL_CARD.md)."""
    assert int(np.argmax(similarities[(model, name)][index])) == index
