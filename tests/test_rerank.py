"""Second-stage ranking by the shipped captioner (terravl.tasks.rerank), on real UC Merced images it never saw."""

import json
import shutil

import numpy as np
import pytest

from terravl.errors import InputError
from terravl.tasks.rerank import Reranker, _standardise

# UCM val scenes (never trained on) of clearly different kinds, with their own first captions
CASES = {"airplane80.jpg": "There is an airplanes stopped at the airport .",
         "beach81.jpg": "This is a beach with blue-green sea and white sand .",
         "parkinglot80.jpg": "Lots of cars are very closed to each other in the parking lot .",
         "tenniscourt80.jpg": "Three tennis courts arranged neatly with some plants surrounded .",
         "harbor89.jpg": "Lots of boats docked at the harbor and the water is deep blue .",
         "forest88.jpg": "This is a dense forest with green and dark green plants ."}


@pytest.fixture(scope="module")
def captioner():
    import terravl.models as models

    return models.load_captioner("terravl-captioner")


def _paths(shared_data):
    root = shared_data / "ucm_captions" / "images"
    return [next(root.glob(f"*/{name}")) for name in CASES]


def test_text_logprobs_are_the_teacher_forced_likelihoods_of_the_pairs(captioner, shared_data):
    from terravl.models.bridge import CAPTION_PROMPT

    features = Reranker(captioner).image_features(_paths(shared_data)[:3])
    texts = list(CASES.values())[:3]
    rows = [2, 0, 1]
    got = captioner.text_logprobs(features, texts, rows=rows)
    want = [captioner.answer_logprobs(features[[r]], [CAPTION_PROMPT], [[t]])[0][0] for r, t in zip(rows, texts)]
    assert np.allclose(got, want, atol=1e-4)
    with pytest.raises(InputError, match="rows"):
        captioner.text_logprobs(features, texts, rows=[0, 1])
    with pytest.raises(InputError, match="rows"):
        captioner.text_logprobs(features, texts, rows=[0, 1, 3])


def test_a_wrong_encoder_order_is_put_right_within_the_candidates(captioner, shared_data):
    """Cosines that rank every caption's own image last among the candidates: the captioner, weighted strongly,
    puts them first; with weight 0 nothing moves; entries outside the candidates keep their values."""
    paths, texts = _paths(shared_data), list(CASES.values())
    n = len(paths)
    sim = 0.5 + 0.01 * np.random.default_rng(0).uniform(size=(n, n))
    np.fill_diagonal(sim, 0.1)  # each caption's own image below every other, and each image's own caption
    reranker = Reranker(captioner, images_per_text=n, texts_per_image=n, weight=5.0)
    features = reranker.image_features(paths)
    by_image, by_text = reranker.rerank_matrix(sim, features, texts)
    # without the captioner no own pair would be first; measured before writing these lines: 6 of 6 texts find
    # their image, 4 of 6 images their caption (the airplane and the tennis courts pick the parking lot's)
    assert (np.argmax(by_text, axis=0) == np.arange(n)).sum() >= n - 1
    assert (np.argmax(by_image, axis=1) == np.arange(n)).sum() >= n - 2
    still = Reranker(captioner, images_per_text=n, texts_per_image=n, weight=0.0)
    a, b = still.rerank_matrix(sim, features, texts)
    assert (np.argsort(-a, axis=1, kind="stable") == np.argsort(-sim, axis=1, kind="stable")).all()
    assert (np.argsort(-b, axis=0, kind="stable") == np.argsort(-sim, axis=0, kind="stable")).all()
    narrow = Reranker(captioner, images_per_text=2, texts_per_image=2, weight=5.0)
    by_image, by_text = narrow.rerank_matrix(sim, features, texts)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :2]
    for i in range(n):  # the same two candidates on top, the rest untouched
        assert set(np.argsort(-by_image[i], kind="stable")[:2]) == set(top[i])
        rest = np.setdiff1d(np.arange(n), top[i])
        assert np.array_equal(by_image[i, rest], sim[i, rest])
    top_t = np.argsort(-sim, axis=0, kind="stable")[:2]
    for j in range(n):
        assert set(np.argsort(-by_text[:, j], kind="stable")[:2]) == set(top_t[:, j])
        rest = np.setdiff1d(np.arange(n), top_t[:, j])
        assert np.array_equal(by_text[rest, j], sim[rest, j])


def test_candidates_are_ordered_by_the_sum_of_standardised_scores(captioner, shared_data):
    paths, texts = _paths(shared_data)[:4], list(CASES.values())[:4]
    rng = np.random.default_rng(0)
    sim = rng.uniform(0, 1, (4, 4))
    reranker = Reranker(captioner, images_per_text=3, texts_per_image=4, weight=0.7)
    features = reranker.image_features(paths)
    _, by_text = reranker.rerank_matrix(sim, features, texts)
    for j, text in enumerate(texts):
        cand = np.argsort(-sim[:, j], kind="stable")[:3]
        ll = captioner.text_logprobs(features, [text] * 3, rows=cand)
        key = _standardise(sim[cand, j][None])[0] + 0.7 * _standardise(ll[None])[0]
        assert list(np.argsort(-by_text[:, j], kind="stable")[:3]) == list(cand[np.argsort(-key, kind="stable")])
    by_image, _ = reranker.rerank_matrix(sim, features, texts)
    priors = reranker.text_priors(texts)
    assert priors.shape == (4,) and np.isfinite(priors).all()
    ll = captioner.text_logprobs(features, texts, rows=[0, 0, 0, 0])
    key = _standardise(sim[[0]])[0] + 0.7 * _standardise((ll - priors)[None])[0]
    assert list(np.argsort(-by_image[0], kind="stable")) == list(np.argsort(-key, kind="stable"))


def test_edge_inputs(captioner, shared_data):
    """No texts, one image, texts longer than the language model holds, and wrong arguments by name."""
    import terravl.models as models
    from terravl.tasks import search, search_captions

    reranker = Reranker(captioner)
    image = _paths(shared_data)[0]
    assert search_captions(image, [], models.load(), rerank=reranker) == []
    features = reranker.image_features([image])
    by_image, by_text = reranker.rerank_matrix(np.zeros((1, 0)), features, [])
    assert by_image.shape == by_text.shape == (1, 0)
    one = np.array([[0.3, 0.2]])
    by_image, by_text = reranker.rerank_matrix(one, features, ["a road", "a beach"])
    assert np.array_equal(by_text, one)  # one image: nothing to re-order for a text
    long = " ".join(["many white cars parked near the green trees"] * 60)
    assert np.isfinite(captioner.text_logprobs(features, [long], rows=[0])).all()
    with pytest.raises(InputError, match="rerank"):
        search("any.idx", image=image, rerank=reranker)
    with pytest.raises(InputError, match="rerank"):
        search_captions(image, ["a road"], models.load(), rerank=True)


@pytest.mark.parametrize("field, value", [("images_per_text", 0), ("texts_per_image", 1001), ("references", 1.5),
                                          ("weight", -1.0), ("weight", float("nan"))])
def test_bad_settings_are_refused_by_name(captioner, field, value):
    with pytest.raises(InputError, match=field):
        Reranker(captioner, **{field: value})


def test_search_and_caption_search_rerank_from_the_cli(captioner, shared_data, tmp_path, capsys, caplog):
    """`terravl search --rerank` re-orders the same top tiles; a tile whose file is gone is left unpromoted with a
    warning; an image query cannot be re-ranked (exit 2); --image --captions --rerank ranks captions."""
    from terravl.cli.main import main

    folder = tmp_path / "scenes"
    folder.mkdir()
    for p in _paths(shared_data):
        shutil.copy(p, folder / p.name)
    idx = tmp_path / "idx"
    assert main(["index", "build", str(folder), "--out", str(idx), "--format", "json"]) == 0
    capsys.readouterr()
    query = "many boats docked at the harbor"
    assert main(["search", str(idx), query, "--k", "6", "--format", "json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["search", str(idx), query, "--k", "3", "--rerank", "--format", "json"]) == 0
    reranked = json.loads(capsys.readouterr().out)
    from terravl.tasks import search

    expected = Reranker(captioner).rank_hits(query, search(idx, text=query, k=20))[:3]
    assert [h["id"] for h in reranked] == [h.id for h in expected]
    assert reranked[0]["path"].endswith("harbor89.jpg")
    cosine = {h["id"]: h["score"] for h in plain}
    assert all(abs(h["score"] - cosine[h["id"]]) < 1e-6 for h in reranked)  # scores stay cosines
    before = [h["path"] for h in plain].index(str(folder / "harbor89.jpg"))
    (folder / "harbor89.jpg").unlink()
    assert main(["search", str(idx), query, "--k", "6", "--rerank", "--format", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 6 and hits[before]["path"].endswith("harbor89.jpg")  # unread: left in its place
    assert "harbor89.jpg" in caplog.text and "not read" in caplog.text
    assert main(["search", str(idx), query, "--k", "1", "--rerank", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main(["search", str(idx), "--image", str(_paths(shared_data)[0]), "--rerank"]) == 2
    assert main(["search", str(idx), query, "--rerank-with", str(tmp_path / "no-such-captioner")]) == 2
    assert "no-such-captioner" in capsys.readouterr().err
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CASES.values()) + "\n")
    assert main(["search", str(idx), "--image", str(_paths(shared_data)[1]), "--captions", str(captions),
                 "--rerank", "--k", "2", "--format", "json"]) == 0
    matches = json.loads(capsys.readouterr().out)
    assert [m["rank"] for m in matches] == [1, 2] and matches[0]["caption"] == CASES["beach81.jpg"]


def test_eval_retrieval_rerank_keeps_the_plain_scores_beside(shared_data, tmp_path, capsys):
    from terravl.cli.main import main

    data = json.loads((shared_data / "ucm_captions" / "dataset_ucm_captions.json").read_text())
    kinds = ("denseresidential", "mediumresidential", "sparseresidential", "buildings")  # alike: not all found
    keep = [dict(im, filepath=str(shared_data / im["filepath"])) for im in data["images"]
            if im["split"] == "val" and im["class"] in kinds]
    keep = [im for k in kinds for im in [m for m in keep if m["class"] == k][:5]]
    path = tmp_path / "ucm_small.json"
    path.write_text(json.dumps({"dataset": "ucm_small", "images": keep}))
    assert main(["eval", "retrieval", "--dataset", str(path), "--split", "val", "--format", "json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["eval", "retrieval", "--dataset", str(path), "--split", "val", "--rerank", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["without_rerank"] == plain["scores"]
    assert result["rerank"]["captioner"] == "terravl-captioner" and result["rerank"]["references"] == 32
    s = result["scores"]
    assert list(s) == list(plain["scores"]) and all(0 <= v <= 100 for v in s.values())
    assert abs(s["mR"] - np.mean([v for k, v in s.items() if k != "mR"])) < 1e-9
    # the same figures from the parts: image→text from the matrix ranked per image, text→image per text
    import terravl.models as models
    from terravl.eval import retrieval_metrics

    encoder, reranker = models.load(), Reranker.load()
    paths = [shared_data / im["filepath"] / im["filename"] for im in keep]
    texts = [c["raw"] for im in keep for c in im["sentences"]]
    owner = np.repeat(np.arange(len(keep)), [len(im["sentences"]) for im in keep])
    sim = encoder.encode_images(paths) @ encoder.encode_texts(texts).T
    by_image, by_text = reranker.rerank_matrix(sim, reranker.image_features(paths), texts)
    i2t, t2i = retrieval_metrics(by_image, owner), retrieval_metrics(by_text, owner)
    for k in (1, 5, 10):
        assert s[f"i2t_R@{k}"] == pytest.approx(i2t[f"i2t_R@{k}"]) and s[f"t2i_R@{k}"] == pytest.approx(t2i[f"t2i_R@{k}"])
    assert s != result["without_rerank"]  # measured: re-ranking moves these recalls


def test_a_server_reads_only_local_tiles_when_reranking(captioner, shared_data, caplog):
    """The service's tile reader never fetches an object-store source with its credentials: such a hit keeps its
    place, unread, and the local ones are re-ranked around it."""
    from terravl.results import SearchHit
    from terravl.server.service import _served_tile_pixels

    paths = _paths(shared_data)[:4]
    hits = [SearchHit(id=i, path=str(p), score=0.5 - 0.01 * i) for i, p in enumerate(paths)]
    hits.insert(1, SearchHit(id=99, path="s3://bucket/scene.tif", score=0.495))
    ranked = Reranker(captioner, weight=5.0, read_tile=_served_tile_pixels).rank_hits(CASES["tenniscourt80.jpg"],
                                                                                   hits)
    assert ranked[1].id == 99 and "s3://bucket/scene.tif" in caplog.text
    assert sorted(h.id for h in ranked) == sorted(h.id for h in hits)
    assert ranked[0].path.endswith("tenniscourt80.jpg")


def test_rerank_with_refuses_what_is_not_a_captioner_before_any_search(tmp_path, capsys):
    """--rerank-with given a file, a folder without captioner.json, or a broken captioner.json: exit 2 naming it,
    before the index is even opened (the index path here does not exist)."""
    from terravl.cli.main import main

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "captioner.json").write_bytes(b'{"encoder": "../../etc/passwd", \xff')
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "captioner.json").write_text('["lm", "/etc"]')
    for target, words in ((broken, "captioner.json"), (listed, "not captioner settings"), (text, "not a captioner"),
                          (tmp_path, "not a captioner")):
        assert main(["search", str(tmp_path / "no-index"), "a beach", "--rerank-with", str(target)]) == 2
        err = capsys.readouterr().err
        assert words in err and str(target) in err, err


def test_a_plain_text_search_does_not_load_the_reranking_stack(shared_data, tmp_path):
    """A cold text search must not pay for re-ranking it did not ask for: no raster stack, no rerank module."""
    import subprocess
    import sys

    import terravl.models as models
    from terravl.index import build_index

    idx = tmp_path / "idx"
    build_index(_paths(shared_data)[:2], models.load(), idx)
    code = ("import sys; from terravl.tasks import search; search(sys.argv[1], text='a beach', k=1); "
            "print(sorted(m for m in ('rasterio', 'terravl.io', 'terravl.tasks.rerank') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(idx)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_tiles_encoded_in_several_batches_rank_the_same(captioner, shared_data, monkeypatch):
    """An index of large tiles: the read tiles are encoded whenever their pixels pass a bound, not all held at
    once; the order is the one a single batch gives."""
    import terravl.tasks.rerank as rerank
    from terravl.results import SearchHit

    hits = [SearchHit(id=i, path=str(p), score=0.5 - 0.01 * i) for i, p in enumerate(_paths(shared_data))]
    reranker = Reranker(captioner, weight=3.0)
    once = [h.id for h in reranker.rank_hits(CASES["harbor89.jpg"], hits)]
    monkeypatch.setattr(rerank, "PENDING_BYTES", 1)  # every tile on its own
    assert [h.id for h in reranker.rank_hits(CASES["harbor89.jpg"], hits)] == once
    assert once[0] == 4  # the harbour, fifth of six by cosine
