"""What every training loop shares: flat settings read from YAML or the command line, and seeding."""

from __future__ import annotations

import random
from dataclasses import fields

import numpy as np
import torch


def settings_from_dict(cls, values: dict):
    """``cls(**values)`` for a settings dataclass, refusing unknown keys by name (typos must not pass silently)."""
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
    return cls(**values)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a torch generator for the loop's own sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
