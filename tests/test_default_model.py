"""The shipped default model: it loads offline, its weights match the checksum in the model card, and it matches
real test images to their own captions. The images were chosen by a fixed rule before any result was seen: the
first test-split image (in file order) of five visually distinct classes."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import terravl.models as m
from terravl import config

CLASSES = ["Airport", "Beach", "Forest", "Port", "Stadium"]


def test_shipped_weights_load_and_match_the_model_card():
    folder = config.packaged_models_dir() / "terravl-default"
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 25 * 1024 * 1024
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = (Path(__file__).resolve().parents[1] / "MODEL_CARD.md").read_text()
    assert digest in card, "MODEL_CARD.md must state the sha256 of the shipped weights"
    training = json.loads((folder / "training.json").read_text())
    assert training["data"]["train_images"] + training["data"]["validation_images"] == 8973
    encoder = m.load("terravl-default")
    assert encoder.embed_dim == json.loads((folder / "terravl_config.json").read_text())["embed_dim"]


@pytest.fixture(scope="module")
def similarities(shared_data):
    data = json.loads((shared_data / "rsicd_aid" / "dataset_rsicd_aid.json").read_text())
    test = [i for i in data["images"] if i["split"] == "test"]
    chosen = [next(i for i in test if i["class"] == c) for c in CLASSES]
    encoder = m.load("terravl-default")
    images = encoder.encode_images([shared_data / i["filepath"] / i["filename"] for i in chosen])
    captions = encoder.encode_texts([i["sentences"][0]["raw"] for i in chosen])
    return images @ captions.T


@pytest.mark.parametrize("index", range(len(CLASSES)), ids=CLASSES)
def test_default_model_ranks_the_image_own_caption_first(similarities, index):
    """The images were fixed before any result was seen. The 30-epoch model shipped before missed the beach image
    (a strict xfail then); the 60-epoch model ranks all five right (scores in MODEL_CARD.md)."""
    assert int(np.argmax(similarities[index])) == index
