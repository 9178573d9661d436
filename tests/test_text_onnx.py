"""The ONNX Runtime text tower: same embeddings as PyTorch's, chosen by default on the CPU, and a clear fallback when
it cannot be used."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

import terravl.models as m
from terravl.models import text_onnx
from terravl.models.text_onnx import OnnxSentenceEncoder, OnnxUnavailable, onnx_text_tower
from terravl.models.text_towers import SentenceEncoder, text_tower


def _captions(shared_data, n: int) -> list[str]:
    data = json.loads((shared_data / "rsicd_aid" / "dataset_rsicd_aid.json").read_text())
    return [s["raw"] for image in data["images"] if image["split"] == "test" for s in image["sentences"]][:n]


def test_default_encoder_uses_onnx_with_the_same_embeddings(shared_data, monkeypatch):
    captions = _captions(shared_data, 64) + ["an airport", "x", "storage tanks " * 60]  # 1 token, over 128 tokens
    fast = m.load("terravl-default")
    assert isinstance(fast.text_tower, OnnxSentenceEncoder)
    monkeypatch.setenv("TERRAVL_TEXT_BACKEND", "torch")
    slow = m.load("terravl-default")
    assert isinstance(slow.text_tower, SentenceEncoder)
    a, b = fast.encode_texts(captions, batch_size=16), slow.encode_texts(captions, batch_size=16)
    assert a.shape == b.shape == (len(captions), fast.embed_dim)
    assert (a * b).sum(1).min() >= 0.999
    # the scores a search ranks by are PyTorch's to a few thousandths, and the best caption is the same (an exact
    # rank-for-rank match cannot be asked of floats: captions whose scores differ by 1e-4 may swap)
    images = fast.encode_images([shared_data / "aid_150px" / "images" / "Airport" / "airport_1.jpg",
                                 shared_data / "aid_150px" / "images" / "Forest" / "forest_1.jpg"])
    assert np.abs(a @ images.T - b @ images.T).max() < 2e-3
    assert np.array_equal((a @ images.T).argmax(0), (b @ images.T).argmax(0))


def test_one_graph_per_model_kept_for_later_processes(onnx_graphs):
    first = onnx_text_tower()
    assert first is onnx_text_tower()  # one session per process
    graph = first.path
    assert graph.parent == onnx_graphs and graph.exists()
    parity = json.loads(graph.with_suffix(".json").read_text())
    assert parity["parity_cosine"] >= text_onnx.PARITY_MIN
    assert not list(onnx_graphs.glob(".export-*"))  # no half-written file left beside it


def test_backend_setting_is_validated(monkeypatch):
    monkeypatch.setenv("TERRAVL_TEXT_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="TERRAVL_TEXT_BACKEND must be one of auto, onnx, torch"):
        text_tower("cpu")
    monkeypatch.setenv("TERRAVL_TEXT_BACKEND", "torch")
    assert isinstance(text_tower("cpu"), SentenceEncoder)


def test_without_onnxruntime_auto_falls_back_and_onnx_says_why(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when it is not installed
    monkeypatch.setattr(text_onnx, "_LOADED", {})
    monkeypatch.setattr("terravl.models.text_onnx._FELL_BACK", set())
    with caplog.at_level(logging.WARNING):
        assert isinstance(text_tower("cpu"), SentenceEncoder)
    assert "onnxruntime is not installed" in caplog.text
    monkeypatch.setenv("TERRAVL_TEXT_BACKEND", "onnx")
    with pytest.raises(OnnxUnavailable, match="onnxruntime is not installed"):
        text_tower("cpu")


def test_a_damaged_graph_is_named_and_not_used(tmp_path, onnx_graphs, monkeypatch):
    good = onnx_text_tower().path
    folder = tmp_path / "graphs"
    folder.mkdir()
    (folder / good.name).write_bytes(good.read_bytes()[: 1000])  # truncated, as by a full disk
    (folder / good.with_suffix(".json").name).write_text(good.with_suffix(".json").read_text())
    monkeypatch.setenv("TERRAVL_ONNX_DIR", str(folder))
    with pytest.raises(OnnxUnavailable, match=f"could not load .*{good.name}.*delete it to export again"):
        onnx_text_tower()
    monkeypatch.setattr("terravl.models.text_onnx._FELL_BACK", set())
    assert isinstance(text_tower("cpu"), SentenceEncoder)  # auto: PyTorch, with the reason logged


def test_an_export_that_fails_parity_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(text_onnx, "PARITY_MIN", 1.5)  # no graph can pass: the check must refuse it
    with pytest.raises(OnnxUnavailable, match="differs from PyTorch's"):
        onnx_text_tower(folder=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_other_devices_keep_pytorch(monkeypatch):
    from terravl.models import text_towers

    moved = []

    class Tower:
        def to(self, device):
            moved.append(str(device))
            return self

    monkeypatch.setattr(text_towers, "shared_sentence_encoder", lambda: Tower())  # no GPU here: a stand-in
    assert isinstance(text_tower("cuda"), Tower) and moved == ["cuda"]
    assert isinstance(text_tower("cpu"), OnnxSentenceEncoder)


def test_the_tokenizer_without_transformers_gives_transformers_ids(shared_data):
    from transformers import AutoTokenizer

    from terravl.models.text_onnx import load_tokenizer
    from terravl.models.text_towers import minilm_path

    texts = _captions(shared_data, 500) + ["", "Ünïcödé façade — 東京 tower!!", "storage tanks " * 100, "x"]
    reference = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    expected = reference(texts, padding=True, truncation=True, max_length=128)
    got = load_tokenizer(minilm_path(), 128).encode_batch(texts)
    assert [e.ids for e in got] == expected["input_ids"]
    assert [e.attention_mask for e in got] == expected["attention_mask"]
    assert max(sum(e.attention_mask) for e in got) == 128  # the long text is cut at 128 tokens


def test_a_folder_without_a_fast_tokenizer_is_refused_with_the_reason(tmp_path):
    from terravl.models.text_onnx import load_tokenizer

    with pytest.raises(OnnxUnavailable, match="tokenizer.json not found"):
        load_tokenizer(tmp_path, 128)


def test_the_kept_graph_is_fused_into_bert_operators(onnx_graphs):
    import onnx

    tower = onnx_text_tower()
    assert json.loads(tower.path.with_suffix(".json").read_text())["fused"] is True
    ops = {node.op_type for node in onnx.load(str(tower.path)).graph.node}
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= ops


def test_a_fused_graph_that_fails_parity_gives_way_to_the_plain_one(tmp_path, monkeypatch):
    import onnx

    checked = []
    real = text_onnx.parity

    def parity(source, candidate):
        checked.append(candidate.path.name)
        return 0.5 if candidate.path.name.endswith("-fused.onnx") else real(source, candidate)

    monkeypatch.setattr(text_onnx, "parity", parity)
    tower = onnx_text_tower(folder=tmp_path)
    assert [name.endswith("-fused.onnx") for name in checked] == [True, False]
    info = json.loads(tower.path.with_suffix(".json").read_text())
    assert info["fused"] is False and info["parity_cosine"] >= text_onnx.PARITY_MIN
    assert "Attention" not in {node.op_type for node in onnx.load(str(tower.path)).graph.node}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([tower.path.name, tower.path.with_suffix(".json").name])
