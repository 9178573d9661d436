"""Build training data from a user's own region (``terravl datasets build``): caption sets from rasters and
OpenStreetMap or other vector data (SkyScript's recipe), and instruction data from caption sets (RS-GPT4V/GAIA).

Exports load on first use: ``terravl datasets inspect`` imports this package's readers, and must not pay for the
builders (shapely, pyproj, the tiler) when it only reads."""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {"CaptionBuild": "captions", "build_captions": "captions", "InstructionBuild": "instructions",
            "build_instructions": "instructions", "Whitelist": "tags", "load_whitelist": "tags"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"terravl.datasets.builder.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'terravl.datasets.builder' has no attribute {name!r}")
