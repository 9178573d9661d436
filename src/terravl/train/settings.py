"""Flat training settings read from YAML or the command line (the loop itself, seeding included, is in
:mod:`terravl.train.loop`)."""

from __future__ import annotations

from dataclasses import fields


def settings_from_dict(cls, values: dict):
    """``cls(**values)`` for a settings dataclass, refusing unknown keys by name (typos must not pass silently)."""
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
    return cls(**values)
