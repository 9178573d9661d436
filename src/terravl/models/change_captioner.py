"""Change captioning (LEVIR-CC style): the captioning bridge of :mod:`terravl.models.bridge` fed with both dates.

A frozen image encoder embeds the before and after images; the two pooled vectors are fused into one (by default
``[f_a, f_b, f_b − f_a, |f_b − f_a|]``: what each date shows, and what moved, with its sign and its size) and the
bridge's :class:`~terravl.models.bridge.PrefixMapper` turns the fused vector into the language model's prefix.
The fused vector is standardised with the training pairs' per-dimension mean and spread (``fusion_stats.
safetensors``): an encoder's features of two dates share a large common part, and the difference that names the
change is small beside it (cosine ≈ 0.93 to 0.99 between the dates of a pair), too small for the mapping to pick
up at a useful learning rate unless it is brought to unit scale. Everything else (decoder, tokenizer, loss,
decoding, the folder layout) is the captioner's, so a change captioner is a :class:`~terravl.models.bridge.
Captioner` whose ``captioner.json`` also says ``"task": "change-caption"``, the fusion and the encoder's feature
size. Train one with ``terravl train change-caption --dataset LEVIR_CC_DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from terravl.errors import InputError
from terravl.models.bridge import CAPTION_PROMPT, SETTINGS_FILE, Captioner
from terravl.models.checkpoints import CheckpointError, read_state_dict

TASK = "change-caption"
STATS_FILE = "fusion_stats.safetensors"

FUSIONS: dict[str, tuple[int, Callable[[np.ndarray, np.ndarray], list[np.ndarray]]]] = {
    "full": (4, lambda a, b: [a, b, b - a, np.abs(b - a)]),
    "concat": (2, lambda a, b: [a, b]),
    "diff": (2, lambda a, b: [b - a, np.abs(b - a)]),
}
"""Fusion name → (width in encoder dimensions, parts). ``concat`` leaves the difference to the MLP; ``diff`` drops
what the scene is, so it cannot name what appeared."""


def fusion_width(fusion: str, encoder_dim: int) -> int:
    """The fused vector's length for ``fusion`` over ``encoder_dim``-dimensional features."""
    if fusion not in FUSIONS:
        raise InputError("fusion", f"{fusion!r} is not a fusion; use one of {', '.join(FUSIONS)}")
    return FUSIONS[fusion][0] * int(encoder_dim)


def fuse(before: np.ndarray, after: np.ndarray, fusion: str = "full") -> np.ndarray:
    """(N, D) before and after features → (N, width) float32 fused features (row i pairs row i of each)."""
    before, after = np.asarray(before, dtype=np.float32), np.asarray(after, dtype=np.float32)
    if before.shape != after.shape or before.ndim != 2:
        raise InputError("features", f"before and after features must be two (N, D) arrays of one shape, got "
                                     f"{before.shape} and {after.shape}")
    fusion_width(fusion, before.shape[1])
    return np.concatenate(FUSIONS[fusion][1](before, after), axis=1).astype(np.float32, copy=False)


class ChangeCaptioner(Captioner):
    """A captioner over fused (before, after) features; :meth:`describe` is the one call a caller needs."""

    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def from_captioner(cls, captioner: Captioner, encoder: str, encoder_dim: int, fusion: str = "full",
                       train_features: np.ndarray | None = None) -> "ChangeCaptioner":
        """The change captioner made of a freshly built bridge (whose ``feature_dim`` is the fused width),
        standardising with the statistics of ``train_features`` (fused, not yet standardised) when given."""
        width = fusion_width(fusion, encoder_dim)
        if int(captioner.settings["feature_dim"]) != width:
            raise ValueError(f"the bridge takes {captioner.settings['feature_dim']} features; fusion {fusion!r} of "
                             f"{encoder_dim}-dimensional features gives {width}")
        settings = {**captioner.settings, "task": TASK, "fusion": fusion, "encoder": str(encoder),
                    "encoder_dim": int(encoder_dim)}
        model = cls(captioner.mapper, captioner.lm, captioner.tokenizer, settings, encoder=captioner._encoder)
        if train_features is not None and len(train_features):
            model.mean = train_features.mean(axis=0).astype(np.float32)
            model.std = np.maximum(train_features.std(axis=0), 1e-6).astype(np.float32)
        return model

    @property
    def fusion(self) -> str:
        return str(self.settings.get("fusion", "full"))

    def standardise(self, fused: np.ndarray) -> np.ndarray:
        """Fused features at the scale the mapping was trained on (unchanged for a model without statistics)."""
        fused = np.asarray(fused, dtype=np.float32)
        if self.mean is None or self.std is None:
            return fused
        if fused.ndim != 2 or fused.shape[1] != self.mean.shape[0]:
            raise InputError("features", f"expected (N, {self.mean.shape[0]}) fused features, got {fused.shape}")
        return (fused - self.mean) / self.std

    def fused(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Standardised fused features of encoder outputs, checked against the encoder size this model was
        trained on: what :meth:`generate` takes."""
        dim = int(self.settings["encoder_dim"])
        if np.ndim(before) != 2 or np.shape(before)[1] != dim:
            raise InputError("features", f"expected (N, {dim}) image features, got {np.shape(before)}")
        return self.standardise(fuse(before, after, self.fusion))

    def describe(self, befores: Sequence, afters: Sequence, beams: int | None = None,
                 max_tokens: int | None = None) -> list[str]:
        """One change caption per (before, after) pair of (H, W, 3) uint8 arrays (or anything the encoder
        reads); both dates go through the frozen encoder. Holds no state between calls."""
        befores, afters = list(befores), list(afters)
        if len(befores) != len(afters):
            raise InputError("afters", f"{len(afters)} after images for {len(befores)} before images")
        if not befores:
            return []
        encoder = self.encoder
        features = self.fused(encoder.encode_images(befores), encoder.encode_images(afters))
        return self.generate(features, CAPTION_PROMPT, beams=beams, max_tokens=max_tokens)

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        standardised = self.mean is not None and self.std is not None
        folder = super().save(folder, {**(extra or {}), "task": TASK, "standardised": standardised})
        if standardised:
            save_file({"mean": torch.from_numpy(self.mean), "std": torch.from_numpy(self.std)},
                      str(folder / STATS_FILE))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device | None = None) -> "ChangeCaptioner":
        """The change captioner in ``folder``; a plain captioner or anything else is a :class:`CheckpointError`
        (an :class:`InputError`) naming the folder."""
        folder = Path(folder)
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text())
        except FileNotFoundError:
            raise CheckpointError(folder, f"not a change captioner folder (no {SETTINGS_FILE}); give a folder "
                                          f"written by `terravl train change-caption`") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(folder / SETTINGS_FILE, f"unreadable ({exc})") from None
        if not isinstance(settings, dict) or settings.get("task") != TASK:
            raise CheckpointError(folder, "a captioner of single images, not a change captioner; give a folder "
                                          "written by `terravl train change-caption`")
        if settings.get("fusion", "full") not in FUSIONS or not isinstance(settings.get("encoder_dim"), int):
            raise CheckpointError(folder / SETTINGS_FILE, f"'fusion' must be one of {', '.join(FUSIONS)} and "
                                                          "'encoder_dim' a whole number")
        model = super().load(folder, device=device)
        if settings.get("standardised"):
            stats = read_state_dict(folder / STATS_FILE)
            width = int(settings["feature_dim"])
            if set(stats) != {"mean", "std"} or any(tuple(v.shape) != (width,) for v in stats.values()):
                raise CheckpointError(folder / STATS_FILE, f"expected 'mean' and 'std' of {width} values")
            model.mean, model.std = (stats[k].float().numpy() for k in ("mean", "std"))
        return model


def load_change_captioner(path_or_name: str | Path, device: str | torch.device | None = None) -> ChangeCaptioner:
    """A change captioner from a folder written by ``terravl train change-caption`` (or ``file:FOLDER``, or a
    name registered as a captioner, e.g. a folder in ``$TERRAVL_HOME/models``); a clear :class:`InputError` when
    it is missing or is not a change captioner."""
    from terravl.models.factory import _resolve_captioner
    from terravl.models.registry import names
    from terravl.models.sources import FILE_PREFIX, parse_source

    text = str(path_or_name)
    source = parse_source(path_or_name, names())
    if source.prefix != FILE_PREFIX and ("/" in text or "\\" in text) and ":" not in text.split("/")[0]:
        source = parse_source(Path(text))  # a path that does not exist: say so, not "unknown captioner"
    if source.prefix == FILE_PREFIX:
        folder = source.path
        if not folder.is_dir():
            raise InputError(folder, "no such change captioner folder" if not folder.exists() else
                             "a change captioner is a folder (written by `terravl train change-caption`)")
        name, canonical = folder.name, str(folder.resolve())
    else:
        folder, name, canonical = _resolve_captioner(source)
    model = ChangeCaptioner.load(folder, device=device)
    model.name, model.source = name, canonical
    return model
