"""The caption memory's text side: a text embedding blended with the image centroids of the caption clusters it
resembles. PyTorch and the numpy twin agree, image vectors do not move, it survives saving and int8 quantisation,
and training chooses it on validation only when it helps there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from terravl.models.light_text import TextMemory
from terravl.models.terravl_encoder import TerraVLModel, blend_text_with_memory, text_memory_clusters

CONFIG = {"arch": "terravl-cnn", "embed_dim": 16,
          "image": {"widths": [8], "depths": [1], "resolution": 32, "dropout": 0.0, "mean": [0.5] * 3,
                    "std": [0.25] * 3},
          "text": {"tower": "all-MiniLM-L6-v2", "features": 384, "projection": "linear"}}


def _unit(rows: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_the_blend_and_its_numpy_twin():
    keys, values = _unit(6, seed=1), _unit(6, seed=2)
    text = F.normalize(values[4:5] + 0.01 * _unit(1, seed=3), dim=-1)  # nearest cluster: row 4
    got = blend_text_with_memory(text, keys, values, k=1, tau=0.05, beta=0.6)
    assert torch.allclose(got, 0.6 * text + 0.4 * keys[4:5], atol=1e-6)
    many = _unit(7, seed=4)
    for k, tau, beta in ((3, 0.1, 0.7), (6, 0.02, 0.5), (99, 0.05, 0.8)):  # k above the cluster count: all of them
        want = blend_text_with_memory(many, keys, values, k, tau, beta).numpy()
        twin = TextMemory(keys.numpy(), values.numpy(), {"k": k, "tau": tau, "beta": beta})
        assert np.abs(twin.blend(many.numpy()) - want).max() < 1e-6
    big = _unit(40, seed=5)  # more than a query's few texts: the BLAS product, same numbers
    assert np.abs(TextMemory(keys.numpy(), values.numpy(), {"k": 3, "tau": 0.1, "beta": 0.7}).blend(big.numpy())
                  - blend_text_with_memory(big, keys, values, 3, 0.1, 0.7).numpy()).max() < 1e-6
    assert torch.allclose(blend_text_with_memory(text, keys, values, 3, 0.05, 1.0), text)  # beta 1: unchanged


def test_clusters_pair_each_caption_centroid_with_its_images():
    # 4 well-separated caption groups; each group's images point one way
    groups = _unit(4, seed=6)
    member = torch.arange(40) % 4
    values = F.normalize(groups[member] + 0.01 * _unit(40, seed=7), dim=-1)
    image_dirs = _unit(4, seed=8)
    keys = F.normalize(image_dirs[member] + 0.01 * _unit(40, seed=9), dim=-1)
    centroid_keys, centroid_values = text_memory_clusters(keys, values, 4)
    assert centroid_keys.shape == centroid_values.shape == (4, 16)
    match = (centroid_values @ groups.T).argmax(1)  # which caption group each cluster is
    assert sorted(match.tolist()) == [0, 1, 2, 3]
    assert ((centroid_keys * image_dirs[match]).sum(1) > 0.99).all()  # ...and its images' direction
    assert text_memory_clusters(keys, values, 100)[0].shape == (40, 16)  # never more clusters than prototypes
    with pytest.raises(ValueError, match="at least 1"):
        text_memory_clusters(keys, values, 0)


def test_it_changes_texts_only_and_survives_save_and_int8(tmp_path):
    torch.manual_seed(0)
    model = TerraVLModel(CONFIG).eval()
    centroid_keys, centroid_values = _unit(8, seed=10), _unit(8, seed=11)
    with pytest.raises(ValueError, match="caption memory attached first"):
        model.set_text_memory(centroid_keys, centroid_values, 3, 0.05, 0.8)
    model.set_memory(_unit(40, seed=4), _unit(40, seed=5), k=5, tau=0.05, alpha=0.75)
    features, pixels = torch.randn(4, 384), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        text_before = model.apply_text_memory(model.encode_text_features(features))
        images_before = model.encode_image(pixels)
        for bad in ((0, 0.05, 0.8), (3, 0.0, 0.8), (3, 0.05, 1.5)):
            with pytest.raises(ValueError, match="text memory"):
                model.set_text_memory(centroid_keys, centroid_values, *bad)
        with pytest.raises(ValueError, match="both be"):
            model.set_text_memory(centroid_keys, centroid_values[:5], 3, 0.05, 0.8)
        model.set_text_memory(centroid_keys, centroid_values, 3, 0.05, 0.8)
        assert model.config["memory"]["text"] == {"clusters": 8, "k": 3, "tau": 0.05, "beta": 0.8}
        text_after = model.apply_text_memory(model.encode_text_features(features))
        assert not torch.allclose(text_before, text_after)  # texts move towards the images
        assert torch.equal(model.encode_image(pixels), images_before)  # images do not
        model.quantize_memory()  # the image side to int8: the text side stays
        assert model.config["memory"]["text"]["clusters"] == 8 and model.memory_text_keys.dtype == torch.int8
        assert torch.allclose(model.apply_text_memory(model.encode_text_features(features)), text_after, atol=1e-6)
        model.config["storage"] = "float16"
        model.save(tmp_path / "m")
        again = TerraVLModel.load(tmp_path / "m").eval()
        assert again.memory_text_keys_scale.dtype == torch.float32  # scales stay exact in a float16 file
        projected = F.normalize(again.encode_text_features(features), dim=-1)
        twin = TextMemory.read(tmp_path / "m" / "model.safetensors", again.config["memory"]["text"])
        assert np.abs(twin.blend(projected.numpy()) - again.apply_text_memory(projected).numpy()).max() < 1e-6
        model.set_memory(_unit(40, seed=6), _unit(40, seed=7), k=5, tau=0.05, alpha=0.75)  # a new memory
        assert "text" not in model.config["memory"] and "memory_text_keys" not in model.state_dict()


def test_training_chooses_it_on_validation_only_when_it_helps():
    from terravl.eval.retrieval import retrieval_metrics
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
    # texts that already find their images perfectly (mR 100): nothing can beat that, nothing is attached
    assert choose_text_memory(model, images, images, owner, clusters=10, log=logs.append) is None
    assert "text" not in model.config["memory"] and "without" in logs[-1]
    baseline = retrieval_metrics((images @ texts.T).numpy(), owner)["mR"]
    choice = choose_text_memory(model, images, texts, owner, clusters=10, log=logs.append)
    assert choice is not None and choice["mR"] > baseline and choice["clusters"] == 10
    assert choice["validation_mR_without"] == baseline
    assert model.config["memory"]["text"] == {"clusters": 10, **{k: choice[k] for k in ("k", "tau", "beta")}}


def test_the_text_side_leaves_image_vectors_unchanged_bit_for_bit(shared_data):
    """Why indexes built before the text side stay valid: the shipped model without its text side gives the same
    image vectors, and other text vectors."""
    import copy

    import terravl.models as models

    shipped = models.load("terravl-default")
    without = models.load("terravl-default")
    without.model.config = copy.deepcopy(shipped.model.config)
    del without.model.config["memory"]["text"]
    images = sorted((shared_data / "aid_150px" / "images" / "Port").iterdir())[:4]
    assert np.array_equal(shipped.encode_images(images), without.encode_images(images))
    assert not np.allclose(shipped.encode_texts(["many boats in a port"]), without.encode_texts(["many boats in a port"]))
