"""Text queries without PyTorch: a TerraVL model's text side as ONNX Runtime + numpy.

A TerraVL dual encoder embeds a text as MiniLM (frozen; its ONNX twin, :mod:`terravl.models.text_onnx`) → the
model's text projection → (when the model has one) the blend with its caption memory's text side
(:func:`terravl.models.terravl_encoder.blend_text_with_memory`) → L2 normalisation. Once the MiniLM graph is
exported and the model's weight fingerprint recorded (both happen the first time the full model runs here), a
text query needs neither PyTorch (about 3 s to import) nor the image tower: :func:`open_text_encoder` gives an
object with the same ``encode_texts`` (same numbers: tested against the full encoder) for ``terravl search`` and
knowledge-base queries. Nothing here imports PyTorch; when anything is missing it returns None and the caller
loads the full model, which prepares the files for next time.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "terravl_config.json"
FINGERPRINTS = "fingerprints.json"
LIGHT_ENV = "TERRAVL_LIGHT_TEXT"
"""``0`` turns this path off (the full model answers text queries too): to compare, or to rule it out."""
_LOCK = threading.Lock()


def file_key(weights_file: str | Path) -> str:
    """Path, size, inode, and modification and change times: a file replaced or rewritten in any way (a copy that
    keeps the modification time still gets a new inode or change time) no longer matches."""
    weights_file = Path(weights_file)
    stat = weights_file.stat()
    return f"{weights_file.resolve()}|{stat.st_size}|{stat.st_ino}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"


def record_fingerprint(weights_file: str | Path, fingerprint: str, key: str | None = None) -> None:
    """Remember the weights fingerprint of a model file beside the ONNX graphs (keyed by :func:`file_key`), so that
    a later process can check an index's recorded fingerprint without loading the model. ``key``: the file's key
    taken before its weights were read; nothing is recorded if the file changed since."""
    from terravl.models.text_onnx import onnx_dir

    if not fingerprint:
        return
    try:
        now = file_key(weights_file)
        if key is not None and key != now:
            return
        key = now
        folder = onnx_dir()
        with _LOCK:
            known = _read(folder)
            if known.get(key) == fingerprint:
                return
            folder.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=folder, prefix=".fingerprints-", suffix=".json")
            with os.fdopen(handle, "w") as out:
                json.dump({**known, key: fingerprint}, out, indent=1)
            os.replace(tmp, folder / FINGERPRINTS)
    except OSError:  # a read-only home: the full model is simply loaded next time too
        pass


def _read(folder: Path) -> dict:
    try:
        value = json.loads((folder / FINGERPRINTS).read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def recorded_fingerprint(weights_file: str | Path) -> str | None:
    from terravl.models.text_onnx import onnx_dir

    try:
        return _read(onnx_dir()).get(file_key(weights_file))
    except OSError:
        return None


class LightTextEncoder:
    """``encode_texts`` of a TerraVL model on ONNX Runtime and numpy (no image side). Stateless between calls."""

    def __init__(self, name: str, source: str, tower, weights: list[tuple[np.ndarray, np.ndarray]],
                 embed_dim: int, fingerprint: str, memory: "TextMemory | None" = None):
        self.name, self.source, self.tower, self.layers = name, source, tower, weights
        self.embed_dim = embed_dim
        self.memory = memory
        self._terravl_weights_fingerprint = fingerprint  # read by feature_cache.encoder_fingerprint

    @property
    def text_memory_settings(self) -> dict | None:
        """The config's ``memory.text`` when texts read the caption memory (what a knowledge base records)."""
        return self.memory.settings if self.memory is not None else None

    def encode_texts(self, texts, batch_size: int = 256) -> np.ndarray:
        """(N, D) L2-normalised float32 embeddings, as :meth:`terravl.models.encoder.Encoder.encode_texts`."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        out = []
        for start in range(0, len(texts), batch_size):
            x = self.tower.run(texts[start:start + batch_size]).astype(np.float32)
            for n, (weight, bias) in enumerate(self.layers):
                x = x @ weight.T + bias
                if n < len(self.layers) - 1:  # nn.GELU() (exact, erf) between the MLP's two layers
                    x = 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
            x = _unit(x)
            out.append(_unit(self.memory.blend(x)) if self.memory is not None else x)
        return np.concatenate(out).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class TextMemory:
    """The caption memory's text side in numpy, the same arithmetic as
    :func:`terravl.models.terravl_encoder.blend_text_with_memory` (float32 rows as the model holds them: int8
    codes times their row's scale)."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, settings: dict):
        self.keys, self.values, self.settings = keys, values, dict(settings)
        self.k = min(int(settings["k"]), len(values))
        self.tau, self.beta = float(settings["tau"]), float(settings["beta"])

    def blend(self, text: np.ndarray) -> np.ndarray:
        """A few texts (a query) are multiplied by numpy's own loop, not BLAS: OpenBLAS's second thread keeps
        spinning after a call and takes a core from the FAISS search that follows (with a BLAS product over all
        memory rows even cached queries, which never come here, were 0.5 ms slower: MODEL_CARD.md). The
        projection before it (one 384 × 384 product) still uses BLAS; it was not measured for the same effect."""
        if len(text) <= 16:
            sims = np.einsum("nd,cd->nc", text, self.values)  # no BLAS (einsum's default optimize=False)
        else:
            sims = text @ self.values.T
        top = np.argpartition(-sims, self.k - 1, axis=1)[:, :self.k]
        logits = np.take_along_axis(sims, top, axis=1) / self.tau
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        neighbours = _unit(np.einsum("nk,nkd->nd", weights, self.keys[top]))
        return self.beta * text + (1 - self.beta) * neighbours

    @classmethod
    def read(cls, weights_file: Path, settings: dict) -> "TextMemory":
        """The text side's rows of a model file."""
        from safetensors import safe_open

        with safe_open(str(weights_file), framework="numpy") as f:
            def rows(name: str) -> np.ndarray:
                return f.get_tensor(name).astype(np.float32) * f.get_tensor(f"{name}_scale").astype(np.float32)

            keys, values = rows("memory_text_keys"), rows("memory_text_values")
        return cls(keys, values, settings)


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x)


def _folder(name: str) -> tuple[Path, str, str] | None:
    """(model folder, registry name, canonical source) of a TerraVL-family model, or None."""
    from terravl.models.registry import get_config, names, resolve_weights
    from terravl.models.sources import FILE_PREFIX, REGISTRY_PREFIX, parse_source

    source = parse_source(name, names())  # the full loader's reading of the name: a registered name comes first
    if source.prefix == FILE_PREFIX:
        path = source.path
        return (path, path.name, str(path.resolve())) if path.is_dir() else None
    if source.prefix != REGISTRY_PREFIX:
        return None
    cfg = get_config(source.target)
    if cfg.family != "terravl":
        return None
    folder = Path(resolve_weights(cfg))
    return (folder, cfg.name, cfg.name) if folder.is_dir() else None


def open_text_encoder(name: str, threads: int | None = None) -> LightTextEncoder | None:
    """The PyTorch-free text side of the TerraVL model ``name`` (a registry name or a model folder), or None when
    it cannot serve here: not a TerraVL model, ``TERRAVL_TEXT_BACKEND=torch`` or ``TERRAVL_LIGHT_TEXT=0``, the
    MiniLM graph not exported yet, the weights' fingerprint not recorded yet, or anything unreadable.
    ``threads``: of its ONNX session (default :func:`~terravl.models.text_onnx.cpu_threads`)."""
    from terravl.models.text_onnx import OnnxUnavailable, onnx_text_tower

    if not _switched_on():
        return None
    try:
        found = _folder(str(name))
        if found is None:
            return None
        folder, registry_name, source = found
        config = json.loads((folder / CONFIG_FILE).read_text())
        text = config["text"]
        if text.get("tower") != "all-MiniLM-L6-v2" or config.get("family", "terravl") != "terravl":
            return None
        fingerprint = recorded_fingerprint(folder / WEIGHTS_FILE)
        if not fingerprint:
            return None
        tower = onnx_text_tower(export_missing=False, threads=threads)
        layers, memory = _weights(folder / WEIGHTS_FILE, str(text["projection"]),
                                  (config.get("memory") or {}).get("text"))
        dim = int(config["embed_dim"])
    except (Exception, OnnxUnavailable):  # noqa: BLE001 - anything amiss: the full loader answers, or names it
        return None
    return LightTextEncoder(registry_name, source, tower, layers, dim, fingerprint, memory)


_WEIGHTS: dict[tuple, tuple] = {}


def _weights(weights_file: Path, kind: str, memory: dict | None) -> tuple[list, "TextMemory | None"]:
    """(projection layers, text-side memory or None) of a model file, read once per file version
    (:func:`file_key`) and settings: ``search`` without an encoder opens the text side on every call, and the
    memory's rows took 4 ms of its 6 to read. Read-only arrays, shared by every encoder of that file."""
    key = (file_key(weights_file), kind, json.dumps(memory, sort_keys=True))
    with _LOCK:
        found = _WEIGHTS.get(key)
    if found is None:
        found = (_projection(weights_file, kind), TextMemory.read(weights_file, memory) if memory else None)
        with _LOCK:
            if len(_WEIGHTS) >= 8:  # a few models per process; never grows without bound
                _WEIGHTS.clear()
            _WEIGHTS[key] = found
    return found


def _projection(weights_file: Path, kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The text projection's (weight, bias) pairs as float32 (one for ``linear``, two for ``mlp``)."""
    from safetensors import safe_open

    prefixes = {"linear": ["text_projection"], "mlp": ["text_projection.0", "text_projection.2"]}.get(kind)
    if prefixes is None:
        raise ValueError(f"unknown text projection {kind!r}")
    with safe_open(str(weights_file), framework="numpy") as f:
        return [(f.get_tensor(f"{p}.weight").astype(np.float32), f.get_tensor(f"{p}.bias").astype(np.float32))
                for p in prefixes]


def warm_up() -> None:
    """Load the exported MiniLM graph now (ONNX Runtime's import and session set-up, ~0.5 s of a cold process), for
    a caller that runs it in a background thread while it imports the rest and opens its index; the later
    :func:`open_text_encoder` finds it loaded (one lock: it is never loaded twice). Silent: whatever fails here
    fails again, and is handled, where the encoder is opened."""
    try:
        from terravl.models.text_onnx import onnx_text_tower

        if _switched_on():
            onnx_text_tower(export_missing=False)
    except Exception:  # noqa: BLE001 - see above (OnnxUnavailable is an Exception too)
        pass


def _switched_on() -> bool:
    """Neither ``TERRAVL_LIGHT_TEXT=0`` nor ``TERRAVL_TEXT_BACKEND=torch`` (a bad backend setting: off too; the
    full loader reports it)."""
    from terravl.models.text_onnx import text_backend

    if os.environ.get(LIGHT_ENV, "1").strip() == "0":
        return False
    try:
        return text_backend() != "torch"
    except ValueError:
        return False


def query_encoder(name: str, text_only: bool = True):
    """The encoder for queries of an index or knowledge base built with ``name``: for text alone its PyTorch-free
    text side when that can serve (:func:`open_text_encoder`), else (or when images are embedded too,
    ``text_only=False``) the full model."""
    light = open_text_encoder(name) if text_only else None
    if light is not None:
        return light
    from terravl.models.factory import load

    return load(name)
