"""Models as data: one config file per model, builders by family, a captioner registry, explicit weight sources."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import terravl.models as m
from fakedata import tiny_hf_clip, tiny_open_clip
from terravl.errors import InputError
from terravl.models import families, registry, sources
from terravl.models.registry import CaptionerConfig, ModelConfig

# What every registry name loaded before its entry became a config file: (family, arch, file, quick_gelu,
# hf_repo, hf_filename). Changing a line here changes which weights a published name means.
PINNED = {
    "remoteclip-rn50": ("open_clip", "RN50", "RemoteCLIP-RN50.pt", False, "chendelong/RemoteCLIP",
                        "RemoteCLIP-RN50.pt"),
    "remoteclip-vit-b-32": ("open_clip", "ViT-B-32", "RemoteCLIP-ViT-B-32.pt", False, "chendelong/RemoteCLIP",
                            "RemoteCLIP-ViT-B-32.pt"),
    "remoteclip-vit-l-14": ("open_clip", "ViT-L-14", "RemoteCLIP-ViT-L-14.pt", False, "chendelong/RemoteCLIP",
                            "RemoteCLIP-ViT-L-14.pt"),
    "georsclip-vit-b-32": ("open_clip", "ViT-B-32", "RS5M_ViT-B-32.pt", True, "Zilun/GeoRSCLIP",
                           "ckpt/RS5M_ViT-B-32.pt"),
    "georsclip-vit-l-14": ("open_clip", "ViT-L-14", "RS5M_ViT-L-14.pt", True, "Zilun/GeoRSCLIP",
                           "ckpt/RS5M_ViT-L-14.pt"),
    "georsclip-vit-h-14": ("open_clip", "ViT-H-14", "RS5M_ViT-H-14.pt", False, "Zilun/GeoRSCLIP",
                           "ckpt/RS5M_ViT-H-14.pt"),
    "skyclip-vit-b-32": ("open_clip", "ViT-B-32", "SkyCLIP_ViT_B32_top50pct/epoch_20.pt", True, None, None),
    "skyclip-vit-l-14": ("open_clip", "ViT-L-14", "SkyCLIP_ViT_L14_top50pct/epoch_20.pt", True, None, None),
    "openai-vit-b-32": ("open_clip", "ViT-B-32", "openai-ViT-B-32.bin", True, "timm/vit_base_patch32_clip_224.openai",
                        "open_clip_pytorch_model.bin"),
    "terravl-default": ("terravl", "terravl-default", "terravl-default", False, None, None),
    "terravl-default-v1": ("terravl", "terravl-default", "terravl-default-v1", False, None, None),
    "terravl-default-v2": ("terravl", "terravl-default", "terravl-default-v2", False, None, None),
}
TEXTS = ["a harbor with many boats", "dense residential area"]


def _images(n=2):
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (64 + 5 * i, 80, 3), dtype=np.uint8)) for i in range(n)]


def _hub_snapshot(tmp_path, monkeypatch, repo: str) -> Path:
    """An offline Hugging Face cache holding one snapshot of ``repo``; downloading is made to fail loudly."""
    import huggingface_hub
    import huggingface_hub.constants as hf_constants

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    cache = tmp_path / "hf"
    entry = cache / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    return snapshot


# -- configs as data --------------------------------------------------------------------------------------------
def test_every_registry_entry_round_trips_through_its_config_file():
    files = sorted((registry.CONFIGS_DIR / "encoders").glob("*.json"))
    assert {p.stem for p in files} == set(m.REGISTRY) == set(PINNED)
    for path in files:
        data = json.loads(path.read_text())
        cfg = m.REGISTRY[path.stem]
        assert data["name"] == path.stem and cfg.to_dict() == {**ModelConfig(**data).to_dict()}
        assert ModelConfig(**cfg.to_dict()) == cfg
        assert (cfg.family, cfg.arch, cfg.file, cfg.quick_gelu, cfg.hf_repo, cfg.hf_filename) == PINNED[cfg.name]
        assert cfg.family in m.BUILDERS
    for path in sorted((registry.CONFIGS_DIR / "captioners").glob("*.json")):
        cfg = m.CAPTIONERS[path.stem]
        assert cfg == CaptionerConfig(**json.loads(path.read_text())) == CaptionerConfig(**cfg.to_dict())
    assert m.REGISTRY["terravl-default"].shipped and not m.REGISTRY["remoteclip-rn50"].shipped


def test_a_config_file_with_an_unknown_or_missing_key_names_the_file(tmp_path):
    bad = tmp_path / "typo.json"
    bad.write_text(json.dumps({"name": "x", "family": "open_clip", "arch": "RN50", "file": "x.pt", "quickgelu": True}))
    with pytest.raises(InputError, match=r"typo.json.*unknown config keys quickgelu"):
        registry.read_config_file(ModelConfig, bad)
    bad.write_text(json.dumps({"name": "x", "family": "open_clip"}))
    with pytest.raises(InputError, match=r"typo.json.*incomplete model config"):
        registry.read_config_file(ModelConfig, bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        registry.read_config_file(ModelConfig, bad)


# -- builders by family -----------------------------------------------------------------------------------------
def test_builders_table_dispatches_by_family(tmp_path, monkeypatch):
    assert {"open_clip", "terravl", "hf"} <= set(m.BUILDERS)
    calls = []
    monkeypatch.setitem(m.BUILDERS, "recording", None)

    @m.register_family("recording")
    def _build(cfg, weights, device, precision):
        calls.append((cfg.name, weights, precision))
        return "built"

    weights = tmp_path / "w.bin"
    weights.write_bytes(b"0")
    monkeypatch.setitem(m.REGISTRY, "rec-test", ModelConfig("rec-test", "recording", "any", "w.bin"))
    assert m.BUILDERS["recording"] is _build
    assert families.build_encoder(m.REGISTRY["rec-test"], weights, None, "fp32") == "built"
    assert calls == [("rec-test", weights, "fp32")]

    real_open_clip = m.BUILDERS["open_clip"]
    seen = []

    def spy(cfg, weights, device, precision):
        seen.append(cfg.family)
        return real_open_clip(cfg, weights, device, precision)

    monkeypatch.setitem(m.BUILDERS, "open_clip", spy)
    path = tmp_path / "m.pt"
    torch.save(tiny_open_clip("vit").state_dict(), path)
    m.load(path)
    assert seen == ["open_clip"]


def test_an_unknown_family_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(m.REGISTRY, "odd-test", ModelConfig("odd-test", "no-such-family", "x", "odd.pt"))
    home = registry.config.models_dir()
    home.mkdir(parents=True)
    (home / "odd.pt").write_bytes(b"0")
    with pytest.raises(InputError, match=r"odd-test: unknown model family 'no-such-family'; known families: "
                                         r".*hf.*open_clip.*terravl"):
        m.load("odd-test")
    folder = tmp_path / "folder-model"
    folder.mkdir()
    (folder / "terravl_config.json").write_text(json.dumps({"family": "mystery"}))
    with pytest.raises(InputError, match="unknown model family 'mystery'"):
        m.load(folder)


# -- weight sources -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, prefix, target", [
    ("terravl:terravl-default", "terravl", "terravl-default"),
    ("terravl-default", "terravl", "terravl-default"),
    ("file:/data/x.pt", "file", "/data/x.pt"),
    ("file:///data/x.pt", "file", "/data/x.pt"),
    ("file:relative/x.pt", "file", "relative/x.pt"),
    ("hf-hub:org/repo", "hf-hub", "org/repo"),
    ("hf-hub:org/repo/ckpt/a.pt", "hf-hub", "org/repo/ckpt/a.pt"),
    ("no-such-name", "terravl", "no-such-name"),
    ("C:\\models\\x.pt", "terravl", "C:\\models\\x.pt"),
])
def test_prefixes_parse_as_documented(spec, prefix, target):
    source = m.parse_source(spec, {"terravl-default"})
    assert (source.prefix, source.target) == (prefix, target)


def test_bare_paths_are_file_sources_and_hub_targets_split_into_repo_and_file(tmp_path):
    existing = tmp_path / "a:b.pt"
    existing.write_bytes(b"0")
    assert m.parse_source(str(existing)).prefix == "file"  # an existing path wins over a look-alike prefix
    assert m.parse_source(tmp_path / "missing.pt").prefix == "file"
    hub = m.parse_source("hf-hub:Zilun/GeoRSCLIP/ckpt/RS5M_ViT-B-32.pt")
    assert (hub.hub_repo, hub.hub_file) == ("Zilun/GeoRSCLIP", "ckpt/RS5M_ViT-B-32.pt")
    assert m.parse_source("hf-hub:org/repo").hub_file is None


@pytest.mark.parametrize("spec, message", [
    ("s3://bucket/x.pt", "unknown weight-source prefix 's3:'; use one of terravl:, file:, hf-hub:"),
    ("http://example.org/x.pt", "unknown weight-source prefix 'http:'"),
    ("hf-hub:onlyorg", "expected hf-hub:ORG/REPO"),
    ("file:", "nothing after 'file:'"),
])
def test_an_unknown_or_malformed_prefix_is_an_input_error(spec, message):
    with pytest.raises(InputError, match=message):
        m.load(spec)


def test_file_and_terravl_prefixes_load_what_bare_references_load(tmp_path, monkeypatch):
    model = tiny_open_clip("vit", seed=2, quick_gelu=True)
    path = tmp_path / "Tiny-Test.pt"
    torch.save(model.state_dict(), path)
    images = _images()
    bare = m.load(path, quick_gelu=True)
    prefixed = m.load(f"file:{path}", quick_gelu=True)
    assert bare.source == prefixed.source == str(path.resolve())
    np.testing.assert_array_equal(bare.encode_images(images), prefixed.encode_images(images))
    with pytest.raises(m.WeightsNotFoundError, match=r"nope\.pt: no such checkpoint file"):
        m.load(f"file:{tmp_path / 'nope.pt'}")

    monkeypatch.setitem(m.REGISTRY, "tiny-test", ModelConfig("tiny-test", "open_clip", "", "Tiny-Test.pt", True))
    home = registry.config.models_dir()
    home.mkdir(parents=True)
    shutil.copyfile(path, home / "Tiny-Test.pt")
    named, explicit = m.load("tiny-test"), m.load("terravl:tiny-test")
    assert named.source == explicit.source == "tiny-test" and named.name == explicit.name == "tiny-test"
    np.testing.assert_array_equal(named.encode_texts(TEXTS), explicit.encode_texts(TEXTS))
    np.testing.assert_allclose(named.encode_images(images), bare.encode_images(images), atol=1e-6)

    renamed = tmp_path / "elsewhere" / "renamed.pt"  # say which registered model a file is, instead of its name
    renamed.parent.mkdir()
    shutil.copyfile(path, renamed)
    by_weights = m.load("tiny-test", weights=renamed)
    assert by_weights.quick_gelu is True and by_weights.source == "tiny-test"
    np.testing.assert_allclose(by_weights.encode_images(images), bare.encode_images(images), atol=1e-6)
    assert m.load("terravl:terravl-default").source == "terravl-default"
    with pytest.raises(InputError, match="weights= goes with a registered model name"):
        m.load(path, weights=renamed)


def test_hf_hub_prefix_reads_files_and_folders_from_the_cache_only(tmp_path, monkeypatch):
    snapshot = _hub_snapshot(tmp_path, monkeypatch, "someone/tiny-clip")
    model = tiny_open_clip("rn", seed=4)
    local = tmp_path / "local.pt"
    torch.save(model.state_dict(), local)
    (snapshot / "ckpt").mkdir()
    shutil.copyfile(local, snapshot / "ckpt" / "tiny.pt")
    encoder = m.load("hf-hub:someone/tiny-clip/ckpt/tiny.pt")
    assert encoder.source == "hf-hub:someone/tiny-clip/ckpt/tiny.pt"
    np.testing.assert_allclose(encoder.encode_images(_images()), m.load(local).encode_images(_images()), atol=1e-6)

    # a file a registered model publishes on the Hub gets that model's architecture and settings
    monkeypatch.setitem(m.REGISTRY, "tiny-hub", ModelConfig("tiny-hub", "open_clip", "", "tiny.pt", True,
                                                            "someone/tiny-clip", "ckpt/tiny.pt"))
    known = m.load("hf-hub:someone/tiny-clip/ckpt/tiny.pt")
    assert known.name == "tiny-hub" and known.quick_gelu is True

    with pytest.raises(m.WeightsNotFoundError, match=r"'ckpt/other.pt' of someone/tiny-clip not in the Hugging Face "
                                                     r"cache \(.*hf\).*hf download someone/tiny-clip ckpt/other.pt"):
        m.load("hf-hub:someone/tiny-clip/ckpt/other.pt")

    folder_snapshot = _hub_snapshot(tmp_path / "second", monkeypatch, "someone/hf-clip")
    tiny_hf_clip(folder_snapshot)
    hf_encoder = m.load("hf-hub:someone/hf-clip")
    assert hf_encoder.embed_dim == 16 and hf_encoder.source == "hf-hub:someone/hf-clip"
    with pytest.raises(m.WeightsNotFoundError, match="someone/absent not in the Hugging Face cache"):
        m.load("hf-hub:someone/absent")


def test_registered_hub_files_resolve_to_their_config():
    assert registry.config_for_hub("Zilun/GeoRSCLIP", "ckpt/RS5M_ViT-B-32.pt").name == "georsclip-vit-b-32"
    assert registry.config_for_hub("Zilun/GeoRSCLIP", "ckpt/unknown.pt") is None
    assert registry.config_for_file(Path("/data/RS5M_ViT-B-32.pt")).name == "georsclip-vit-b-32"
    assert registry.config_for_file(Path("/runs/SkyCLIP_ViT_B32_top50pct/epoch_20.pt")).name == "skyclip-vit-b-32"
    assert registry.config_for_file(Path("/runs/other/epoch_20.pt")) is None
    assert registry.config_for_file(Path("/data/MyRS5M_ViT-B-32.pt")) is None  # whole file names only
    assert sources.PREFIXES == ("terravl", "file", "hf-hub")


# -- captioners -----------------------------------------------------------------------------------------------------
def test_captioner_registry_lists_the_shipped_captioner_apart_from_encoders():
    assert "terravl-captioner" in m.CAPTIONERS and "terravl-captioner" not in m.REGISTRY
    assert m.get_captioner_config("terravl-captioner").shipped
    rows = {r["name"]: r for r in m.list_models()}
    assert rows["terravl-captioner"]["kind"] == "captioner" and rows["terravl-captioner"]["present"]
    assert rows["terravl-default"]["kind"] == "encoder"
    with pytest.raises(InputError, match="is a captioner, not a dual encoder"):
        m.load("terravl-captioner")
    with pytest.raises(InputError, match="is a dual encoder, not a captioner; captioners: terravl-captioner"):
        m.load_captioner("terravl-default")
    with pytest.raises(InputError, match="unknown captioner"):
        m.load_captioner("no-such-captioner")


def test_models_list_names_every_kind_with_the_cli(capsys):
    """`terravl models list` lists grounders and routers beside encoders, captioners and change detectors."""
    import json

    from terravl.cli.main import main

    assert main(["models", "list", "--format", "json"]) == 0
    kinds = {r["name"]: r["kind"] for r in json.loads(capsys.readouterr().out)}
    assert kinds["terravl-grounder"] == "grounder" and kinds["terravl-router"] == "router"
    assert {"encoder", "captioner", "change-detector"} <= set(kinds.values())


def test_captioner_folders_in_terravl_home_join_the_registry_and_load_by_name_or_prefix(tmp_path):
    shipped = registry.config.packaged_models_dir() / "terravl-captioner"
    home = registry.config.models_dir()
    home.mkdir(parents=True)
    (home / "my-captioner").symlink_to(shipped, target_is_directory=True)
    entry = next(r for r in m.list_models() if r["name"] == "my-captioner")
    assert entry["kind"] == "captioner" and entry["present"] and not entry["shipped"]
    # the shipped captioner reads the encoder it was trained on (the default model, v2)
    assert m.get_captioner_config("my-captioner").encoder == "terravl-default"
    by_name = m.load_captioner("terravl:my-captioner")
    assert (by_name.name, by_name.source) == ("my-captioner", "my-captioner")
    by_file = m.load_captioner(f"file:{shipped}")
    assert by_file.source == str(shipped.resolve())
    with pytest.raises(InputError, match="not a captioner folder"):
        m.load_captioner(f"file:{tmp_path}")


def test_models_list_json_keeps_its_keys_and_adds_kind(capsys):
    from terravl.cli.main import main

    assert main(["models", "list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all({"name", "arch", "file", "present", "path", "kind"} <= set(r) for r in rows)
    kinds = {r["name"]: r["kind"] for r in rows}
    assert kinds["terravl-captioner"] == "captioner" and kinds["remoteclip-vit-b-32"] == "encoder"
    assert main(["models", "list"]) == 0
    assert "captioner" in capsys.readouterr().out


def test_hf_hub_captioner_loads_from_the_cache_only(tmp_path, monkeypatch):
    snapshot = _hub_snapshot(tmp_path, monkeypatch, "someone/rs-captioner")
    with pytest.raises(m.WeightsNotFoundError, match="someone/rs-captioner not in the Hugging Face cache"):
        m.load_captioner("hf-hub:someone/rs-captioner")
    for item in (registry.config.packaged_models_dir() / "terravl-captioner").iterdir():
        (snapshot / item.name).symlink_to(item, target_is_directory=item.is_dir())
    captioner = m.load_captioner("hf-hub:someone/rs-captioner")
    assert (captioner.name, captioner.source) == ("rs-captioner", "hf-hub:someone/rs-captioner")
