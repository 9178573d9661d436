import json
import random

import numpy as np
import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from fakedata import tiny_open_clip, write_karpathy, write_levir_cc, write_rsvqa, write_scene_folders
from terravl.eval import (bleu, cider_d, classification_metrics, prepare, ptb_tokenize, retrieval_metrics, rouge_l,
                          score_captions, vqa_accuracy)
from terravl.eval.zeroshot import class_embeddings, class_phrase

EDGE_GTS = {
    1: ["a large harbor with many boats", "many boats are parked in a harbor", "a harbor"],
    2: ["green trees surround a pond", "a pond is surrounded by green trees and a road"],
    3: ["a road goes through the farmland", "there is a road", "farmland and a road", "a road", "road road road",
        "the farmland is green", "a road near the farmland"],
    4: ["a building"],
    5: ["the the the the", "a b c d e f g h i j k l m n o p"],
}
EDGE_RES = {1: ["a harbor with boats"], 2: [""], 3: ["road road"], 4: ["a  building"], 5: ["the"]}


def _reference(gts, res):
    b, b_img = Bleu(4).compute_score(gts, res, verbose=0)
    r, r_img = Rouge().compute_score(gts, res)
    c, c_img = Cider().compute_score(gts, res)
    return b, b_img, r, r_img, c, c_img


def _assert_parity(gts, res):
    b, b_img, r, r_img, c, c_img = _reference(gts, res)
    stats = prepare(gts, res)
    fb, fb_img = bleu(stats)
    fr, fr_img = rouge_l(stats)
    fc, fc_img = cider_d(stats)
    np.testing.assert_allclose(fb, b, rtol=0, atol=1e-9)
    for k in range(4):
        np.testing.assert_allclose(fb_img[k], b_img[k], rtol=0, atol=1e-9)
    assert abs(fr - r) < 1e-9 and abs(fc - c) < 1e-9
    np.testing.assert_allclose(fr_img, r_img, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fc_img, c_img, rtol=0, atol=1e-9)
    return fb, fr, fc


def test_fast_metrics_match_pycocoevalcap_on_edge_cases():
    """Empty and one-word candidates, repeated words, 1 to 7 references, a double space (ROUGE splits on " ")."""
    _assert_parity(EDGE_GTS, EDGE_RES)


def test_fast_metrics_match_on_a_single_image():
    """With one image BleuScorer uses the average reference length, not the closest."""
    gts = {7: ["a long river crosses the green forest", "a river", "the forest has a river"]}
    _assert_parity(gts, {7: ["a river crosses the forest"]})


def test_fast_metrics_match_on_random_sentences():
    rng = random.Random(3)
    words = "a the river road green many buildings are near with some white cars parked lot trees".split()
    gts = {i: [" ".join(rng.choices(words, k=rng.randint(1, 15))) for _ in range(rng.randint(1, 6))]
           for i in range(300)}
    res = {i: [" ".join(rng.choices(words, k=rng.randint(0, 15)))] for i in range(300)}
    b, r, c = _assert_parity(gts, res)
    assert 0 < b[0] < 1 and 0 < r < 1 and c > 0


def test_fast_metrics_match_on_real_rsicd_captions(shared_data):
    data = json.loads((shared_data / "rsicd_aid" / "dataset_rsicd_aid.json").read_text())
    test = [i for i in data["images"] if i["split"] == "test"]
    rng = random.Random(0)
    gts = {i["imgid"]: [" ".join(s["tokens"]) for s in i["sentences"]] for i in test}
    res = {i["imgid"]: [" ".join(rng.choice(test)["sentences"][0]["tokens"])] for i in test}
    _assert_parity(gts, res)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="same images"):
        prepare({1: ["a"]}, {2: ["a"]})
    with pytest.raises(ValueError, match="exactly one candidate"):
        prepare({1: ["a"]}, {1: ["a", "b"]})


def test_ptb_tokenizer_and_full_pipeline_match_coco_caption():
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    raw_refs = {1: ["A harbor, with many boats.", "Many boats are parked in the harbor!"],
                2: ["Green trees (and a pond) near the road.", "It's a pond; trees around it."]}
    raw_pred = {1: "Many boats in a harbor.", 2: "A pond, with green trees."}
    tokens = ptb_tokenize({1: ["A harbor, with many boats."]})
    assert tokens == {1: ["a harbor with many boats"]}
    ours = score_captions(raw_refs, raw_pred)
    theirs_gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in raw_refs.items()})
    theirs_res = PTBTokenizer().tokenize({k: [{"caption": v}] for k, v in raw_pred.items()})
    b, _, r, _, c, _ = _reference(theirs_gts, theirs_res)
    meteor, _ = Meteor().compute_score(theirs_gts, theirs_res)
    expected = {"Bleu_1": b[0], "Bleu_2": b[1], "Bleu_3": b[2], "Bleu_4": b[3], "METEOR": meteor, "ROUGE_L": r,
                "CIDEr": c}
    assert list(ours) == list(expected)
    for key in expected:
        assert abs(ours[key] - expected[key]) < 1e-9, key


def test_retrieval_metrics_on_hand_built_similarities():
    caption_image = np.repeat(np.arange(3), 2)  # 3 images × 2 captions
    perfect = np.where(caption_image[None, :] == np.arange(3)[:, None], 1.0, 0.0)
    assert retrieval_metrics(perfect, caption_image)["mR"] == 100.0
    sim = np.array([
        [0.1, 0.2, 0.9, 0.8, 0.0, 0.3],   # image 0: its best caption (1) ranks 4th → a hit from R@4 on
        [0.0, 0.1, 0.5, 0.2, 0.4, 0.3],   # image 1: caption 2 ranks first → hit at 1
        [0.3, 0.1, 0.0, 0.2, 0.9, 0.8],   # image 2: caption 4 ranks first → hit at 1
    ])
    m = retrieval_metrics(sim, caption_image, ks=(1, 2, 3, 4))
    assert m["i2t_R@1"] == m["i2t_R@3"] == pytest.approx(200 / 3) and m["i2t_R@4"] == 100.0
    # text → image, per caption: c0 → img2 best (0.3) so rank 1; c1 → img0 (0.2) rank 0; c2 → img0 (0.9) rank 1;
    # c3 → img0 first, then img1 before img2 (a tie, kept in index order) → rank 1; c4, c5 → img2 rank 0
    assert m["t2i_R@1"] == pytest.approx(100 * 3 / 6) and m["t2i_R@2"] == 100.0
    with pytest.raises(ValueError, match="one entry per caption"):
        retrieval_metrics(sim, caption_image[:3])


def test_classification_and_vqa_metrics():
    m = classification_metrics(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert m["top1"] == 60.0 and m["per_class"] == {"a": 50.0, "b": 100.0, "c": 0.0}
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    v = vqa_accuracy([("presence", "yes", "Yes"), ("presence", "no", "yes"), ("count", "3", "3"),
                      ("count", "0", "0."), ("count", "5", "4")])
    assert v["per_type"] == {"count": pytest.approx(200 / 3), "presence": 50.0}
    assert v["overall_accuracy"] == 60.0 and v["average_accuracy"] == pytest.approx((200 / 3 + 50) / 2)
    assert class_phrase("DenseResidential") == "dense residential" and class_phrase("storage_tanks") == "storage tanks"


def _tiny_encoder_file(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_open_clip("vit").state_dict(), path)
    return path


def test_zeroshot_and_retrieval_runners_end_to_end(tmp_path):
    import terravl.models as m
    from terravl.eval.runners import eval_retrieval, eval_zeroshot

    encoder = m.load(_tiny_encoder_file(tmp_path))
    folders = write_scene_folders(tmp_path / "scenes", split_files=True)
    result = eval_zeroshot(encoder, folders, split="test")
    assert result["n"] == 4 and len(result["confusion"]) == 3
    images = sorted(folders.rglob("*.jpg"))
    test_names = set((folders / "test.txt").read_text().split())
    test_images = [p for p in images if p.name in test_names]
    weights = class_embeddings(encoder, ["Airport", "Beach", "Forest"])
    expected = np.argmax(encoder.encode_images(test_images) @ weights.T, axis=1)
    truth = np.array([["Airport", "Beach", "Forest"].index(p.parent.name) for p in test_images])
    assert result["top1"] == pytest.approx(100 * np.mean(expected == truth))
    dataset = write_karpathy(tmp_path / "cap" / "d.json", n_train=3, n_test=4)
    r = eval_retrieval(encoder, dataset, "test")
    assert r["images"] == 4 and r["captions"] == 20 and 0 <= r["scores"]["mR"] <= 100


def test_vqa_and_change_runners(tmp_path):
    from terravl.eval.runners import eval_change, eval_vqa

    folder = write_rsvqa(tmp_path / "rsvqa", prefix="LR_split_test")
    preds = tmp_path / "vqa.json"
    preds.write_text(json.dumps([{"question_id": q, "answer": "yes"} for q in range(12)]))
    result = eval_vqa(folder, preds, "test")
    assert result["scores"]["per_type"]["presence"] == 100.0 and result["scores"]["per_type"]["comparison"] == 0.0
    levir = write_levir_cc(tmp_path / "levir", n=4)
    changes = tmp_path / "change.json"
    data = json.loads((levir / "LevirCCcaptions.json").read_text())
    changes.write_text(json.dumps([{"image_id": i["filename"][:-4], "caption": i["sentences"][0]["raw"]}
                                   for i in data["images"]]))
    out = eval_change(levir, changes, split="train", meteor=False)
    assert set(out["scores"]) == {"all", "changed", "unchanged"}
    assert out["scores"]["all"]["Bleu_1"] == pytest.approx(1.0)


def test_eval_cli_caption_and_compare(tmp_path, capsys):
    from terravl.cli.main import main

    dataset = write_karpathy(tmp_path / "d.json", n_train=2, n_test=3, with_images=False)
    data = json.loads(dataset.read_text())
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"image_id": i["imgid"], "caption": i["sentences"][0]["raw"]}
                                 for i in data["images"] if i["split"] == "test"]))
    code = main(["eval", "caption", "--dataset", str(dataset), "--predictions", str(preds), "--no-meteor",
                 "--out", str(tmp_path / "a.json"), "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and set(out["scores"]) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 4, "caption": "x"}]))
    code = main(["eval", "caption", "--dataset", str(dataset), "--predictions", str(bad), "--no-meteor",
                 "--out", str(tmp_path / "b.json")])
    assert code == 2 and "have no caption" in capsys.readouterr().err
    code = main(["eval", "--compare", str(tmp_path / "a.json"), str(tmp_path / "a.json"), "--format", "json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert code == 0 and any(r["metric"] == "CIDEr" and r["a"] == r["b"] for r in rows)


def test_retrieval_metrics_can_rank_texts_to_images_from_a_second_matrix():
    """A second stage that ranks each direction on its own: image→text recalls from the first matrix, text→image
    from ``by_text``; a matrix of another shape is refused."""
    rng = np.random.default_rng(3)
    sim, other = rng.normal(size=(6, 30)), rng.normal(size=(6, 30))
    owner = np.repeat(np.arange(6), 5)
    mixed = retrieval_metrics(sim, owner, by_text=other)
    a, b = retrieval_metrics(sim, owner), retrieval_metrics(other, owner)
    assert {k: v for k, v in mixed.items() if k.startswith("i2t")} == {k: v for k, v in a.items() if k.startswith("i2t")}
    assert {k: v for k, v in mixed.items() if k.startswith("t2i")} == {k: v for k, v in b.items() if k.startswith("t2i")}
    assert mixed["mR"] == pytest.approx(np.mean([v for k, v in mixed.items() if k != "mR"]))
    with pytest.raises(ValueError, match="by_text"):
        retrieval_metrics(sim, owner, by_text=other[:, :10])
