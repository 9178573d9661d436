"""The captioning bridge (RS-CapRet / ClipCap style): a frozen image encoder's pooled features → a small trained
MLP → ``prefix_len`` prefix embeddings → a causal language model loaded with ``AutoModelForCausalLM``.

One architecture serves every language model: TerraVL's own small decoder (GPT-2 layout, trained from scratch and
shipped) or a user's local Hugging Face checkpoint (frozen; only the mapping trains, optionally LoRA on the LM).
Captioning and question answering differ only in the text prompt that follows the prefix.

A captioner is a folder: ``captioner.json`` (settings), ``bridge.safetensors`` (the mapping) and, when the language
model was trained (own decoder, or LoRA merged in), ``lm/`` (``save_pretrained`` of model and tokenizer). A frozen
user LM is referenced by its absolute path, never copied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from terravl.errors import InputError
from terravl.models.checkpoints import CheckpointError, load_into, read_state_dict
from terravl.models.progress import progress_bar
from terravl.models.word_tokenizer import tidy

SETTINGS_FILE = "captioner.json"
BRIDGE_FILE = "bridge.safetensors"
CAPTION_PROMPT = "caption:"
QUESTION_TEMPLATE = "question: {} answer:"
MAX_QUESTION_CHARS = 500

DEFAULT_SETTINGS = {
    "encoder": "terravl-default",
    "encoder_memory": False,
    "feature_dim": 384,
    "prefix_len": 8,
    "hidden": 1024,
    "dropout": 0.1,
    "lm": "lm",
    "lm_trained": True,
    "max_question_tokens": 48,
    "max_tokens": 40,
    "beams": 3,
    "length_penalty": 1.0,
}


def _quiet_transformers() -> None:
    """transformers logs config notes and load progress bars that mean nothing to a TerraVL user."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class PrefixMapper(nn.Module):
    """Pooled image features (D) → (prefix_len, lm_dim) embeddings through a two-layer MLP."""

    def __init__(self, in_dim: int, lm_dim: int, prefix_len: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.prefix_len, self.lm_dim = int(prefix_len), int(lm_dim)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, self.prefix_len * self.lm_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).view(features.shape[0], self.prefix_len, self.lm_dim)


def small_decoder(tokenizer, n_embd: int = 256, n_layer: int = 4, n_head: int = 4, n_positions: int = 128,
                  dropout: float = 0.1):
    """TerraVL's own decoder: a small GPT-2 (randomly initialised) sized to ``tokenizer``'s vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _quiet_transformers()
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config)


def question_prompt(question) -> str:
    """The prompt for a question; a clear :class:`InputError` for anything that is not a usable question."""
    if not isinstance(question, str):
        raise InputError("question", f"must be a string, got {type(question).__name__}")
    text = " ".join(question.split())
    if not text:
        raise InputError("question", "is empty")
    if len(text) > MAX_QUESTION_CHARS:
        raise InputError("question", f"is {len(text)} characters long; the limit is {MAX_QUESTION_CHARS}")
    if any(ord(ch) < 32 for ch in question if ch not in "\t\n\r"):
        raise InputError("question", "contains control characters")
    return QUESTION_TEMPLATE.format(text)


class Captioner(nn.Module):
    """Mapping + language model + tokenizer + settings; the image encoder is loaded by name when first needed."""

    def __init__(self, mapper: PrefixMapper, lm, tokenizer, settings: dict, encoder=None):
        super().__init__()
        self.mapper, self.lm, self.tokenizer = mapper, lm, tokenizer
        self.settings = {**DEFAULT_SETTINGS, **settings}
        self._encoder = encoder
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = str(self.settings.get("name", "captioner"))

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, lm, tokenizer, feature_dim: int, encoder: str = "terravl-default", prefix_len: int = 8,
              hidden: int = 1024, dropout: float = 0.1, lm_path: str | None = None, lora: int = 0,
              **settings) -> "Captioner":
        """A new bridge over ``lm``. With ``lm_path`` (a user's frozen LM) the LM is referenced, not saved;
        ``lora`` > 0 adds LoRA adapters to it (merged into a saved copy at :meth:`save`)."""
        lm_dim = lm.get_input_embeddings().embedding_dim
        mapper = PrefixMapper(feature_dim, lm_dim, prefix_len, hidden, dropout)
        trained = lm_path is None or lora > 0
        if lm_path is not None:
            lm.requires_grad_(False)
        if lora > 0:
            from peft import LoraConfig, get_peft_model

            lm = get_peft_model(lm, LoraConfig(r=lora, lora_alpha=2 * lora, lora_dropout=0.05, task_type="CAUSAL_LM"))
        return cls(mapper, lm, tokenizer, {**settings, "encoder": encoder, "feature_dim": int(feature_dim),
                                           "prefix_len": int(prefix_len), "hidden": int(hidden),
                                           "dropout": float(dropout), "lora": int(lora),
                                           "lm": "lm" if trained else str(Path(lm_path).resolve()),
                                           "lm_trained": trained})

    @property
    def encoder(self):
        if self._encoder is None:
            import terravl.models as models

            self._encoder = models.load(self.settings["encoder"])
            if hasattr(self._encoder, "use_memory"):
                self._encoder.use_memory = bool(self.settings.get("encoder_memory", False))
        return self._encoder

    # -- sequences ------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: str) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        ids = bos + self._ids(prompt)
        limit = int(self.settings["max_question_tokens"]) + len(self._ids(QUESTION_TEMPLATE.format(""))) + 1
        if len(ids) > limit:
            raise InputError("question", f"is {len(ids)} tokens long; the limit is "
                                         f"{self.settings['max_question_tokens']} tokens")
        return ids

    def target_ids(self, text: str) -> list[int]:
        return self._ids(" " + " ".join(str(text).split())) + [self.tokenizer.eos_token_id]

    def _prefix(self, features) -> torch.Tensor:
        features = torch.as_tensor(np.asarray(features, dtype=np.float32) if not torch.is_tensor(features)
                                   else features, dtype=torch.float32)
        if features.ndim != 2 or features.shape[1] != int(self.settings["feature_dim"]):
            raise InputError("features", f"expected (N, {self.settings['feature_dim']}) image features, got "
                                         f"{tuple(features.shape)}")
        device = self.lm.get_input_embeddings().weight.device
        return self.mapper(features.to(device))

    def loss(self, features, prompts: Sequence[str], targets: Sequence[str]) -> torch.Tensor:
        """Mean next-token cross-entropy on the targets (prefix and prompt tokens are not scored)."""
        return self.loss_from_ids(features, [self.prompt_ids(p) for p in prompts],
                                  [self.target_ids(t) for t in targets])

    def loss_from_ids(self, features, prompt_ids: list[list[int]], target_ids: list[list[int]]) -> torch.Tensor:
        inputs, mask, p = self._teacher_forced(features, prompt_ids, target_ids)
        labels = torch.full(mask.shape, -100, dtype=torch.long)
        for i, (a, b) in enumerate(zip(prompt_ids, target_ids)):
            labels[i, p + len(a): p + len(a) + len(b)] = torch.tensor(b)
        return self.lm(inputs_embeds=inputs, attention_mask=mask, labels=labels.to(inputs.device)).loss

    def _teacher_forced(self, features, prompt_ids: list[list[int]], target_ids: list[list[int]]
                        ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(input embeddings, attention mask, prefix length) of prefix + prompt + target rows, right-padded."""
        prefix = self._prefix(features)
        embed = self.lm.get_input_embeddings()
        device, p = prefix.device, prefix.shape[1]
        width = max(len(a) + len(b) for a, b in zip(prompt_ids, target_ids))
        tokens = torch.full((len(prompt_ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompt_ids), p + width), dtype=torch.long)
        for i, (a, b) in enumerate(zip(prompt_ids, target_ids)):
            tokens[i, : len(a) + len(b)] = torch.tensor(a + b)
            mask[i, : p + len(a) + len(b)] = 1
        return torch.cat([prefix, embed(tokens.to(device))], dim=1), mask.to(device), p

    @torch.inference_mode()
    def answer_logprobs(self, features, prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                        batch_size: int = 64) -> list[np.ndarray]:
        """Log-probability of each candidate answer (all its tokens and the end of text) after each row's prompt:
        the bridge's own confidence in answers that something else proposed, so that its vote can be weighed
        against other evidence. One array per row, in the order of ``candidates[row]``."""
        if not (len(features) == len(prompts) == len(candidates)):
            raise InputError("candidates", f"{len(features)} images, {len(prompts)} prompts and "
                                           f"{len(candidates)} candidate lists")
        pairs = [(row, self.prompt_ids(prompts[row]), self.target_ids(c))
                 for row in range(len(candidates)) for c in candidates[row]]
        scores = self._score_pairs(features, np.array([r for r, _, _ in pairs], dtype=np.int64),
                                   [a for _, a, _ in pairs], [b for _, _, b in pairs], batch_size)
        out, at = [], 0
        for row in range(len(candidates)):
            out.append(scores[at:at + len(candidates[row])])
            at += len(candidates[row])
        return out

    @torch.inference_mode()
    def text_logprobs(self, features, texts: Sequence[str], rows: Sequence[int] | None = None,
                      prompt: str = CAPTION_PROMPT, batch_size: int = 256, progress: bool | None = None
                      ) -> np.ndarray:
        """Summed log-probability of each ``texts[j]`` (its tokens and the end of text) after ``prompt``, given the
        image of feature row ``rows[j]`` (default: row ``j``): how well a text describes an image in the
        captioner's eyes, the score that re-ranks a dual encoder's candidates (:mod:`terravl.tasks.rerank`).

        Pairs are scored in batches of similar length; a text longer than the language model's positions hold is
        cut to fit. ``progress`` shows a bar on stderr (default: for more than 256 pairs on a terminal)."""
        rows = np.arange(len(texts)) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(rows) != len(texts):
            raise InputError("rows", f"{len(rows)} image rows for {len(texts)} texts")
        if len(texts) and (rows.min() < 0 or rows.max() >= len(features)):
            raise InputError("rows", f"an image row outside the {len(features)} feature rows")
        pid = self.prompt_ids(prompt)
        positions = getattr(self.lm.config, "n_positions", None) or getattr(self.lm.config,
                                                                             "max_position_embeddings", 1024)
        room = max(1, int(positions) - int(self.settings["prefix_len"]) - len(pid))
        tids = [self.target_ids(t)[:room] for t in texts]
        return self._score_pairs(features, rows, [pid] * len(tids), tids, batch_size, by_length=True,
                                 progress=progress)

    def _score_pairs(self, features, rows: np.ndarray, prompt_ids: list[list[int]], target_ids: list[list[int]],
                     batch_size: int, by_length: bool = False, progress: bool | None = False) -> np.ndarray:
        """:meth:`_sequence_logprobs` of each (feature row, prompt, target) in batches, in input order; with
        ``by_length`` the batches group targets of similar length (less padding)."""
        if not torch.is_tensor(features):
            features = torch.as_tensor(np.asarray(features, dtype=np.float32))
        out = np.zeros(len(target_ids), dtype=np.float64)
        order = np.argsort([len(t) for t in target_ids], kind="stable") if by_length else np.arange(len(target_ids))
        was_training = self.training
        self.eval()
        bar = progress_bar(len(order), progress, "scoring texts")
        try:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                out[chunk] = self._sequence_logprobs(features[torch.as_tensor(rows[chunk])],
                                                     [prompt_ids[j] for j in chunk], [target_ids[j] for j in chunk])
                bar.update(len(chunk))
        finally:
            bar.close()
            self.train(was_training)
        return out

    def _sequence_logprobs(self, features, prompt_ids: list[list[int]], target_ids: list[list[int]]) -> np.ndarray:
        """Summed log-probability of each target sequence (teacher forcing)."""
        inputs, mask, p = self._teacher_forced(features, prompt_ids, target_ids)
        logits = self.lm(inputs_embeds=inputs, attention_mask=mask).logits
        out = np.zeros(len(prompt_ids), dtype=np.float64)
        for i, (a, b) in enumerate(zip(prompt_ids, target_ids)):
            at = p + len(a) - 1  # the position whose output predicts the first target token
            steps = logits[i, at:at + len(b)].float()  # only the scored positions get a softmax (vocabularies are big)
            picked = torch.log_softmax(steps, dim=-1)[torch.arange(len(b), device=steps.device),
                                                      torch.tensor(b, device=steps.device)]
            out[i] = float(picked.sum())
        return out

    # -- generation -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, features, prompts: Sequence[str] | str = CAPTION_PROMPT, beams: int | None = None,
                 max_tokens: int | None = None, length_penalty: float | None = None, batch_size: int = 64,
                 progress: bool | None = None) -> list[str]:
        """Deterministic decoding (greedy for ``beams=1``, else beam search with ``length_penalty``) of one text
        per feature row; ``prompts`` is one prompt for all rows or one per row. ``progress`` shows a bar on
        stderr (default: for more than 256 rows on a terminal)."""
        n = len(features)
        prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
        if len(prompts) != n:
            raise InputError("prompts", f"{len(prompts)} prompts for {n} images")
        beams = int(beams or self.settings["beams"])
        max_tokens = int(max_tokens or self.settings["max_tokens"])
        if beams < 1:
            raise InputError("beams", "must be at least 1")
        if max_tokens < 1:
            raise InputError("max_tokens", "must be at least 1")
        ids = [self.prompt_ids(p) for p in prompts]
        was_training = self.training
        self.eval()
        out: list[str] = []
        bar = progress_bar(n, progress, "generating")
        try:
            for start in range(0, n, batch_size):
                out.extend(self._generate_batch(features[start:start + batch_size], ids[start:start + batch_size],
                                                beams, max_tokens,
                                                float(length_penalty if length_penalty is not None
                                                      else self.settings["length_penalty"])))
                bar.update(min(batch_size, n - start))
        finally:
            bar.close()
            self.train(was_training)
        return out

    def _generate_batch(self, features, ids: list[list[int]], beams: int, max_tokens: int, length_penalty: float
                        ) -> list[str]:
        prefix = self._prefix(features)
        embed = self.lm.get_input_embeddings()
        device, p = prefix.device, prefix.shape[1]
        width = max(len(a) for a in ids)
        inputs = torch.zeros((len(ids), p + width, prefix.shape[2]), dtype=prefix.dtype, device=device)
        mask = torch.zeros((len(ids), p + width), dtype=torch.long, device=device)
        for i, a in enumerate(ids):  # left padding: every row ends where generation starts
            pad = width - len(a)
            inputs[i, pad: pad + p] = prefix[i]
            inputs[i, pad + p:] = embed(torch.tensor(a, device=device))
            mask[i, pad:] = 1
        generated = self.lm.generate(inputs_embeds=inputs, attention_mask=mask, max_new_tokens=max_tokens,
                                     num_beams=beams, length_penalty=length_penalty, do_sample=False,
                                     early_stopping=beams > 1, eos_token_id=self.tokenizer.eos_token_id,
                                     pad_token_id=self.tokenizer.pad_token_id)
        return [tidy(t) for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.mapper.state_dict().items()},
                  str(folder / BRIDGE_FILE))
        settings = {**self.settings, **(extra or {})}
        if settings["lm_trained"]:
            if hasattr(self.lm, "merge_and_unload"):  # LoRA: fold the adapters into the base weights for good
                self.lm = self.lm.merge_and_unload()
            self.lm.save_pretrained(folder / "lm")
            self.tokenizer.save_pretrained(folder / "lm")
            settings["lm"] = "lm"
        (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device | None = None) -> "Captioner":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _quiet_transformers()
        folder = Path(folder)
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text())
        except FileNotFoundError:
            raise CheckpointError(folder, f"not a captioner folder (no {SETTINGS_FILE})") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(folder / SETTINGS_FILE, f"unreadable ({exc})") from None
        if not isinstance(settings, dict) or not isinstance(settings.get("lm", "lm"), str):
            raise CheckpointError(folder / SETTINGS_FILE, "not captioner settings (a JSON object whose 'lm' is a "
                                                          "folder name)")
        lm_path = Path(settings.get("lm", "lm"))
        lm_path = lm_path if lm_path.is_absolute() else folder / lm_path
        if not (lm_path / "config.json").is_file():
            raise CheckpointError(lm_path, "language model folder not found (needs config.json and weights)")
        try:
            lm = AutoModelForCausalLM.from_pretrained(lm_path, dtype=torch.float32, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(lm_path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(lm_path, f"could not load the language model ({exc})") from None
        settings = {**settings, "lm_trained": bool(settings.get("lm_trained", True)), "lora": 0}
        lm_dim = lm.get_input_embeddings().embedding_dim
        mapper = PrefixMapper(int(settings["feature_dim"]), lm_dim, int(settings["prefix_len"]),
                              int(settings["hidden"]), float(settings.get("dropout", 0.1)))
        load_into(mapper, read_state_dict(folder / BRIDGE_FILE), folder / BRIDGE_FILE)
        model = cls(mapper, lm, tokenizer, settings).eval()
        model.name = str(settings.get("name", folder.name))
        if device is not None:
            model.to(device)
        return model
