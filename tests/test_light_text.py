"""The PyTorch-free text query path: a TerraVL model's text side on ONNX Runtime and numpy gives the full model's
embeddings and fingerprint, `terravl search` uses it without importing PyTorch, and anything missing sends the
caller back to the full model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import terravl.models as m
from fakedata import write_image
from terravl.models.feature_cache import encoder_fingerprint
from terravl.models.light_text import open_text_encoder, recorded_fingerprint

TEXTS = ["a harbour with many boats", "x", "dense residential area with green trees " * 30, "Airport"]


@pytest.fixture()
def full():
    """The full model, loaded in the test's environment: loading records its fingerprint beside the ONNX graphs,
    and its first text exports the MiniLM graph (once per run)."""
    encoder = m.load("terravl-default")
    encoder.encode_texts(["an airport"])
    return encoder


def test_same_embeddings_and_fingerprint_as_the_full_model(full):
    light = open_text_encoder("terravl-default")
    assert light is not None and light.source == full.source and light.embed_dim == full.embed_dim
    got, want = light.encode_texts(TEXTS, batch_size=3), full.encode_texts(TEXTS)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    assert encoder_fingerprint(light) == encoder_fingerprint(full)
    assert light.encode_texts([]).shape == (0, full.embed_dim)


def test_a_model_with_an_mlp_projection_and_a_model_folder(tmp_path, full):
    from terravl.models.terravl_encoder import TerraVLModel

    config = json.loads(json.dumps(full.model.config))
    config["text"] = {**config["text"], "projection": "mlp", "hidden": 64}
    config.pop("memory", None)
    folder = TerraVLModel(config).save(tmp_path / "mlp-model")
    assert open_text_encoder(str(folder)) is None  # never loaded here: no fingerprint recorded yet
    loaded = m.load(str(folder))
    light = open_text_encoder(str(folder))
    assert light is not None and light.source == loaded.source
    assert np.abs(light.encode_texts(TEXTS) - loaded.encode_texts(TEXTS)).max() < 1e-5
    assert encoder_fingerprint(light) == encoder_fingerprint(loaded)
    os.utime(folder / "model.safetensors", ns=(1, 1))  # weights replaced (new mtime): not trusted any more
    assert recorded_fingerprint(folder / "model.safetensors") is None and open_text_encoder(str(folder)) is None


def test_what_cannot_serve_returns_none(monkeypatch, tmp_path, tiny_model, full):
    assert open_text_encoder(str(tiny_model)) is None  # an OpenCLIP checkpoint: the full loader's
    assert open_text_encoder("remoteclip-vit-b-32") is None  # another family
    assert open_text_encoder("no-such-model") is None  # the full loader names the problem
    monkeypatch.setenv("TERRAVL_TEXT_BACKEND", "torch")
    assert open_text_encoder("terravl-default") is None
    monkeypatch.setenv("TERRAVL_TEXT_BACKEND", "auto")
    monkeypatch.setenv("TERRAVL_LIGHT_TEXT", "0")
    assert open_text_encoder("terravl-default") is None
    monkeypatch.delenv("TERRAVL_LIGHT_TEXT")
    assert open_text_encoder("terravl-default") is not None
    monkeypatch.setenv("TERRAVL_ONNX_DIR", str(tmp_path / "empty"))  # no graph, no fingerprints
    assert open_text_encoder("terravl-default") is None


def test_search_by_text_uses_it_without_importing_torch(tmp_path, full, onnx_graphs):
    from terravl.index import build_index
    from terravl.tasks import search

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(6):
        write_image(images / f"s{i}.png", 64, 64, seed=i)
    index = tmp_path / "a.idx"
    build_index([images], full, index)
    light_hits = search(index, text="a harbour with boats", k=4)  # no encoder given: the light path
    full_hits = search(index, text="a harbour with boats", k=4, encoder=full)
    assert [h.id for h in light_hits] == [h.id for h in full_hits]
    assert np.allclose([h.score for h in light_hits], [h.score for h in full_hits], atol=1e-5)

    code = ("import json, sys\nfrom terravl.cli.main import main\n"
            f"rc = main(['search', {str(index)!r}, 'a harbour with boats', '--k', '4', '--format', 'json'])\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}), file=sys.stderr)\n")
    env = {**os.environ, "TERRAVL_ONNX_DIR": str(onnx_graphs)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    status = json.loads(done.stderr.strip().splitlines()[-1])
    assert status == {"rc": 0, "torch": False}, done.stderr
    assert [h["id"] for h in json.loads(done.stdout)] == [h.id for h in full_hits]


def test_an_index_of_other_weights_is_still_refused(tmp_path, full):
    """The light path checks the index's recorded fingerprint like the full model does."""
    from terravl.index import IndexStore, build_index
    from terravl.index.store import IndexOpenError
    from terravl.tasks import search

    images = tmp_path / "imgs"
    images.mkdir()
    write_image(images / "a.png", 64, 64, seed=1)
    index = tmp_path / "b.idx"
    build_index([images], full, index)
    with IndexStore(index) as store:  # as if built with other weights under the same name
        store.db.execute("UPDATE meta SET value = ? WHERE key = 'weights'", (json.dumps("0123456789abcdef"),))
        store.db.commit()
    with pytest.raises(IndexOpenError, match="other weights"):
        search(index, text="a harbour", k=1)


def test_a_fingerprint_is_not_recorded_for_a_file_changed_while_it_was_read(tmp_path, full):
    from terravl.models.light_text import file_key, record_fingerprint

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"old weights")
    before = file_key(weights)
    weights.write_bytes(b"newer weights")  # rewritten between reading and recording
    record_fingerprint(weights, "0123456789abcdef", key=before)
    assert recorded_fingerprint(weights) is None
    record_fingerprint(weights, "0123456789abcdef", key=file_key(weights))
    assert recorded_fingerprint(weights) == "0123456789abcdef"
    other = tmp_path / "retrained.safetensors"
    other.write_bytes(b"other weigh!")  # the same size as the recorded file
    shutil.copystat(weights, other)  # and its modification time, as `cp -p` or `rsync -a` carry it
    os.replace(other, weights)  # put in its place: same path, size and mtime, another inode
    assert recorded_fingerprint(weights) is None


def test_the_warm_up_thread_and_the_query_share_one_tower(monkeypatch, full):
    """`terravl search` loads the text tower in a thread while it opens the index: the query's encoder must wait
    for that tower rather than load a second one; with the light path off, the warm-up loads nothing."""
    import threading

    from terravl.models import light_text, text_onnx

    monkeypatch.setattr(text_onnx, "_LOADED", {})
    made = []
    real = text_onnx.OnnxSentenceEncoder
    monkeypatch.setattr(text_onnx, "OnnxSentenceEncoder", lambda *args: made.append(real(*args)) or made[-1])
    monkeypatch.setenv("TERRAVL_LIGHT_TEXT", "0")
    light_text.warm_up()
    assert made == [] and text_onnx._LOADED == {}
    monkeypatch.delenv("TERRAVL_LIGHT_TEXT")
    thread = threading.Thread(target=light_text.warm_up)
    thread.start()
    light = open_text_encoder("terravl-default")
    thread.join()
    assert len(made) == 1 and light is not None and light.tower is made[0]
    assert np.abs(light.encode_texts(TEXTS) - full.encode_texts(TEXTS)).max() < 1e-5


def test_commands_warm_the_tower_in_a_thread_that_has_finished_when_they_return(monkeypatch, full):
    """`terravl search` and `kb query` wrap their work in text_tower_warming: the tower is loaded by the time the
    block ends (the thread joined), and nothing is started when the command will not need it."""
    import threading

    from terravl.cli.warm import text_tower_warming
    from terravl.models import text_onnx

    monkeypatch.setattr(text_onnx, "_LOADED", {})
    with text_tower_warming(False):
        names = {t.name for t in threading.enumerate()}
    assert "terravl-text-warm-up" not in names and text_onnx._LOADED == {}
    with text_tower_warming(True):
        pass
    assert len(text_onnx._LOADED) == 1
    assert not any(t.name == "terravl-text-warm-up" for t in threading.enumerate())


def test_query_encoder_gives_the_light_side_only_for_text_alone(full):
    from terravl.models.light_text import LightTextEncoder, query_encoder

    assert isinstance(query_encoder("terravl-default"), LightTextEncoder)
    both = query_encoder("terravl-default", text_only=False)  # images too: the full model
    assert not isinstance(both, LightTextEncoder) and both.encode_images
    assert encoder_fingerprint(both) == encoder_fingerprint(full)


def test_a_model_whose_texts_read_its_caption_memory(tmp_path, full):
    """The caption memory's text side (int8 cluster rows in a float16 file) gives the full model's numbers."""
    import torch

    from terravl.models.terravl_encoder import TerraVLModel, text_memory_clusters

    config = json.loads(json.dumps(full.model.config))
    config.pop("memory", None)
    config["storage"] = "float16"
    model = TerraVLModel(config)
    generator = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(300, full.embed_dim, generator=generator), dim=-1)
    values = torch.nn.functional.normalize(torch.randn(300, full.embed_dim, generator=generator), dim=-1)
    model.set_memory(keys, values, k=10, tau=0.05, alpha=0.75, storage="int8")
    model.set_text_memory(*text_memory_clusters(*model._memory_fp32(), 32), k=3, tau=0.05, beta=0.8)
    folder = model.save(tmp_path / "text-memory-model")
    loaded = m.load(str(folder))
    light = open_text_encoder(str(folder))
    assert light is not None and light.memory is not None and len(light.memory.values) == 32
    assert light.text_memory_settings == loaded.text_memory_settings == model.config["memory"]["text"]
    again = open_text_encoder(str(folder))  # `search` opens it on every call: the file's arrays are read once
    assert again.memory is light.memory and again.layers is light.layers
    got, want = light.encode_texts(TEXTS), loaded.encode_texts(TEXTS)
    assert np.abs(got - want).max() < 1e-5
    plain = TerraVLModel(config)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("memory_text")},
                          strict=False)
    plain.set_memory(*model._memory_fp32(), k=10, tau=0.05, alpha=0.75, storage="int8")
    without = m.load(str(plain.save(tmp_path / "plain-model")))
    assert np.abs(without.encode_texts(TEXTS) - want).max() > 1e-3  # the blend did something
