"""Hugging Face CLIP and SigLIP dual encoders loaded from a local folder (``save_pretrained`` layout).

Nothing is downloaded: ``from_pretrained`` runs with ``local_files_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from terravl.models.checkpoints import CheckpointError
from terravl.models.encoder import Encoder


class HFCLIPEncoder(Encoder):
    """transformers ``CLIPModel``/``SiglipModel`` (any model with ``get_image_features``/``get_text_features``)."""

    def __init__(self, folder: str | Path, name: str | None = None, device=None, precision: str | None = None):
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        super().__init__(device, precision)
        folder = Path(folder)
        try:
            self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval().to(self.device)
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(folder, f"not a loadable Hugging Face CLIP/SigLIP folder ({exc})") from exc
        if not hasattr(self.model, "get_image_features"):
            raise CheckpointError(folder, f"{type(self.model).__name__} is not a dual encoder (no get_image_features)")
        self.name = name or folder.name
        self.embed_dim = int(self.model.config.projection_dim) if hasattr(self.model.config, "projection_dim") \
            else int(self.model.config.text_config.hidden_size)
        self.padding = "max_length" if "siglip" in self.model.config.model_type else True
        self.preprocess = self._preprocess

    def _preprocess(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels))

    def _forward_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=self.padding, truncation=True, return_tensors="pt").to(self.device)
        return _features(self.model.get_text_features(**tokens))


def _features(output) -> torch.Tensor:
    """transformers 5 may return a model output object instead of a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected feature output {type(output).__name__}")
