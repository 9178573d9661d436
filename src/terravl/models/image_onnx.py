"""TerraVL's image towers run by ONNX Runtime on the CPU.

PyTorch runs a small CNN layer by layer; ONNX Runtime fuses convolution, batch norm and activation and picks
faster depthwise kernels: EfficientNet-Lite0 at 112 px (terravl-default v3) encodes about 1.6× as many images per
second on 2 cores (``benchmarks/bench_encoder.py`` prints both backends). The numbers are the same: the graph is
exported from the model's own tower once, checked against it on fixed pixels (cosine ≥ :data:`PARITY_MIN` for
every image, else it is not used), and kept beside the text graph in ``$TERRAVL_ONNX_DIR`` (default
``$TERRAVL_HOME/onnx``). The caption memory's blending stays in PyTorch (it is a few matrix products).

``TERRAVL_IMAGE_BACKEND`` chooses: ``auto`` (default: ONNX Runtime on the CPU for fp32 towers when it is installed
and the export passes, else PyTorch), ``onnx`` (fail loudly when it cannot be used) or ``torch``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from terravl.errors import InputError
from terravl.models.text_onnx import OnnxUnavailable, cpu_session, onnx_dir

log = logging.getLogger(__name__)

BACKEND_ENV = "TERRAVL_IMAGE_BACKEND"
BACKENDS = ("auto", "onnx", "torch")
PARITY_MIN = 0.9999
PARITY_IMAGES = 6


def image_backend() -> str:
    """The backend asked for by ``TERRAVL_IMAGE_BACKEND`` (validated)."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise InputError(BACKEND_ENV, f"must be one of {', '.join(BACKENDS)}, got {value!r}")
    return value


def graph_name(tower: torch.nn.Module, resolution: int) -> str:
    """File name of ``tower``'s graph: keyed on its weights (every tensor), the input size and the torch and
    onnxruntime versions, so retrained weights or an upgrade export again."""
    import onnxruntime

    digest = hashlib.sha256()
    for name, tensor in tower.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(f"{torch.__version__}|{onnxruntime.__version__}|{resolution}".encode())
    return f"image-{digest.hexdigest()[:16]}.onnx"


class OnnxImageTower:
    """(B, 3, R, R) normalised pixels → (B, D) tower output, like the PyTorch tower in evaluation mode, run by
    ONNX Runtime. Thread-safe (one session serves every thread)."""

    def __init__(self, path: str | Path):
        self.session = cpu_session(path)
        self.path = Path(path)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixels.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {"pixels": array})[0])


def parity_pixels(resolution: int) -> torch.Tensor:
    """Fixed inputs for the parity check: smooth random scenes (low-frequency noise, as photographs are) in the
    normalised range, the same every time."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(PARITY_IMAGES, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(resolution, resolution), mode="bilinear",
                                           align_corners=False)


def parity(tower: torch.nn.Module, candidate: OnnxImageTower, resolution: int) -> float:
    """Lowest cosine between the two towers' outputs on :func:`parity_pixels`, as one batch and one by one."""
    pixels = parity_pixels(resolution)
    with torch.inference_mode():
        reference = tower(pixels).float()
    worst = 1.0
    for got in (candidate(pixels), torch.cat([candidate(p[None]) for p in pixels])):
        worst = min(worst, float(torch.nn.functional.cosine_similarity(reference, got, dim=-1).min()))
    return worst


def export(tower: torch.nn.Module, path: Path, resolution: int) -> float:
    """Export ``tower`` (evaluation mode) to ``path`` atomically after checking ONNX Runtime reproduces it;
    returns the lowest parity cosine. Raises :class:`OnnxUnavailable` when it does not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".export-", suffix=".onnx")
    os.close(handle)
    try:
        log.warning("exporting the image tower to ONNX (once, a few seconds): %s", path)
        example = parity_pixels(resolution)[:2]
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(tower, (example,), tmp, input_names=["pixels"], output_names=["embedding"],
                              dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17,
                              dynamo=False)
        cosine = parity(tower, OnnxImageTower(tmp), resolution)
        if cosine < PARITY_MIN:
            raise OnnxUnavailable(f"ONNX Runtime output differs from PyTorch's (cosine {cosine:.6f} < {PARITY_MIN})")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps({"parity_cosine": cosine, "images": PARITY_IMAGES}))
        return cosine
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_LOCK = threading.Lock()
_LOADED: dict[str, OnnxImageTower] = {}


def onnx_image_tower(tower: torch.nn.Module, resolution: int, folder: str | Path | None = None) -> OnnxImageTower:
    """The ONNX twin of ``tower`` (a CPU fp32 module) at ``resolution``: exported and parity-checked on first use,
    then read from ``folder`` (default :func:`~terravl.models.text_onnx.onnx_dir`); one per graph and process.
    Raises :class:`OnnxUnavailable` with the reason when it cannot be used."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise OnnxUnavailable("onnxruntime is not installed (pip install onnxruntime onnx)") from exc
    path = Path(folder or onnx_dir()) / graph_name(tower, resolution)
    key = str(path)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        if not (path.exists() and path.with_suffix(".json").exists()):
            try:
                cosine = export(tower.eval(), path, resolution)
            except OnnxUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - any export failure means "use PyTorch", said once
                raise OnnxUnavailable(f"could not export the image tower to {path} ({type(exc).__name__}: "
                                      f"{exc})") from exc
            log.info("exported the image tower to %s (parity cosine %.6f)", path, cosine)
        try:
            runner = OnnxImageTower(path)
        except Exception as exc:  # noqa: BLE001 - a damaged cached graph: say so and let the caller fall back
            raise OnnxUnavailable(f"could not load {path} ({type(exc).__name__}: {exc}); delete it to export "
                                  f"again") from exc
        _LOADED[key] = runner
        return runner
