"""Issue 22 "Hardening", index part: a damaged index is a clear error (CLI) and an unavailable index (server), never
a traceback or a 500 (#10); read-only indexes open read-only (#11); two files with identical pixels keep both
locations (#12); a build whose writes fail stops with one line, exit 1, and keeps what it committed (#5)."""

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

import terravl.models as m
from fakedata import write_geotiff, write_image
from terravl.cli.main import main
from terravl.index import IndexCorruptError, IndexStore, IndexWriteError, TileRow, build_index, check_index
from terravl.index.store import DB_FILE
from terravl.tasks import search


@pytest.fixture()
def archive(tmp_path) -> Path:
    folder = tmp_path / "archive"
    folder.mkdir()
    for i in range(5):
        write_image(folder / f"scene_{i}.png", 48, 48, seed=i)
    return folder


@pytest.fixture()
def index(tmp_path, archive, tiny_model) -> Path:
    out = tmp_path / "idx"
    build_index([archive], m.load(tiny_model), out, tile_size=128, batch_size=2)
    return out


def _page_of(index: Path, table: str) -> int:
    """The root page of ``table`` in the index database."""
    with sqlite3.connect(index / DB_FILE) as conn:
        return conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]


def _damage(index: Path, page: int) -> bytes:
    """Overwrite page ``page`` (1-based) of the closed index database with garbage; returns the original file."""
    db = index / DB_FILE
    original = db.read_bytes()
    with sqlite3.connect(db) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0  # all checkpointed
    with open(db, "r+b") as fh:
        fh.seek((page - 1) * size)
        fh.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    return original


def _one_clear_line(err: str, index: Path) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(index) in lines[0]
    return lines[0]


# -- #10: a damaged index -----------------------------------------------------------------------------------
@pytest.mark.parametrize("table", ["tiles", "meta", "tiles_source"])
def test_a_damaged_index_is_one_clear_line_from_info_and_search(index, table, capsys):
    assert main(["index", "check", str(index)]) == 0
    capsys.readouterr()
    _damage(index, _page_of(index, table))
    for argv in (["index", "info", str(index)], ["search", str(index), "a river"]):
        assert main(argv) == 2, argv
        line = _one_clear_line(capsys.readouterr().err, index)
        assert "corrupt index database" in line and "terravl index build" in line and "index check" in line
    assert main(["index", "check", str(index), "--format", "json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and result["problems"] and result["index"] == str(index)


def test_damage_found_mid_search_is_a_typed_error_and_reported(tmp_path):
    """A page the open check does not read (a middle leaf of the tiles table) is found by the read that needs it."""
    store = IndexStore(tmp_path / "big", create=True, model="m", dim=32)
    rng = np.random.default_rng(0)
    store.add([TileRow(f"h{i}", f"/data/{i}.png", None, None, None, None, None, rng.normal(size=32))
               for i in range(600)])
    store.close()
    with sqlite3.connect(tmp_path / "big" / DB_FILE) as conn:
        leaves = [p for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE name = 'tiles' AND pagetype = 'leaf' "
                                             "ORDER BY path")]
    assert len(leaves) >= 5
    _damage(tmp_path / "big", leaves[len(leaves) // 2])
    found = []
    store = IndexStore(tmp_path / "big", readonly=True)  # the cheap check passes: root and end leaves are sound
    store.on_damage = found.append
    with pytest.raises(IndexCorruptError, match="corrupt index database"):
        store.vectors()
    assert len(found) == 1 and str(tmp_path / "big") in str(found[0])
    assert check_index(tmp_path / "big")["ok"] is False


def test_a_served_index_that_is_damaged_is_unavailable_not_500(index):
    from fastapi.testclient import TestClient

    from terravl.server import create_app

    app = create_app([index], preload=False, workers=1)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        original = _damage(index, _page_of(index, "tiles"))
        response = client.get("/api/v1/search", params={"q": "a river", "k": 3})
        assert response.status_code == 503, response.text
        assert "unavailable" in response.json()["error"]["message"] and str(index) not in response.text
        ready = client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "unavailable" and list(body["unavailable"]) == ["idx"]
        assert "damaged" in body["unavailable"]["idx"] and str(index) not in ready.text
        assert client.get("/api/v1/search", params={"q": "a river"}).status_code == 503
        (index / DB_FILE).write_bytes(original)  # restored from a backup: served again
        assert client.get("/readyz").status_code == 200
        assert len(client.get("/api/v1/search", params={"q": "a river", "k": 3}).json()) == 3


def test_check_of_a_sound_index_and_of_a_file_that_is_not_a_database(index, tmp_path, capsys):
    assert main(["index", "check", str(index), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"index": str(index), "ok": True, "tiles": 5, "problems": []}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / DB_FILE).write_bytes(b"garbage" * 1000)
    assert main(["index", "check", str(bad)]) == 1
    assert "damaged" in capsys.readouterr().err
    assert main(["index", "check", str(tmp_path / "none")]) == 2


# -- #11: read-only indexes ---------------------------------------------------------------------------------
def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_readonly_store_never_writes(index, tiny_model):
    before = _digest(index)
    store = IndexStore(index, readonly=True)
    assert store.readonly and store.db.execute("PRAGMA query_only").fetchone()[0] == 1
    assert store.info()["count"] == 5
    assert len(search(store, text="a river", k=2, encoder=m.load(tiny_model))) == 2
    with pytest.raises(IndexWriteError, match="read-only"):
        store.remove_source("/anything")
    with pytest.raises(IndexWriteError, match="read-only"):
        store.log_problem("x", "y")
    with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only"):
        store.db.execute("INSERT INTO problems VALUES ('x', 'y', 0)")
    store.close()
    assert {k: v for k, v in _digest(index).items() if k == DB_FILE} == {DB_FILE: before[DB_FILE]}


def test_an_index_in_a_folder_that_cannot_be_written_opens_immutable(index, tiny_model, monkeypatch, capsys):
    """Where the folder cannot be written (a read-only mount), no -wal/-shm is needed or created."""
    import terravl.index.store as store_module

    real_access = os.access
    monkeypatch.setattr(store_module.os, "access",
                        lambda p, mode, **kw: False if mode & os.W_OK and Path(p).resolve().is_relative_to(index)
                        else real_access(p, mode, **kw))
    assert sorted(p.name for p in index.iterdir()) == [DB_FILE]
    store = IndexStore(index)  # the default opens read-only where it cannot write
    assert store.readonly and store.immutable
    assert len(search(store, text="a harbor", k=5, encoder=m.load(tiny_model))) == 5
    store.close()
    assert main(["index", "info", str(index), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 5
    assert main(["search", str(index), "a harbor", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5
    assert main(["index", "check", str(index)]) == 0
    assert sorted(p.name for p in index.iterdir()) == [DB_FILE]  # no -wal, no -shm


# -- #12: identical pixels in two files ----------------------------------------------------------------------
def test_removing_one_of_two_identical_files_keeps_the_other(tmp_path, tiny_model, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_image(folder / "industrial_203.png", 48, 48, seed=203)
    shutil.copy(folder / "industrial_203.png", folder / "industrial_205.png")
    write_image(folder / "other.png", 48, 48, seed=7)
    out = tmp_path / "idx"
    report = build_index([folder], m.load(tiny_model), out, tile_size=128)
    assert (report.files, report.tiles_seen, report.added, report.skipped_existing) == (3, 3, 2, 1)
    info = IndexStore(out).info()
    assert (info["count"], info["sources"], info["locations"]) == (2, 3, 3)
    first = str((folder / "industrial_203.png").resolve())
    second = str((folder / "industrial_205.png").resolve())
    assert main(["index", "remove", str(out), str(folder / "industrial_203.png"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 2  # the pixels are still indexed, under the other name
    hit = search(out, image=folder / "industrial_205.png", k=1, encoder=m.load(tiny_model))[0]
    assert hit.path == second and hit.score == pytest.approx(1.0, abs=1e-5)
    assert IndexStore(out).locations(hit.id) == [{"path": second, "window": None}]
    assert all(h.path != first for h in search(out, text="x", k=10, encoder=m.load(tiny_model)))
    assert main(["index", "remove", str(out), str(folder / "industrial_205.png"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 1
    assert check_index(out)["ok"]


def test_identical_pixels_added_in_a_later_run_and_georeferenced_tiles_move_with_their_location(tmp_path,
                                                                                                tiny_model):
    pixels = np.random.default_rng(3).integers(0, 256, (3, 100, 100), dtype=np.uint8)
    a = write_geotiff(tmp_path / "a.tif", 100, 100, data=pixels)
    b = write_geotiff(tmp_path / "b.tif", 100, 100, data=pixels, crs="EPSG:4326",
                      transform=Affine(0.001, 0, 10.0, 0, -0.001, 50.0))
    encoder = m.load(tiny_model)
    out = tmp_path / "idx"
    assert build_index([a], encoder, out, tile_size=64).added == 1
    again = build_index([b], encoder, out, tile_size=64)  # a later run: same pixels elsewhere
    assert (again.added, again.skipped_existing) == (0, 1)
    store = IndexStore(out)
    assert store.info()["locations"] == 2
    store.remove_source(str(a.resolve()))
    assert store.count() == 1
    hits = search(store, text="x", k=1, encoder=encoder, bbox=(9.9, 49.8, 10.2, 50.1))  # b's footprint
    assert [h.path for h in hits] == [str(b.resolve())] and hits[0].crs
    store.close()


def test_an_index_written_before_locations_existed_opens_and_is_upgraded(index, archive, tiny_model):
    with sqlite3.connect(index / DB_FILE) as conn:  # as today's released code wrote it: schema 1, no locations
        conn.execute("DROP TABLE locations")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    old = IndexStore(index, readonly=True)
    assert not old.has_locations and old.info()["count"] == 5 and old.info()["sources"] == 5
    old.close()
    store = IndexStore(index)
    assert store.meta()["schema"] == 2 and store.info()["locations"] == 5
    assert store.remove_source(str((archive / "scene_0.png").resolve())) == 1 and store.count() == 4
    store.close()
    assert check_index(index)["ok"]


# -- #5: a build whose writes fail -------------------------------------------------------------------------
def test_a_full_disk_mid_build_is_one_line_exit_1_and_keeps_what_was_committed(tmp_path, archive, tiny_model,
                                                                              monkeypatch, capsys):
    real = IndexStore._bump_version
    calls = []

    def full_after_first_batch(self):
        calls.append(1)
        if len(calls) > 1:
            raise sqlite3.OperationalError("database or disk is full")
        real(self)

    monkeypatch.setattr(IndexStore, "_bump_version", full_after_first_batch)
    out = tmp_path / "idx"
    assert main(["index", "build", str(archive), "--out", str(out), "--model", str(tiny_model), "--batch-size",
                 "2"]) == 1
    line = _one_clear_line(capsys.readouterr().err, out)
    assert "database or disk is full" in line and "2 tiles of this run were committed" in line
    monkeypatch.undo()
    assert main(["index", "info", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 2
    assert check_index(out)["ok"]
    # the library says the same, and its report counts only what was committed
    calls.clear()
    monkeypatch.setattr(IndexStore, "_bump_version", full_after_first_batch)
    with pytest.raises(IndexWriteError) as caught:
        build_index([archive], m.load(tiny_model), tmp_path / "idx2", batch_size=2)
    assert caught.value.report.added == 2 and caught.value.report.tiles_seen >= 2


def test_an_output_that_cannot_be_created_is_one_line_exit_1(tmp_path, archive, tiny_model, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["index", "build", str(archive), "--out", str(blocker / "idx"), "--model", str(tiny_model)]) == 1
    line = _one_clear_line(capsys.readouterr().err, blocker / "idx")
    assert "cannot create the index folder" in line
