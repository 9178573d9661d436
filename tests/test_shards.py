"""Sharded archives (issue 20, item 3): a set of shard indexes built in parallel, one writer each, searched together
with merged top-k — the same hits as one index over the same tiles — and served by ``terravl serve``."""

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import terravl.models as m
from fakedata import write_geotiff, write_image
from terravl.cli.main import main
from terravl.index import build_index
from terravl.index.shards import (SHARDS_FILE, ShardSet, assign_shard, build_sharded, global_id, is_sharded,
                                  read_manifest, split_id)
from terravl.index.store import DB_FILE, IndexOpenError
from terravl.errors import InputError
from terravl.tasks import search
import test_stac

catalog = test_stac.catalog  # the static STAC catalog fixture of the STAC tests
QUERIES = ["a river", "a harbor with many boats", "farmland", "x"]


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return m.load(tiny_model)


@pytest.fixture()
def archive(tmp_path) -> Path:
    """Ten small images (indexed whole) and a GeoTIFF cut into six 128 px tiles, dated 2020-06-11."""
    folder = tmp_path / "archive"
    folder.mkdir()
    for i in range(10):
        write_image(folder / f"scene_{i}.png", 48, 48, seed=i)
    write_geotiff(folder / "big_20200611.tif", 300, 200, count=3, seed=9)
    return folder


def _key(hits) -> list[tuple]:
    return [(h.path, json.dumps(h.window, sort_keys=True), h.acquired, h.content_hash) for h in hits]


def _same_hits(sharded, single) -> None:
    assert _key(sharded) == _key(single)
    np.testing.assert_allclose([h.score for h in sharded], [h.score for h in single], atol=1e-6)


def test_assignment_is_a_stable_hash_and_ids_compose():
    # sha1 of the name, not Python's salted hash(): the same in every process and on every machine
    assert [assign_shard(s, 7) for s in ("b", "/data/y.tif", "c")] == [1, 6, 0]
    assert all(0 <= assign_shard(f"/x/{i}.tif", 3) < 3 for i in range(100))
    assert len({assign_shard(f"/x/{i}.tif", 3) for i in range(100)}) == 3
    assert split_id(global_id(3, 17)) == (3, 17) and global_id(0, 17) == 17
    assert global_id(8191, (1 << 40) - 1) < 2 ** 53  # exact as a JSON number in JavaScript


def test_sharded_search_gives_the_same_hits_as_one_index(tmp_path, archive, encoder):
    single = tmp_path / "single"
    build_index([archive], encoder, single, tile_size=128, batch_size=4)
    sharded = tmp_path / "sharded"
    report = build_sharded([archive], encoder, sharded, shards=3, tile_size=128, batch_size=4)
    assert report.files == 11 and report.added == 16 and report.problems == []
    assert is_sharded(sharded) and not (sharded / DB_FILE).exists()
    manifest = read_manifest(sharded)
    assert manifest["shards"] == ["shard-000", "shard-001", "shard-002"]
    assert manifest["model"] == encoder.source and manifest["dim"] == 32
    with ShardSet(sharded) as shards:
        counts = [s.count() for s in shards.stores]
        assert sum(counts) == 16 and sum(c > 0 for c in counts) >= 2  # the merge really merges
        for no, store in enumerate(shards.stores):  # each file is in the shard its name hashes to
            assert {assign_shard(r, 3) for (r,) in store.db.execute("SELECT source FROM tiles")} <= {no}
    for text in QUERIES:
        for k in (1, 5, 16, 50):
            _same_hits(search(sharded, text=text, k=k, encoder=encoder), search(single, text=text, k=k, encoder=encoder))
    _same_hits(search(sharded, image=archive / "scene_3.png", k=4, encoder=encoder),
               search(single, image=archive / "scene_3.png", k=4, encoder=encoder))
    # filters, per shard, then merged
    hits = search(single, text="x", k=16, encoder=encoder)
    lon = next(h.footprint for h in hits if h.footprint)["coordinates"][0][0][0]
    box = (lon - 1, -90, lon + 1, 90)
    _same_hits(search(sharded, text="x", k=50, bbox=box, encoder=encoder),
               search(single, text="x", k=50, bbox=box, encoder=encoder))
    _same_hits(search(sharded, text="x", k=50, date_from="2020-06-01", encoder=encoder),
               search(single, text="x", k=50, date_from="2020-06-01", encoder=encoder))
    assert search(sharded, text="x", k=50, date_from="2021-01-01", encoder=encoder) == []
    # every hit's id names its shard and tile: the row it reads back is the hit
    with ShardSet(sharded) as shards:
        hits = search(shards, text="a river", k=16, encoder=encoder)
        assert len({h.id for h in hits}) == 16
        rows = shards.rows([h.id for h in hits])
        for hit in hits:
            store, local = shards.shard(hit.id)
            assert rows[hit.id].source == hit.path == store.rows([local])[local].source
        assert shards.rows([global_id(7, 1)]) == {}  # no such shard: no row, never an IndexError


def test_identical_pixels_in_two_shards_are_one_hit_as_in_one_index(tmp_path, encoder):
    folder = tmp_path / "dup"
    folder.mkdir()
    names = [f"copy_{i}.png" for i in range(40)]
    first = names[0]
    other = next(n for n in names if assign_shard(str((folder / n).resolve()), 2)
                 != assign_shard(str((folder / first).resolve()), 2))
    write_image(folder / first, 48, 48, seed=5)
    shutil.copy(folder / first, folder / other)
    for i in range(3):
        write_image(folder / f"else_{i}.png", 48, 48, seed=20 + i)
    build_index([folder], encoder, tmp_path / "single")
    build_sharded([folder], encoder, tmp_path / "sharded", shards=2)
    with ShardSet(tmp_path / "sharded") as shards:
        assert shards.count() == 5  # the copy is indexed once in each of its two shards
    for k in (1, 3, 4, 10):
        sharded = search(tmp_path / "sharded", image=folder / first, k=k, encoder=encoder)
        single = search(tmp_path / "single", image=folder / first, k=k, encoder=encoder)
        assert [h.content_hash for h in sharded] == [h.content_hash for h in single]
        assert len(sharded) == min(k, 4) and len({h.content_hash for h in sharded}) == len(sharded)


def test_a_rerun_resumes_every_shard_without_duplicates(tmp_path, archive, encoder, capsys):
    out = tmp_path / "idx"
    half = sorted(archive.glob("scene_*.png"))[:5]
    first = build_sharded(half, encoder, out, shards=3)
    assert first.added == 5
    whole = build_sharded([archive], encoder, out, tile_size=128)  # shards=None: the index's own count
    assert whole.added == 11 and whole.skipped_existing == 5
    again = build_sharded([archive], encoder, out, shards=3, tile_size=128)
    assert again.added == 0 and again.skipped_existing == 16 and again.files == 11
    with ShardSet(out) as shards:
        assert shards.count() == 16
        hashes = [r for s in shards.stores for (r,) in s.db.execute("SELECT content_hash FROM tiles")]
        assert len(hashes) == len(set(hashes)) == 16
    with pytest.raises(InputError, match="sharded index of 3 shards"):
        build_sharded([archive], encoder, out, shards=2)
    assert main(["index", "remove", str(out), str(archive / "scene_0.png"), "--format", "json"]) == 0
    removed = json.loads(capsys.readouterr().out)
    assert removed["removed"] == 1 and removed["count"] == 15
    build_index([archive], encoder, tmp_path / "one", tile_size=128)
    with pytest.raises(InputError, match="single"):
        build_sharded([archive], encoder, tmp_path / "one", shards=2)


def test_cli_builds_in_processes_and_reports_per_shard(tmp_path, archive, tiny_model, capsys, encoder):
    out = tmp_path / "idx"
    assert main(["index", "build", str(archive), "--out", str(out), "--shards", "2", "--model", str(tiny_model),
                 "--tile-size", "128", "--format", "json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["added"] == 16 and built["files"] == 11 and built["index"] == str(out)
    assert main(["index", "info", str(out), "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 16 and info["sharded"] is True and info["model"] == str(tiny_model.resolve())
    assert [s["name"] for s in info["shards"]] == ["shard-000", "shard-001"]
    assert sum(s["count"] for s in info["shards"]) == 16 and info["acquired"] == ["2020-06-11", "2020-06-11"]
    assert main(["index", "info", str(out)]) == 0
    assert "shard-001" in capsys.readouterr().out
    single = tmp_path / "single"
    build_index([archive], encoder, single, tile_size=128)
    found = []
    for idx in (out, single):
        assert main(["search", str(idx), "a river", "--k", "6", "--format", "json"]) == 0
        found.append(json.loads(capsys.readouterr().out))
    sharded_hits, single_hits = found
    assert [h["path"] for h in sharded_hits] == [h["path"] for h in single_hits]
    np.testing.assert_allclose([h["score"] for h in sharded_hits], [h["score"] for h in single_hits], atol=1e-6)
    assert main(["index", "check", str(out), "--format", "json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["ok"] is True and checked["tiles"] == 16 and len(checked["shards"]) == 2
    assert main(["index", "build", str(archive), "--out", str(out), "--shards", "3"]) == 2
    assert "--shards 2" in capsys.readouterr().err


def test_a_shard_with_another_model_is_refused_naming_it(tmp_path, archive, encoder, capsys):
    out = tmp_path / "idx"
    build_sharded([archive], encoder, out, shards=2, tile_size=128)
    db = sqlite3.connect(out / "shard-001" / DB_FILE)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'model'", (json.dumps("another-model"),))
    db.close()
    for argv in (["index", "info", str(out)], ["search", str(out), "a river"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "shard-001" in err and "another-model" in err, err
    assert main(["index", "check", str(out), "--format", "json"]) == 1
    checked = json.loads(capsys.readouterr().out)
    assert checked["ok"] is False and "shard-001" in " ".join(checked["problems"])
    with pytest.raises(IndexOpenError, match="shard-001"):
        ShardSet(out)
    # building into it with the other model is refused too, naming the shard
    with pytest.raises(InputError, match="shard-001"):
        build_sharded([archive], encoder, out, tile_size=128)


def test_a_damaged_shard_list_or_a_missing_shard_is_a_clear_error(tmp_path, archive, encoder, capsys):
    out = tmp_path / "idx"
    build_sharded([archive], encoder, out, shards=2, tile_size=128)
    (out / SHARDS_FILE).write_text("{not json", encoding="utf-8")
    assert main(["index", "info", str(out)]) == 2
    assert SHARDS_FILE in capsys.readouterr().err
    (out / SHARDS_FILE).write_text(json.dumps({"format": 1, "shards": ["../elsewhere"], "model": None, "dim": None}))
    assert main(["index", "info", str(out)]) == 2
    assert "inside the index" in capsys.readouterr().err
    (out / SHARDS_FILE).write_text(json.dumps({"format": 1, "shards": ["shard-000", "shard-001", "shard-002"],
                                               "model": None, "dim": None}))
    assert main(["search", str(out), "a river"]) == 2
    err = capsys.readouterr().err
    assert "shard-002" in err and "re-run" in err


def test_served_sharded_index_searches_thumbnails_and_recovers(tmp_path, archive, encoder):
    from fastapi.testclient import TestClient

    from terravl.server import create_app
    from terravl.server.guards import allowed_hosts

    out = tmp_path / "idx"
    build_sharded([archive], encoder, out, shards=3, tile_size=128)
    expected = search(out, text="a river", k=8, encoder=encoder)
    app = create_app([out], preload=False, workers=1, allowed_hosts=allowed_hosts("127.0.0.1", ["testserver"]))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/api/v1/indexes").json() == [{"name": "idx", "tiles": 16,
                                                         "model": read_manifest(out)["model"]}]
        response = client.get("/api/v1/search", params={"q": "a river", "k": 8})
        assert response.status_code == 200, response.text
        hits = response.json()
        assert [h["id"] for h in hits] == [h.id for h in expected]
        np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-6)
        assert any(split_id(h["id"])[0] > 0 for h in hits)  # ids of shards past the first
        for hit in hits:
            png = client.get(hit["thumbnail"], params={"size": 32})
            assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get(f"/api/v1/tiles/{global_id(9, 1)}").status_code == 404
        # image search by upload, merged the same way
        with open(archive / "scene_3.png", "rb") as fh:
            by_image = client.post("/api/v1/search", files={"image": ("q.png", fh.read())}, data={"k": "3"})
        assert by_image.status_code == 200, by_image.text
        assert by_image.json()[0]["id"] == search(out, image=archive / "scene_3.png", k=1, encoder=encoder)[0].id
        # a damaged shard makes the index unavailable (503), and a restored one is served again
        db = out / "shard-001" / DB_FILE
        original = db.read_bytes()
        db.write_bytes(b"garbage" * 1000)
        assert client.get("/api/v1/search", params={"q": "a river"}).status_code == 503
        assert client.get("/readyz").status_code == 503
        db.write_bytes(original)
        assert client.get("/readyz").status_code == 200
        assert len(client.get("/api/v1/search", params={"q": "a river", "k": 3}).json()) == 3


def test_a_stac_catalog_is_split_by_item_and_searched_as_one_index(catalog, tmp_path, encoder):
    """STAC items are expanded once (their band-stacking VRTs kept with the sharded index) and split among shards."""
    build_index([catalog["json"]], encoder, tmp_path / "single", tile_size=512)
    out = tmp_path / "sharded"
    report = build_sharded([catalog["json"]], encoder, out, shards=2, tile_size=512)
    assert report.files == 3 and report.added == 3 and report.problems == []
    assert len(list((out / "stac").glob("*.vrt"))) == 1
    hits = search(out, text="a river", k=3, encoder=encoder)
    single = search(tmp_path / "single", text="a river", k=3, encoder=encoder)
    assert [h.content_hash for h in hits] == [h.content_hash for h in single]  # a VRT's path is its index's own
    _same_hits([h for h in hits if not h.path.endswith(".vrt")], [h for h in single if not h.path.endswith(".vrt")])
    vrt = next(h for h in hits if h.path.endswith(".vrt"))
    assert Path(vrt.path).parent == (out / "stac").resolve() and vrt.acquired == "2009-08-18"
