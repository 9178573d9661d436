"""Loading what a command will need while it does other start-up work: a cold `terravl search` or `kb query` spends
~0.5 s in ONNX Runtime's import and session set-up for the text tower, which overlaps with importing the rest of
the command and opening the index (measured: a cold search 1.80 → 1.16 s)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def text_tower_warming(enabled: bool = True) -> Iterator[None]:
    """Load the PyTorch-free text tower (:func:`terravl.models.light_text.warm_up`) in a thread for the duration
    of the block; the query's encoder takes that tower (one lock, never loaded twice). FAISS is loaded first when
    loading it sets an environment variable (:mod:`terravl.index.faiss_runtime`), which must not happen while the
    thread runs. The block's exit waits for the thread, so ONNX Runtime is never left mid-set-up when the process
    exits."""
    if not enabled:
        yield
        return

    def run() -> None:
        from terravl.models.light_text import warm_up  # imported here: the command's thread does not wait for it

        warm_up()

    from terravl.index.faiss_runtime import load_faiss, load_sets_environment

    if load_sets_environment():  # then FAISS loads before the thread, which reads the environment
        load_faiss()
    thread = threading.Thread(target=run, name="terravl-text-warm-up", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
