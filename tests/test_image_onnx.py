"""The ONNX Runtime image tower: the same embeddings as PyTorch's (with the caption memory applied after it), chosen
by default for fp32 on the CPU, exported once per weights, and a clear fallback when it cannot be used."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import terravl.models as m
from terravl.errors import InputError
from terravl.models import image_onnx
from terravl.models.image_onnx import OnnxImageTower
from terravl.models.terravl_encoder import LITE0_IMAGE, DEFAULT_CONFIG, TerraVLModel
from terravl.models.text_onnx import OnnxUnavailable


def _tiny(tmp_path, lite: bool = False, memory: bool = False):
    torch.manual_seed(1)
    config = {**DEFAULT_CONFIG, "embed_dim": 16,
              "image": {**LITE0_IMAGE, "resolution": 48} if lite else
              {**DEFAULT_CONFIG["image"], "widths": [8, 16], "depths": [1, 1], "resolution": 40}}
    model = TerraVLModel(config).eval()
    for module in model.modules():  # batch-norm statistics away from identity, as a trained model's are
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    if memory:
        keys = torch.nn.functional.normalize(torch.randn(12, 16), dim=-1)
        model.set_memory(keys, torch.nn.functional.normalize(torch.randn(12, 16), dim=-1), 4, 0.05, 0.5)
    return model.save(tmp_path / ("lite" if lite else "cnn"))


def _images(n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (60 + 7 * i, 50 + 3 * i, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("lite, memory", [(False, True), (True, False)], ids=["cnn+memory", "lite0"])
def test_onnx_images_match_pytorch_and_are_the_default_on_cpu(tmp_path, monkeypatch, lite, memory):
    folder = _tiny(tmp_path, lite, memory)
    fast = m.load(folder)
    got = fast.encode_images(_images())
    assert isinstance(fast._onnx_images(), OnnxImageTower)
    monkeypatch.setenv("TERRAVL_IMAGE_BACKEND", "torch")
    slow = m.load(folder)
    want = slow.encode_images(_images())
    assert slow._onnx_images() is None
    assert (got * want).sum(1).min() > 0.9999
    # the batch and one-by-one paths agree too (the graph's batch size is dynamic)
    assert np.allclose(fast.encode_images(_images()[:1]), got[:1], atol=1e-5)


def test_the_graph_is_exported_once_per_weights_and_reused(tmp_path, monkeypatch):
    onnx_dir = tmp_path / "graphs"
    monkeypatch.setenv("TERRAVL_ONNX_DIR", str(onnx_dir))
    folder = _tiny(tmp_path)
    m.load(folder).encode_images(_images(1))
    graphs = sorted(onnx_dir.glob("image-*.onnx"))
    assert len(graphs) == 1 and graphs[0].with_suffix(".json").is_file()
    stamp = graphs[0].stat().st_mtime_ns
    image_onnx._LOADED.clear()
    m.load(folder).encode_images(_images(1))
    assert graphs[0].stat().st_mtime_ns == stamp  # read again, not exported again
    model = TerraVLModel.load(folder)
    with torch.no_grad():
        model.image_tower.head.bias.add_(1.0)  # other weights → another graph
    model.save(tmp_path / "retrained")
    m.load(tmp_path / "retrained").encode_images(_images(1))
    assert len(sorted(onnx_dir.glob("image-*.onnx"))) == 2


def test_a_damaged_graph_falls_back_to_pytorch_with_one_warning_or_fails_when_onnx_is_asked_for(
        tmp_path, monkeypatch, caplog):
    onnx_dir = tmp_path / "graphs"
    monkeypatch.setenv("TERRAVL_ONNX_DIR", str(onnx_dir))
    folder = _tiny(tmp_path)
    model = TerraVLModel.load(folder)
    path = onnx_dir / image_onnx.graph_name(model.image_tower, 40)
    onnx_dir.mkdir()
    path.write_bytes(b"not a graph")
    path.with_suffix(".json").write_text("{}")
    image_onnx._LOADED.clear()
    with caplog.at_level(logging.WARNING):
        vectors = m.load(folder).encode_images(_images(2))
    assert vectors.shape == (2, 16) and "image tower on PyTorch" in caplog.text and "delete it" in caplog.text
    monkeypatch.setenv("TERRAVL_IMAGE_BACKEND", "onnx")
    with pytest.raises(OnnxUnavailable, match="delete it"):
        m.load(folder).encode_images(_images(1))
    monkeypatch.setenv("TERRAVL_IMAGE_BACKEND", "fast")
    with pytest.raises(InputError, match="TERRAVL_IMAGE_BACKEND: must be one of"):
        m.load(folder).encode_images(_images(1))
