"""Packages whose public names are imported on first use.

``import terravl.models`` (or ``.tasks``, ``.index``) must not import PyTorch, the raster stack and every
capability: a text search needs a few of their parts, and a cold process pays about 3 s for PyTorch alone.
"""

from __future__ import annotations

import importlib
import sys
import types


def lazy_exports(package: str, exports: dict[str, str]) -> None:
    """Make ``package`` answer each name of ``exports`` (name → submodule) from that submodule, importing it on
    first use. The names are answered by the module's class, not stored: several capabilities share their
    module's name (``terravl.tasks.change`` holds ``change``), and importing such a submodule sets the package
    attribute to the module, which a stored value would not survive."""

    class LazyPackage(types.ModuleType):
        def __getattribute__(self, name: str):
            module = exports.get(name)
            if module is not None:
                return getattr(importlib.import_module(f"{package}.{module}"), name)
            return super().__getattribute__(name)

    sys.modules[package].__class__ = LazyPackage
