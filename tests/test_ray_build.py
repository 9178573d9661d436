"""``index build --ray``: the Ray build gives the same index as the single-process one, survives a killed worker
(every tile exactly once) and a killed driver (a re-run completes the index). One local Ray cluster per module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray

import terravl.models as m
from fakedata import write_geotiff, write_image
from terravl.errors import InputError
from terravl.index import IndexStore, build_index
from terravl.index.ray_build import RayBuild, RaySettings, build_index_ray



@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture()
def archive(tmp_path) -> Path:
    folder = tmp_path / "archive"
    folder.mkdir()
    for i in range(10):
        write_image(folder / f"scene_{i}.png", 48, 48, seed=i)
    write_image(folder / "copy_of_3.png", 48, 48, seed=3)                    # same pixels as scene_3
    write_geotiff(folder / "big_20200611.tif", 300, 200, count=3, seed=9)    # 3 × 2 tiles of 128
    (folder / "notes.tif").write_bytes(b"not a tiff")                        # a problem, and the build goes on
    return folder


def _read(db) -> tuple[dict, set]:
    tiles = {h: np.frombuffer(v, dtype=np.float32) for h, v in db.execute("SELECT content_hash, vector FROM tiles")}
    locations = list(db.execute("SELECT source, window FROM locations"))
    assert len(locations) == len(set(locations))
    return tiles, set(locations)


def _index(out: Path) -> tuple[dict, set]:
    with IndexStore(out) as store:
        return _read(store.db)


def test_ray_build_equals_the_single_process_build(cluster, tmp_path, archive, tiny_model):
    single = build_index([archive], m.load(tiny_model), tmp_path / "single", tile_size=128, batch_size=4)
    report = build_index_ray([archive], str(tiny_model), tmp_path / "ray", tile_size=128, batch_size=4,
                             settings=RaySettings(num_actors=2, cpus_per_actor=0.5, decode_cpus=0.25))
    assert report.to_dict() == {**single.to_dict(), "problems": report.to_dict()["problems"]}
    assert report.files == 13 and report.added == 16 and report.skipped_existing == 1
    assert [p.path for p in report.problems] == [p.path for p in single.problems] == [str(archive / "notes.tif")]
    tiles_a, where_a = _index(tmp_path / "single")
    tiles_b, where_b = _index(tmp_path / "ray")
    assert tiles_a.keys() == tiles_b.keys() and where_a == where_b and len(where_b) == 17
    for h, v in tiles_a.items():
        np.testing.assert_allclose(tiles_b[h], v, atol=1e-5)
    with IndexStore(tmp_path / "ray") as store:
        assert store.model == str(tiny_model.resolve()) and [p["path"] for p in store.problems()] == \
            [str(archive / "notes.tif")]
    again = build_index_ray([archive], str(tiny_model), tmp_path / "ray", tile_size=128, batch_size=4)
    assert again.added == 0 and again.skipped_existing == 17  # a re-run adds nothing


def test_a_killed_embedding_worker_loses_and_repeats_nothing(cluster, tmp_path, tiny_model):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(48):
        write_image(folder / f"s{i:02d}.png", 40, 40, seed=100 + i)
    killed = []

    def kill_once(_n: int) -> None:
        if not killed:  # after the first committed batch: SIGKILL the worker process of an embedding actor
            pid = ray.get(build.actors[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    build = RayBuild([folder], str(tiny_model), tmp_path / "idx", batch_size=4,
                     settings=RaySettings(num_actors=1, cpus_per_actor=1, decode_cpus=0.5), progress=kill_once)
    report = build.run()
    assert killed and report.added == 48 and report.skipped_existing == 0 and report.problems == []
    tiles, where = _index(tmp_path / "idx")
    assert len(tiles) == 48 and len(where) == 48


def test_a_killed_driver_leaves_an_index_a_rerun_completes(cluster, tmp_path, tiny_model):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        write_image(folder / f"s{i:02d}.png", 40, 40, seed=200 + i)
    out = tmp_path / "idx"
    script = (f"import time\nfrom terravl.index.ray_build import build_index_ray, RaySettings\n"
              f"build_index_ray([{str(folder)!r}], {str(tiny_model)!r}, {str(out)!r}, batch_size=2, "
              f"settings=RaySettings(address={cluster!r}, num_actors=1, cpus_per_actor=0.5, decode_cpus=0.25), "
              f"progress=lambda n: time.sleep(0.3))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if out.is_dir():
            try:
                with IndexStore(out, readonly=True) as store:
                    committed = store.count()
            except Exception:  # noqa: BLE001 - not created yet
                committed = 0
        if committed >= 4:
            break
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.kill()  # SIGKILL: no clean-up of any kind
    proc.wait()
    with IndexStore(out, readonly=True) as store:
        partial = store.count()
    assert 4 <= partial < 60
    report = build_index_ray([folder], str(tiny_model), out, batch_size=8)
    assert report.added == 60 - partial and report.skipped_existing == partial
    tiles, where = _index(out)
    assert len(tiles) == 60 and len(where) == 60


def test_cli_ray_build_json(cluster, tmp_path, archive, tiny_model, capsys):
    from terravl.cli.main import main

    out = tmp_path / "idx"
    assert main(["index", "build", str(archive), "--out", str(out), "--model", str(tiny_model), "--tile-size", "128",
                 "--ray", "auto", "--num-actors", "1", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["added"] == 16 and result["files"] == 13 and result["problems"][0]["path"].endswith("notes.tif")
    assert main(["index", "build", str(archive), "--out", str(out), "--ray", "auto", "--num-actors", "0"]) == 2
    assert "--num-actors" in capsys.readouterr().err


def test_actors_that_would_leave_no_cpu_for_decoding_are_refused(cluster, tmp_path, archive, tiny_model):
    with pytest.raises(InputError) as err:  # 2 actors × 1 CPU on a 2-CPU cluster: decoding could never run
        build_index_ray([archive], str(tiny_model), tmp_path / "idx", settings=RaySettings(num_actors=2))
    assert err.value.source == "--num-actors" and "decoding needs" in err.value.message


def test_a_model_the_actors_cannot_load_is_named(cluster, tmp_path, archive):
    with pytest.raises(InputError) as err:
        build_index_ray([archive], str(tmp_path / "missing.pt"), tmp_path / "idx",
                        settings=RaySettings(num_actors=1, max_restarts=0, max_task_retries=0))
    assert err.value.source == "--model" and "missing.pt" in err.value.message


def test_without_ray_the_error_says_how_to_install_it(monkeypatch, tmp_path, archive, tiny_model):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError) as err:
        build_index_ray([archive], str(tiny_model), tmp_path / "idx")
    assert "pip install 'terravl[ray]'" in err.value.message
