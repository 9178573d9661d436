"""OpenCLIP dual encoders (RemoteCLIP, GeoRSCLIP, SkyCLIP, OpenAI CLIP and any open_clip CLIP checkpoint).

The architecture comes from open_clip itself — by config name when known, or rebuilt from the state dict's
shapes — and the weights from :mod:`terravl.models.checkpoints`, so a checkpoint gives exactly the numbers it
gives in open_clip.
"""

from __future__ import annotations

from pathlib import Path

import torch

from terravl.models.checkpoints import CheckpointError, load_into, read_state_dict
from terravl.models.encoder import Encoder

_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


class OpenCLIPEncoder(Encoder):
    """An ``open_clip`` CLIP model behind the :class:`Encoder` interface."""

    def __init__(self, model: torch.nn.Module, name: str, device=None, precision: str | None = None):
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        super().__init__(device, precision)
        self.name = name
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda" and self.precision == "fp16":
            self.model.half()
        self.embed_dim = int(model.text_projection.shape[-1]) if hasattr(model, "text_projection") and \
            model.text_projection is not None else int(model.visual.output_dim)
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        self.context_length = int(getattr(model, "context_length", 77))
        self.tokenizer = open_clip.SimpleTokenizer(context_length=self.context_length)

    @classmethod
    def from_checkpoint(cls, path: str | Path, arch: str | None = None, quick_gelu: bool = False,
                        name: str | None = None, device=None, precision: str | None = None) -> "OpenCLIPEncoder":
        """Build ``arch`` (or infer it from the state dict) and load the checkpoint at ``path`` strictly."""
        state_dict = read_state_dict(path)
        model = build_open_clip(state_dict, arch, quick_gelu, path)
        load_into(model, state_dict, path, ignore=_OPENAI_EXTRA_KEYS)
        encoder = cls(model, name or Path(path).stem, device, precision)
        encoder.arch, encoder.quick_gelu = arch, quick_gelu
        return encoder

    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(next(self.model.parameters()).dtype))

    def _forward_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens)


def build_open_clip(state_dict: dict, arch: str | None, quick_gelu: bool, source) -> torch.nn.Module:
    """An untrained open_clip CLIP of ``arch``, or of the architecture the state dict's shapes describe."""
    import open_clip

    if arch:
        if arch not in open_clip.list_models():
            raise CheckpointError(source, f"unknown open_clip architecture {arch!r}")
        return open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu, pretrained_text=False)
    return _model_from_shapes(state_dict, quick_gelu, source)


def _model_from_shapes(sd: dict, quick_gelu: bool, source) -> torch.nn.Module:
    """Rebuild a CLIP whose layout is OpenAI's (as open_clip saves it) from tensor shapes, in float32."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    try:
        if "visual.proj" in sd:
            patch = sd["visual.conv1.weight"].shape[-1]
            grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = CLIPVisionCfg(layers=len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}),
                                   width=sd["visual.conv1.weight"].shape[0], patch_size=patch, image_size=patch * grid)
        elif "visual.attnpool.positional_embedding" in sd:
            layers = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
            grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = CLIPVisionCfg(layers=layers, width=sd["visual.layer1.0.conv1.weight"].shape[0],
                                   image_size=grid * 32)
        else:
            raise KeyError("visual.proj / visual.attnpool")
        width = sd["ln_final.weight"].shape[0]
        text = CLIPTextCfg(context_length=sd["positional_embedding"].shape[0],
                           vocab_size=sd["token_embedding.weight"].shape[0], width=width, heads=max(1, width // 64),
                           layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}))
        embed_dim = sd["text_projection"].shape[1]
    except KeyError as exc:
        raise CheckpointError(source, f"not an open_clip CLIP state dict (no {exc.args[0]!r}); pass arch= or use a "
                                      f"registered model name") from None
    return CLIP(embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu)
