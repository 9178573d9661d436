"""Shared fixtures: tiny rasters and datasets written per test, and the real samples in ../shared/data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from terravl import config  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$TERRAVL_SHARED/data``); tests that need it skip with the reason when absent."""
    shared = config.shared_dir()
    if shared is None or not (shared / "data").is_dir():
        pytest.skip("the shared data folder is absent (set TERRAVL_SHARED to the folder holding data/)")
    return shared / "data"


@pytest.fixture(scope="session")
def samples() -> Path:
    return config.samples_dir()


@pytest.fixture(scope="session")
def onnx_graphs(tmp_path_factory) -> Path:
    """One folder of exported ONNX text towers for the whole run: the export (a few seconds) happens once, in the
    first test that encodes a text, not in every test's fresh home."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch, onnx_graphs):
    """Every test gets its own empty TERRAVL_HOME, so nothing on the developer's machine leaks in."""
    monkeypatch.setenv("TERRAVL_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setenv("TERRAVL_ONNX_DIR", str(onnx_graphs))
    monkeypatch.delenv("TERRAVL_TEXT_BACKEND", raising=False)
    monkeypatch.delenv("TERRAVL_IMAGE_BACKEND", raising=False)
    monkeypatch.delenv("TERRAVL_LIGHT_TEXT", raising=False)
    monkeypatch.delenv("TERRAVL_MAX_PIXELS", raising=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random OpenCLIP ViT saved as a bare state dict: loads through the real checkpoint code in a second."""
    import torch

    from fakedata import tiny_open_clip

    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(tiny_open_clip("vit", seed=1).state_dict(), path)
    return path
