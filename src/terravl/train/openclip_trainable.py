"""Fine-tuning an OpenCLIP model from the registry (RemoteCLIP, GeoRSCLIP, SkyCLIP, …) with the same training
loop as TerraVL's own model: each tower frozen, fully trained, or adapted with LoRA through peft (the GeoRSCLIP
PEFT recipe). A frozen text tower's embeddings are computed once; a trained one runs on tokens every step.
Saving merges LoRA into the weights, so the result is a plain open_clip state dict that any tool can load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

LORA_TARGETS = {"image": r"visual\..*\.(c_fc|c_proj)", "text": r"transformer\..*\.(c_fc|c_proj)"}


class OpenCLIPTrainable(nn.Module):
    """Wraps an open_clip CLIP for training: ``encode_image``, ``encode_text_features``, ``logit_scale``."""

    def __init__(self, encoder, freeze_image: bool = False, freeze_text: bool = True, lora_image: int = 0,
                 lora_text: int = 0):
        super().__init__()
        self.source = encoder.source or encoder.name
        self.arch = getattr(encoder, "arch", None)
        self.quick_gelu = getattr(encoder, "quick_gelu", False)
        model = encoder.model.float()
        for p in model.parameters():
            p.requires_grad_(False)
        self.tokenizer = encoder.tokenizer
        preprocess = encoder.preprocess.transforms
        normalize = next(t for t in preprocess if type(t).__name__ == "Normalize")
        self.mean, self.std = list(normalize.mean), list(normalize.std)
        self.resolution = int(model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list))
                              else model.visual.image_size)
        self.train_text = not freeze_text or lora_text > 0
        targets = []
        if lora_image:
            targets.append(LORA_TARGETS["image"])
        if lora_text:
            targets.append(LORA_TARGETS["text"])
        if not freeze_image and not lora_image:
            for p in model.visual.parameters():
                p.requires_grad_(True)
        if not freeze_text and not lora_text:
            for name, p in model.named_parameters():
                if not name.startswith("visual.") and name != "logit_scale":
                    p.requires_grad_(True)
        if targets:
            from peft import LoraConfig, get_peft_model

            rank = max(lora_image, lora_text)
            model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                     target_modules="|".join(f"({t})" for t in targets)))
        self.model = model
        self.logit_scale = nn.Parameter(self._base().logit_scale.detach().clone())

    def _base(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._base().encode_image(pixels)

    def encode_text_features(self, features: torch.Tensor) -> torch.Tensor:
        """Precomputed embeddings pass through (frozen text tower); token ids run the text tower."""
        if features.dtype in (torch.int32, torch.int64):
            return self._base().encode_text(features)
        return features

    @torch.inference_mode()
    def text_inputs(self, strings: list[str], batch_size: int = 256) -> torch.Tensor:
        """What the training loop indexes per step: token ids if the text tower trains, else its embeddings."""
        tokens = self.tokenizer(strings)
        if self.train_text:
            return tokens
        out = [self._base().encode_text(tokens[i:i + batch_size]).float() for i in range(0, len(tokens), batch_size)]
        return torch.cat(out)

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        base = self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
        state = {k: v.detach().cpu().contiguous() for k, v in base.state_dict().items()}
        state["logit_scale"] = self.logit_scale.detach().cpu().reshape(state["logit_scale"].shape)
        save_file(state, str(folder / "model.safetensors"))
        config = {"family": "open_clip", "arch": self.arch, "quick_gelu": self.quick_gelu, "base": self.source,
                  **(extra or {})}
        (folder / "terravl_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if hasattr(self.model, "merge_and_unload"):
            self.model = base
        return folder
