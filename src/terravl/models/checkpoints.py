"""Read checkpoint files in the variants found in the wild, and load them into a model with clear errors.

Variants: a bare state dict; ``{"state_dict": …}`` or ``{"model": …}`` (training checkpoints); keys prefixed by
``module.`` (DataParallel/DDP); ``.safetensors`` files. Pickled checkpoints
are read with ``weights_only=True``, so a checkpoint can never run code on load.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from terravl.errors import InputError


class CheckpointError(InputError):
    """A checkpoint that cannot be read, or whose keys or shapes do not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file as a flat state dict with wrapper keys and ``module.`` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(path), device="cpu")
        else:
            raw = _torch_load(path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for damaged files
        raise CheckpointError(path, f"unreadable or corrupted checkpoint ({exc.__class__.__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return unwrap_state_dict(raw, path)


def _torch_load(path: Path) -> object:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("constants.pkl") for name in archive.namelist()):
                raise CheckpointError(path, "is a TorchScript archive (OpenAI's original release); use the open_clip "
                                            "or Hugging Face packaging of those weights instead")
    return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_state_dict(raw: object, source: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """Strip the wrappers training code puts around a state dict."""
    for key in ("state_dict", "model", "module"):
        if isinstance(raw, dict) and key in raw and isinstance(raw[key], dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError(source, "holds no state dict (expected a mapping of parameter names to tensors)")
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(source, "holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path,
              ignore: tuple[str, ...] = ()) -> None:
    """Load ``state_dict`` into ``model`` strictly; any missing, unexpected or mis-shaped key is an error that
    lists them (the first few of each), so a wrong architecture is never loaded silently."""
    expected = model.state_dict()
    sd = {k: v for k, v in state_dict.items() if k not in ignore}
    missing = sorted(k for k in expected if k not in sd)
    unexpected = sorted(k for k in sd if k not in expected)
    mismatched = sorted(f"{k} {tuple(sd[k].shape)} ≠ {tuple(expected[k].shape)}" for k in sd
                        if k in expected and sd[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:6])}{' …' if len(keys) > 6 else ''}")
        raise CheckpointError(source, "does not fit the architecture — " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
