"""FAISS, imported so that its OpenMP threads stop spinning soon after a search.

The faiss-cpu wheels bundle their own copy of libgomp, which reads ``GOMP_SPINCOUNT`` once, when it loads. By
default it keeps each thread spinning for 300,000 pause loops after a parallel section, which is milliseconds on
recent Xeons. After a single query's search those threads hold the cores that the next piece of work needs: the
next query's text encoding, or another server worker's request. Loading FAISS with a spin count of
:data:`SPIN_COUNT` cut a loop of whole searches from 6.4–6.7 to 5.4–5.5 ms p50 on the 1M × 384 benchmark archive
(2 cores, alternating runs; README, "Uncached search under 5 ms").

Two ways in, because FAISS does not always run on its own libgomp:

- :func:`load_faiss` sets the variable only while FAISS loads, and removes it right after, so a library user's
  PyTorch never sees it. That reaches FAISS when PyTorch is not loaded. PyTorch loads its libgomp with
  ``RTLD_GLOBAL``; once it is in the process, FAISS's OpenMP calls resolve to PyTorch's copy, which read its
  settings when PyTorch loaded.
- :func:`openmp_spin_default` sets it for the whole process. The ``terravl`` command does this at start for the
  commands that answer queries (``search``, ``kb``, ``serve``, ``mcp``, ``chat``), before anything loads, so their
  searches get it whichever libgomp runs them. PyTorch's work did not change measurably there (a small MLP's
  training steps and ResNet-18 inference, 2 cores, within run-to-run noise); training commands keep the default.

A ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` that the user set is left alone by both.
"""

from __future__ import annotations

import os
import sys
import threading
from types import ModuleType

SPIN_COUNT = 3000
"""Pause loops an idle FAISS OpenMP thread spins before it sleeps (libgomp's default: 300,000). A loop of whole
searches measured the same at 0, 3,000 and 30,000; waking a sleeping thread costs microseconds."""
USER_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
_LOCK = threading.Lock()


def _user_setting() -> bool:
    return any(name in os.environ for name in USER_SETTINGS)


def openmp_spin_default() -> None:
    """Give every libgomp this process loads from now on :data:`SPIN_COUNT` (unless the user set one). For a
    program's start only: before any thread runs and before PyTorch or FAISS load."""
    if not _user_setting():
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)


def load_sets_environment() -> bool:
    """Whether :func:`load_faiss` would still set the environment: FAISS not loaded yet and no spin setting
    present (the ``terravl`` command's query processes have one from the start)."""
    return "faiss" not in sys.modules and not _user_setting()


def load_faiss() -> ModuleType:
    """The ``faiss`` module, imported (once) with :data:`SPIN_COUNT` as its OpenMP spin count.

    The variable lives in the environment for the length of the import. Call this before starting other threads
    that may read the environment (the CLI's warm-up thread, the server's pools): a C ``getenv`` running at the
    moment ``setenv`` grows the environment can read freed memory."""
    with _LOCK:
        if not load_sets_environment():
            import faiss

            return faiss
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
        try:
            import faiss
        finally:
            os.environ.pop("GOMP_SPINCOUNT", None)
        return faiss
