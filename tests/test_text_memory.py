"""The caption memory's text side: a text embedding blended with the training images whose caption prototypes it
resembles. It picks the same images in PyTorch and in the numpy twin (ties included), it is settings only (no new
tensors: the weights' fingerprint and every image vector stay), it survives saving and int8 quantisation, and
training chooses it on validation only when it helps there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from terravl.models.feature_cache import weights_fingerprint
from terravl.models.light_text import TextMemory
from terravl.models.terravl_encoder import TerraVLModel, blend_text_with_memory

CONFIG = {"arch": "terravl-cnn", "embed_dim": 16,
          "image": {"widths": [8], "depths": [1], "resolution": 32, "dropout": 0.0, "mean": [0.5] * 3,
                    "std": [0.25] * 3},
          "text": {"tower": "all-MiniLM-L6-v2", "features": 384, "projection": "linear"}}


def _unit(rows: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_ties_go_to_the_lowest_rows_and_numpy_picks_the_same_images():
    keys = _unit(6, seed=1)
    shared, other = _unit(2, seed=2)
    values = torch.stack([other, shared, other, shared, shared, other])  # rows 1, 3, 4 share one prototype
    unique, inverse = torch.unique(values, dim=0, return_inverse=True)
    text = shared[None].clone()
    got = blend_text_with_memory(text, keys, unique, inverse, k=2, tau=0.05, beta=0.6)
    # the two exact ties that come first (rows 1 and 3), equal weights
    want = 0.6 * text + 0.4 * F.normalize((keys[1] + keys[3])[None] / 2, dim=-1)
    assert torch.allclose(got, want, atol=1e-6)
    twin = TextMemory(keys.numpy(), unique.numpy(), inverse.numpy(), k=2, tau=0.05, beta=0.6)
    assert np.abs(twin.blend(text.numpy()) - got.numpy()).max() < 1e-6
    # beta = 1 leaves the text alone; k larger than the memory takes all of it
    assert torch.allclose(blend_text_with_memory(text, keys, unique, inverse, 5, 0.05, 1.0), text)
    assert blend_text_with_memory(text, keys, unique, inverse, 99, 0.05, 0.5).shape == (1, 16)
    many = _unit(7, seed=3)
    assert np.abs(TextMemory(keys.numpy(), unique.numpy(), inverse.numpy(), 3, 0.1, 0.7).blend(many.numpy())
                  - blend_text_with_memory(many, keys, unique, inverse, 3, 0.1, 0.7).numpy()).max() < 1e-6


def test_it_changes_texts_only_keeps_the_fingerprint_and_survives_save_and_int8(tmp_path):
    torch.manual_seed(0)
    model = TerraVLModel(CONFIG).eval()
    with pytest.raises(ValueError, match="caption memory attached first"):
        model.set_text_memory(5, 0.05, 0.8)
    keys, values = _unit(40, seed=4), _unit(40, seed=5)
    values[20:] = values[:20]  # shared prototypes, as templated captions give
    model.set_memory(keys, values, k=5, tau=0.05, alpha=0.75)
    features, pixels = torch.randn(4, 384), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        text_before = model.apply_text_memory(model.encode_text_features(features))
        images_before, fingerprint = model.encode_image(pixels), weights_fingerprint(_Holder(model))
        for bad in ((0, 0.05, 0.8), (5, 0.0, 0.8), (5, 0.05, 1.5)):
            with pytest.raises(ValueError, match="text memory"):
                model.set_text_memory(*bad)
        model.set_text_memory(5, 0.05, 0.8)
        text_after = model.apply_text_memory(model.encode_text_features(features))
        assert not torch.allclose(text_before, text_after)  # texts move towards the images
        assert torch.equal(model.encode_image(pixels), images_before)  # images do not
        assert weights_fingerprint(_Holder(model)) == fingerprint  # settings only: stores stay comparable
        model.quantize_memory()
        assert model.config["memory"]["text"] == {"k": 5, "tau": 0.05, "beta": 0.8}
        model.save(tmp_path / "m")
        again = TerraVLModel.load(tmp_path / "m").eval()
        assert again.config["memory"]["text"] == {"k": 5, "tau": 0.05, "beta": 0.8}
        assert torch.allclose(again.apply_text_memory(again.encode_text_features(features)),
                              model.apply_text_memory(model.encode_text_features(features)), atol=1e-6)
        twin = TextMemory.read(tmp_path / "m" / "model.safetensors", again.config["memory"]["text"])
        keys_q, unique_q, inverse_q = again._text_memory_rows()
        assert len(twin.unique) == len(unique_q) == 20 and np.array_equal(twin.keys, keys_q.numpy())
        projected = F.normalize(again.encode_text_features(features), dim=-1)
        assert np.abs(twin.blend(projected.numpy()) - again.apply_text_memory(projected).numpy()).max() < 1e-6


class _Holder:
    """What :func:`weights_fingerprint` reads: an object with a ``model``."""

    def __init__(self, model):
        self.model = model


def test_training_chooses_it_on_validation_only_when_it_helps():
    from terravl.train.clip import choose_text_memory

    # two modalities that see 10 scene kinds through different directions (a modality gap)
    gen = torch.Generator().manual_seed(6)
    kinds_image, kinds_text = _unit(10, seed=7), _unit(10, seed=8)
    train_kind = torch.arange(60) % 10
    keys = F.normalize(kinds_image[train_kind] + 0.3 * torch.randn(60, 16, generator=gen), dim=-1)
    values = F.normalize(kinds_text[train_kind] + 0.3 * torch.randn(60, 16, generator=gen), dim=-1)
    val_kind = torch.arange(20) % 10
    images = F.normalize(kinds_image[val_kind] + 0.3 * torch.randn(20, 16, generator=gen), dim=-1)
    texts = F.normalize(kinds_text[val_kind] + 0.3 * torch.randn(20, 16, generator=gen), dim=-1)
    owner = np.arange(20)
    model = TerraVLModel(CONFIG).eval()
    model.set_memory(keys, values, k=5, tau=0.05, alpha=0.75)
    logs = []
    assert choose_text_memory(model, images, texts, owner, baseline_mR=101.0, log=logs.append) is None
    assert "text" not in model.config["memory"] and "without" in logs[-1]
    from terravl.eval.retrieval import retrieval_metrics

    baseline = retrieval_metrics((images @ texts.T).numpy(), owner)["mR"]
    choice = choose_text_memory(model, images, texts, owner, baseline_mR=baseline, log=logs.append)
    assert choice is not None and choice["mR"] > baseline
    assert model.config["memory"]["text"] == {k: choice[k] for k in ("k", "tau", "beta")}
