import numpy as np
import pytest
import torch
from PIL import Image

import terravl.models as m
from fakedata import tiny_hf_clip, tiny_open_clip, truncate, write_geotiff, write_image
from terravl.errors import RasterReadError
from terravl.models.registry import ModelConfig


def _images(tmp_path, n=3):
    rng = np.random.default_rng(5)
    arrays = [rng.integers(0, 255, (70 + 7 * i, 90, 3), dtype=np.uint8) for i in range(n)]
    return [Image.fromarray(a) for a in arrays]


def _reference(model, encoder, images, texts):
    with torch.no_grad():
        img = model.encode_image(torch.stack([encoder.preprocess(i) for i in images]))
        txt = model.encode_text(encoder.tokenizer(texts))
    return (torch.nn.functional.normalize(img, dim=-1).numpy(), torch.nn.functional.normalize(txt, dim=-1).numpy())


TEXTS = ["a harbor with many boats", "center-pivot irrigation", "dense residential area"]


@pytest.mark.parametrize("kind", ["vit", "rn"])
@pytest.mark.parametrize("fmt", ["bare", "wrapped-module", "safetensors"])
def test_open_clip_checkpoint_formats_load_exactly(tmp_path, kind, fmt):
    model = tiny_open_clip(kind, quick_gelu=True)
    sd = model.state_dict()
    if fmt == "bare":
        path = tmp_path / "model.pt"
        torch.save(sd, path)
    elif fmt == "wrapped-module":
        path = tmp_path / "epoch_20.pt"
        torch.save({"epoch": 20, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    encoder = m.load(path, quick_gelu=True)
    images = _images(tmp_path)
    ref_img, ref_txt = _reference(model, encoder, images, TEXTS)
    got_img, got_txt = encoder.encode_images(images), encoder.encode_texts(TEXTS)
    assert got_img.dtype == np.float32 and got_img.shape == (3, 32)
    np.testing.assert_allclose(got_img, ref_img, atol=1e-5)
    np.testing.assert_allclose(got_txt, ref_txt, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got_img, axis=1), 1.0, atol=1e-5)


def test_hf_clip_folder_loads_exactly(tmp_path):
    folder = tiny_hf_clip(tmp_path / "hfclip")
    encoder = m.load(folder)
    images = _images(tmp_path, 2)
    from transformers import CLIPModel

    ref_model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        pixels = torch.stack([encoder.preprocess(i) for i in images])
        ref = ref_model.get_image_features(pixel_values=pixels)
        ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
        tokens = encoder.tokenizer(TEXTS, padding=True, return_tensors="pt")
        ref_t = ref_model.get_text_features(**tokens)
        ref_t = ref_t if isinstance(ref_t, torch.Tensor) else ref_t.pooler_output
    np.testing.assert_allclose(encoder.encode_images(images), torch.nn.functional.normalize(ref, dim=-1).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(encoder.encode_texts(TEXTS), torch.nn.functional.normalize(ref_t, dim=-1).numpy(),
                               atol=1e-5)
    assert encoder.embed_dim == 16


def test_registry_name_resolves_file_in_terravl_home(tmp_path, monkeypatch):
    """name → config → $TERRAVL_HOME/models/<file> → the same numbers as the in-memory model."""
    import open_clip

    monkeypatch.setitem(m.REGISTRY, "tiny-test", ModelConfig("tiny-test", "open_clip", "", "Tiny-Test.pt", True))
    with pytest.raises(m.WeightsNotFoundError, match="Tiny-Test.pt.*models"):
        m.load("tiny-test")
    model = tiny_open_clip("vit", seed=3, quick_gelu=True)
    home = m.registry.config.models_dir()
    home.mkdir(parents=True)
    torch.save(model.state_dict(), home / "Tiny-Test.pt")
    entry = next(r for r in m.list_models() if r["name"] == "tiny-test")
    assert entry["present"] and entry["path"].endswith("Tiny-Test.pt")
    encoder = m.load("tiny-test")
    assert encoder.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's initial temperature, as saved
    ref_img, _ = _reference(model, encoder, _images(tmp_path, 1), TEXTS)
    np.testing.assert_allclose(encoder.encode_images(_images(tmp_path, 1)), ref_img, atol=1e-5)
    assert open_clip is not None


def test_remoteclip_vit_b_32_matches_open_clip(tmp_path):
    """The real registry entry with a full-size ViT-B-32 state dict (random weights: only the loader is tested)."""
    import open_clip

    reference = open_clip.create_model("ViT-B-32", pretrained=None, pretrained_text=False).eval()
    home = m.registry.config.models_dir()
    home.mkdir(parents=True)
    torch.save(reference.state_dict(), home / "RemoteCLIP-ViT-B-32.pt")
    encoder = m.load("remoteclip-vit-b-32")
    images = _images(tmp_path, 2)
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None, pretrained_text=False)
    with torch.no_grad():
        ref = reference.encode_image(torch.stack([preprocess(i) for i in images]))
        ref_t = reference.encode_text(open_clip.get_tokenizer("ViT-B-32")(TEXTS))
    np.testing.assert_allclose(encoder.encode_images(images), torch.nn.functional.normalize(ref, dim=-1).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(encoder.encode_texts(TEXTS), torch.nn.functional.normalize(ref_t, dim=-1).numpy(),
                               atol=1e-5)


def test_hugging_face_cache_is_used_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf"
    snapshot = cache / "models--chendelong--RemoteCLIP" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (cache / "models--chendelong--RemoteCLIP" / "refs").mkdir()
    (cache / "models--chendelong--RemoteCLIP" / "refs" / "main").write_text("abc123")
    torch.save(tiny_open_clip("rn").state_dict(), snapshot / "RemoteCLIP-RN50.pt")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    entry = next(r for r in m.list_models() if r["name"] == "remoteclip-rn50")
    assert entry["present"] and "snapshots/abc123" in entry["path"]


def test_errors_name_the_file_and_the_keys(tmp_path):
    model = tiny_open_clip("vit")
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(good.read_bytes())
    truncate(bad, 0.5)
    with pytest.raises(m.CheckpointError, match="trunc.pt.*unreadable or corrupted"):
        m.load(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(m.CheckpointError, match="junk.safetensors"):
        m.load(junk)
    sd = model.state_dict()
    sd.pop("visual.ln_post.weight")
    sd["extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pt"
    torch.save(sd, broken)
    with pytest.raises(m.CheckpointError, match="1 missing: visual.ln_post.weight; 1 unexpected: extra.weight"):
        m.load(broken)
    with pytest.raises(m.CheckpointError, match="shape mismatch"):
        m.load(good, arch="RN50")
    with pytest.raises(m.WeightsNotFoundError, match="RemoteCLIP-ViT-L-14.pt"):
        m.load("remoteclip-vit-l-14")
    with pytest.raises(m.registry.InputError, match="unknown model"):
        m.load("no-such-model")


def test_encode_images_accepts_paths_arrays_tiles_and_reports_bad_files(tmp_path):
    model = tiny_open_clip("vit")
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    encoder = m.load(path)
    jpg = write_image(tmp_path / "a.jpg", 80, 60)
    tif = write_geotiff(tmp_path / "b.tif", 50, 40, count=4, dtype="uint16")
    broken = truncate(write_image(tmp_path / "c.png", 100, 100), 0.3)
    array = np.asarray(Image.open(jpg).convert("RGB"))
    out = encoder.encode_images([jpg, str(tif), array])
    assert out.shape == (3, 32)
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)  # a path and its pixels embed the same
    with pytest.raises(RasterReadError, match="c.png"):
        encoder.encode_images([jpg, broken])
    batch = encoder.encode_batch([jpg, broken, tif])
    assert batch.vectors.shape == (2, 32) and batch.kept == [0, 2]
    assert batch.problems[0].path.endswith("c.png") and batch.problems[0].index == 1
    assert not hasattr(encoder, "report")  # nothing about a call is left on the shared encoder


@pytest.mark.parametrize("name", ["terravl-default", "terravl-captioner"])
def test_pull_refuses_shipped_models_without_touching_the_network(name, capsys, monkeypatch):
    import huggingface_hub

    from terravl.cli.main import main

    def no_download(*args, **kwargs):
        raise AssertionError("models pull tried to download a model that ships inside the package")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    assert main(["models", "pull", name]) == 2
    assert "ships inside the terravl package" in capsys.readouterr().err


def test_views_average_flips_and_rotations_and_make_embeddings_invariant_to_them():
    """Test-time augmentation over the 8 flips/rotations: the same scene turned or mirrored embeds identically."""
    from terravl.models.terravl_encoder import TerraVLEncoder, TerraVLModel

    torch.manual_seed(0)
    encoder = TerraVLEncoder(TerraVLModel())
    scene = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)  # the model's size: no resize
    turned = [scene, np.ascontiguousarray(np.rot90(scene)), np.ascontiguousarray(np.fliplr(np.rot90(scene, 3)))]
    single = encoder.encode_images(turned)
    assert not np.allclose(single[0], single[1], atol=1e-3)   # one view: orientation matters
    eight = encoder.encode_images(turned, views=8)
    assert np.allclose(eight[0], eight[1], atol=1e-5) and np.allclose(eight[0], eight[2], atol=1e-5)
    mirrored = encoder.encode_images([scene, np.ascontiguousarray(np.fliplr(scene))])
    two = encoder.encode_images([scene], views=2)[0]
    expected = mirrored.mean(0) / np.linalg.norm(mirrored.mean(0))
    assert np.allclose(two, expected, atol=1e-5)
    with pytest.raises(ValueError, match="views must be one of"):
        encoder.encode_images([scene], views=3)


def test_pull_without_network_fails_with_one_clear_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """`models pull` is the one command that downloads; offline it must say what to do instead, not trace back."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from terravl.cli.main import main

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub.")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setenv("TERRAVL_HOME", str(tmp_path / "home"))
    assert main(["models", "pull", "remoteclip-vit-b-32"]) == 1
    err = capsys.readouterr().err
    assert "could not download" in err and "Traceback" not in err
    assert str(tmp_path / "home" / "models" / "RemoteCLIP-ViT-B-32.pt") in err
    assert not (tmp_path / "home" / "models" / "RemoteCLIP-ViT-B-32.pt").exists()


def test_the_caption_memory_is_stored_packed_and_loads_bit_identical(tmp_path):
    """Identical caption prototypes are written once (with an index) and read back as the same rows."""
    import torch

    from terravl.models.terravl_encoder import pack_memory, unpack_memory

    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [1.0, 2.0]], dtype=torch.float16)
    state = {"memory_keys": torch.arange(8, dtype=torch.float16).reshape(4, 2), "memory_values": values}
    packed = pack_memory(state)
    assert "memory_values" not in packed and packed["memory_values_unique"].shape == (2, 2)
    back = unpack_memory(packed)
    assert torch.equal(back["memory_values"], values) and back["memory_values"].dtype == torch.float16
    distinct = {"memory_values": torch.eye(3, dtype=torch.float16)}
    assert pack_memory(distinct) is distinct and unpack_memory(distinct) is distinct  # nothing to share: as it was


def test_an_int8_caption_memory_saves_smaller_loads_bit_identical_and_keeps_directions(tmp_path):
    """``memory_storage: int8``: codes + one scale per row; a save of the loaded model changes nothing (the file is
    what the fingerprint covers), identical prototypes are still stored once, and every row keeps its direction."""
    import torch
    import torch.nn.functional as F

    from terravl.models.terravl_encoder import DEFAULT_CONFIG, TerraVLModel, quantize_rows

    torch.manual_seed(0)
    config = {**DEFAULT_CONFIG, "embed_dim": 16,
              "image": {**DEFAULT_CONFIG["image"], "widths": [8, 16], "depths": [1, 1], "resolution": 32}}
    keys = F.normalize(torch.randn(64, 16), dim=-1)
    values = F.normalize(torch.randn(8, 16), dim=-1)[torch.arange(64) % 8]  # templated captions: 8 prototypes
    plain, small = TerraVLModel(config), TerraVLModel(config)
    small.load_state_dict(plain.state_dict(), strict=False)
    plain.set_memory(keys, values, k=5, tau=0.05, alpha=0.5)
    small.set_memory(keys, values, k=5, tau=0.05, alpha=0.5, storage="int8")
    assert small.memory_keys.dtype == torch.int8 and small.config["memory"]["storage"] == "int8"
    q_keys, q_values = small._memory_fp32()
    assert float(F.cosine_similarity(q_keys, keys).min()) > 0.999
    assert float(F.cosine_similarity(q_values, values).min()) > 0.999
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        cos = F.cosine_similarity(plain.encode_image(pixels), small.encode_image(pixels))
    assert float(cos.min()) > 0.999
    plain.save(tmp_path / "fp16")
    small.save(tmp_path / "int8")
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "int8" / "model.safetensors"))
    assert stored["memory_values_unique"].shape == (8, 16) and stored["memory_values_unique"].dtype == torch.int8
    assert stored["memory_keys_scale"].dtype == torch.float32
    assert (tmp_path / "int8" / "model.safetensors").stat().st_size < (tmp_path / "fp16" /
                                                                       "model.safetensors").stat().st_size
    loaded = TerraVLModel.load(tmp_path / "int8")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in small.state_dict().items())
    loaded.save(tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "int8" /
                                                                        "model.safetensors").read_bytes()
    codes, scale = quantize_rows(torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]]))
    assert codes.tolist() == [[64, -127, 32], [0, 0, 0]] and float(scale[0, 0]) == pytest.approx(1 / 127)
    with pytest.raises(ValueError, match="float16 or int8"):
        plain.set_memory(keys, values, k=5, tau=0.05, alpha=0.5, storage="int4")
    half = TerraVLModel({**config, "storage": "float16"})  # float16 storage: halves everything but the scales
    half.set_memory(keys, values, k=5, tau=0.05, alpha=0.5, storage="int8")
    half.save(tmp_path / "half")
    stored = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert stored["logit_scale"].dtype == torch.float16 and stored["memory_keys_scale"].dtype == torch.float32
    assert torch.equal(TerraVLModel.load(tmp_path / "half").memory_values_scale, half.memory_values_scale)
    fp16_again = TerraVLModel.load(tmp_path / "int8")
    fp16_again.set_memory(keys, values, k=5, tau=0.05, alpha=0.5)  # back to float16: no stale scales remain
    assert "memory_keys_scale" not in fp16_again.state_dict() and "storage" not in fp16_again.config["memory"]


@pytest.mark.parametrize("mean,std", [([0.5] * 3, [0.5] * 3), ([0.398, 0.409, 0.370], [0.207, 0.189, 0.186])])
def test_preprocess_in_numpy_gives_the_torch_formulas_bits(mean, std):
    """ImagePreprocess normalises in numpy: the same float32 operations as (x / 255 - mean) / std in PyTorch,
    so every embedding stays the same to the bit (resized and already-sized images, odd sizes)."""
    from terravl.models.terravl_encoder import ImagePreprocess

    prepare = ImagePreprocess(112, mean, std)
    rng = np.random.default_rng(4)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    for size in [(150, 150), (112, 112), (97, 203)]:
        for _ in range(5):
            image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            resized = image.resize((112, 112), Image.BILINEAR, reducing_gap=None) if size != (112, 112) else image
            array = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)
            want = (array.float().div_(255) - m) / s
            got = prepare(image)
            assert got.dtype == torch.float32 and got.shape == (3, 112, 112) and got.is_contiguous()
            assert torch.equal(got, want)
