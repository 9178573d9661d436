"""FAISS's OpenMP threads sleep soon after a search, so they do not hold the cores the next piece of work needs;
a user's own OpenMP setting wins; the setting does not stay in the environment of a library user's process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from terravl.index import faiss_runtime

IDLE_CPU = """
import json, os, time
import numpy as np
from terravl.index.faiss_runtime import load_faiss
faiss = load_faiss()
left = "GOMP_SPINCOUNT" in os.environ and "GOMP_SPINCOUNT" not in {given!r}
faiss.omp_set_num_threads(2)
x = np.random.default_rng(0).standard_normal((20000, 64)).astype(np.float32)
index = faiss.IndexFlatIP(64)
index.add(x)
idle = []
for _ in range(7):
    index.search(x[:64], 5)  # one parallel section over the 64 queries
    start = time.process_time()
    time.sleep(0.05)  # CPU time the process burns while it has nothing to do: its threads spinning
    idle.append(time.process_time() - start)
print(json.dumps({{"idle_ms": 1000 * sorted(idle)[3], "left_in_environment": left,
                  "torch": "torch" in __import__("sys").modules}}))
"""


def _idle(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in faiss_runtime.USER_SETTINGS}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", IDLE_CPU.format(given=sorted(env_extra))], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_faiss_threads_sleep_after_a_search_unless_the_user_asks_them_to_spin():
    ours = _idle({})
    default = _idle({"GOMP_SPINCOUNT": "300000"})  # libgomp's own default, as a user's setting: left alone
    spinning = _idle({"OMP_WAIT_POLICY": "active"})  # the user's setting: threads spin until the next section
    assert not ours["torch"] and not ours["left_in_environment"]  # set only while FAISS loaded
    assert ours["idle_ms"] < default["idle_ms"] / 2.5, (ours, default)  # here about 0.3-1 against 5 ms
    assert spinning["idle_ms"] > 5 * max(ours["idle_ms"], 1.0), spinning  # left alone: threads spin the whole sleep


def test_the_command_sets_the_spin_count_for_its_process_unless_the_user_did(monkeypatch):
    for name in faiss_runtime.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    faiss_runtime.openmp_spin_default()
    assert os.environ["GOMP_SPINCOUNT"] == str(faiss_runtime.SPIN_COUNT)
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    faiss_runtime.openmp_spin_default()
    assert "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.setenv("GOMP_SPINCOUNT", "12")
    faiss_runtime.openmp_spin_default()
    assert os.environ["GOMP_SPINCOUNT"] == "12"


def test_the_console_script_runs_entry():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "terravl"]
    assert script.value == "terravl.cli.main:entry"


def test_only_the_query_commands_set_it(monkeypatch):
    from terravl.cli import main as cli_main

    calls = []
    monkeypatch.setattr(faiss_runtime, "openmp_spin_default", lambda: calls.append(True))
    monkeypatch.setattr(cli_main, "main", lambda argv=None: 0)
    for argv, expected in ((["search", "a.idx", "harbour"], 1), (["serve", "a.idx"], 1), (["kb", "query", "k", "q"], 1),
                           (["train", "clip"], 0), (["index", "build", "x"], 0), (["--help"], 0)):
        calls.clear()
        assert cli_main.entry(argv) == 0
        assert len(calls) == expected, argv
