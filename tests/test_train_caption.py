"""``terravl train caption`` on the shared loop: ``--resume`` after an interruption ends with exactly the weights
of an uninterrupted run (so a CPU run is also repeatable bit for bit), and ``--device cpu`` is honoured; several
datasets train together and are scored apart; questions from object multi-labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fakedata import write_karpathy
from terravl.errors import InputError
from terravl.train.caption import CaptionTrainConfig, datasets, train

TINY = dict(epochs=3, batch_size=16, threads=1, progress=False, n_embd=32, n_layer=1, n_head=2, hidden=64, views=2,
            vocab_min_frequency=1, warmup_steps=2, eval_split=None, max_tokens=8, feature_noise=0.05)


def _weights(folder) -> dict:
    return torch.load(folder / "checkpoint.pt", weights_only=False)["model"]


def test_caption_training_is_repeatable_and_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    from terravl.cli.main import main

    data = write_karpathy(tmp_path / "data" / "d.json", n_train=24, n_test=2)
    args = ["train", "caption", "--data", data, "--out", tmp_path / "cli", "--device", "cpu", "--format", "json"]
    for key, value in TINY.items():
        args += ["--set", f"{key}={'null' if value is None else value}"]
    code = main(list(map(str, args)))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["best_epoch"]["epoch"] in (1, 2, 3)
    training = json.loads((tmp_path / "cli" / "model" / "training.json").read_text())
    assert training["device"] == "cpu" and training["precision"] == "fp32"

    train(CaptionTrainConfig(data=str(data), out=str(tmp_path / "halves"), stop_after_epochs=1, **TINY),
          log=lambda _: None)
    assert torch.load(tmp_path / "halves" / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 1
    logs: list[str] = []
    train(CaptionTrainConfig(data=str(data), out=str(tmp_path / "halves"), **TINY), resume=True, log=logs.append)
    assert any(line.startswith("resumed from") for line in logs)

    reference = _weights(tmp_path / "cli")
    resumed = _weights(tmp_path / "halves")  # a second run, in two halves: repeatable and resumable at once
    assert set(resumed) == set(reference)
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key
    best = torch.load(tmp_path / "halves" / "best.pt", weights_only=True)
    assert all(torch.equal(v, torch.load(tmp_path / "cli" / "best.pt", weights_only=True)[k]) for k, v in best.items())


# -- several datasets in one run (issue 19: rsicd_aid + ucm_captions) ---------------------------------------------

def _ucm_like(path: Path) -> Path:
    """A second fake caption set in UCM's layout: a ``val`` split instead of ``test``, squashed class names, short
    templated captions with words the first set never uses, and object multi-labels."""
    write_karpathy(path, n_train=20, n_test=4)
    doc = json.loads(path.read_text())
    for item in doc["images"]:
        dense = item["class"] == "Forest"
        item["class"] = "denseresidential" if dense else "agricultural"
        item["split"] = "val" if item["split"] == "test" else "train"
        item["labels"] = ["buildings", "cars", "bare-soil"] if dense else ["field", "trees"]
        words = "many houses with cars" if dense else "a piece of farmland"
        for j, sentence in enumerate(item["sentences"]):
            sentence["raw"] = f"there is {words} {'here' if j % 2 else 'beside'} ."
    path.write_text(json.dumps(doc))
    return path


def test_two_datasets_train_together_and_are_scored_apart(tmp_path, capsys):
    from terravl.cli.main import main
    from terravl.models.bridge import Captioner

    first = write_karpathy(tmp_path / "aid" / "d.json", n_train=24, n_test=3)
    second = _ucm_like(tmp_path / "ucm" / "u.json")
    args = ["train", "caption", "--data", f"{first},{second}", "--out", tmp_path / "both", "--device", "cpu",
            "--format", "json", "--set", "eval_split=test,val"]
    for key, value in {**TINY, "epochs": 2, "limit_eval": 2}.items():
        if key != "eval_split":
            args += ["--set", f"{key}={value}"]
    code = main(list(map(str, args)))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    scores = json.loads(captured.out)["scores"]
    assert set(scores) == {"aid", "ucm"}  # per dataset, keyed by the dataset JSON's folder
    for name in ("aid", "ucm"):
        assert {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(scores[name]["caption"])
        assert set(scores[name]["vqa"]["per_type"]) == {"scene", "presence", "class"}
    assert "aid test captioning" in captured.err and "ucm val captioning" in captured.err

    training = json.loads((tmp_path / "both" / "model" / "training.json").read_text())
    data = training["data"]
    assert data["dataset"] == [str(first), str(second)]
    assert [data["datasets"][n]["train_images"] + data["datasets"][n]["validation_images"] for n in ("aid", "ucm")] \
        == [24, 20]  # the union of both training splits; no val or test image trained on
    assert [data["datasets"][n]["validation_images"] for n in ("aid", "ucm")] == [1, 1]  # each gives its share
    assert data["train_images"] == 24 + 20 - 2 and data["validation_images"] == 2
    assert data["datasets"]["ucm"]["eval_split"] == "val" and data["datasets"]["aid"]["eval_split"] == "test"
    assert {"val_CIDEr", "val_CIDEr/aid", "val_CIDEr/ucm"} <= set(training["history"][-1])
    tokenizer = Captioner.load(tmp_path / "both" / "model").tokenizer
    vocab = tokenizer.get_vocab()
    assert {"scene", "farmland", "houses"} <= set(vocab)  # one vocabulary from both sets' captions


def test_a_one_entry_list_is_a_one_dataset_run(tmp_path):
    """``data: [x]`` trains exactly as ``data: x`` (same validation draw, same weights) and reports in the
    one-dataset shape."""
    data = write_karpathy(tmp_path / "data" / "d.json", n_train=24, n_test=2)
    single = {**TINY, "epochs": 1}
    one = train(CaptionTrainConfig(data=str(data), out=str(tmp_path / "one"), **single), log=lambda _: None)
    listed = train(CaptionTrainConfig(data=[str(data)], train_split=["train"], out=str(tmp_path / "listed"),
                                      **single), log=lambda _: None)
    assert listed["data"] == one["data"] and listed["data"]["dataset"] == str(data) and "datasets" not in one["data"]
    for key, value in _weights(tmp_path / "one").items():
        assert torch.equal(value, _weights(tmp_path / "listed")[key]), key


@pytest.mark.parametrize("values, field, message", [
    (dict(data=["a/d.json", "b/d.json"], eval_split=["test"]), "eval_split", "1 entry for 2 datasets"),
    (dict(data=["a/d.json", "b/d.json"], train_split=["train"] * 3), "train_split", "3 entries for 2 datasets"),
    (dict(data="a/d.json,b/d.json", eval_split="test,val,val"), "eval_split", "3 entries for 2 datasets"),
    (dict(data=["a/d.json", "b/u.json"], eval_split=["test", "train"]), "eval_split",
     "b .* would be scored on its training split 'train'"),
    (dict(data="a/d.json", eval_split="train"), "eval_split", "training split 'train'"),
    (dict(data=["a/d.json", "a/d.json"]), "data", "listed twice"),
    (dict(data=["a/d.json", 3]), "data", "a list of them"),
    (dict(data=["a/d.json", "b/d.json"], train_split=["train", None]), "train_split", "non-empty string"),
])
def test_dataset_lists_are_validated_naming_the_field(values, field, message):
    with pytest.raises(InputError, match=message) as caught:
        CaptionTrainConfig.from_dict(values)
    assert caught.value.source == field


def test_bad_lists_fail_on_the_command_line_before_a_run_folder_exists(tmp_path, capsys):
    from terravl.cli.main import main

    first = write_karpathy(tmp_path / "aid" / "d.json", n_train=4, n_test=2)
    second = _ucm_like(tmp_path / "ucm" / "u.json")
    code = main(["train", "caption", "--data", f"{first},{second}", "--out", str(tmp_path / "run"),
                 "--set", "eval_split=[test]"])
    assert code == 2 and "eval_split" in capsys.readouterr().err and not (tmp_path / "run").exists()
    split = datasets(CaptionTrainConfig(data=f"{first},{second}", eval_split=["test", None]))
    assert [(d.name, d.train_split, d.eval_split) for d in split] == [("aid", "train", "test"), ("ucm", "train", None)]
    both = datasets(CaptionTrainConfig(data=[str(tmp_path / "x" / "a.json"), str(tmp_path / "x" / "b.json")]))
    assert [d.name for d in both] == ["a", "b"]  # a shared folder: the file names tell them apart


# -- questions from object multi-labels ---------------------------------------------------------------------------

def test_multi_labels_give_true_presence_questions_and_untagged_records_keep_caption_questions(tmp_path):
    from terravl.datasets import open_dataset
    from terravl.datasets.derived_vqa import derive_questions, presence_question, tag_object

    records = list(open_dataset(_ucm_like(tmp_path / "ucm" / "u.json")))
    questions = derive_questions(records)
    by_id = {r.image_id: r for r in records}
    presence = [q for q in questions if q.question_type == "presence"]
    assert len(presence) == 2 * len(records) and {q.answer for q in presence} == {"yes", "no"}
    for q in presence:
        own = {presence_question(tag_object(t)) for t in by_id[q.image_id].tags}
        assert (q.question in own) == (q.answer == "yes"), q  # the image's own labels decide
    assert {q.answer for q in questions if q.question_type == "scene"} == {"dense residential", "agricultural"}
    assert presence_question(tag_object("bare-soil")) == "is there bare soil in this image?"
    assert presence_question(tag_object("cars")) == "is there a car in this image?"  # RSICD's "car" question
    assert presence_question(tag_object("ship")) == "is there a boat in this image?"
    assert presence_question(tag_object("solar-panels")) == "are there solar panels in this image?"

    plain = list(open_dataset(write_karpathy(tmp_path / "aid" / "d.json", n_train=6, n_test=2)))
    assert derive_questions(plain) == derive_questions(plain)
    assert all(q.question_type != "presence" or q.answer == "no" for q in derive_questions(plain))  # no object named


def test_ucm_presence_questions_follow_its_multi_labels(shared_data):
    import collections
    import re

    from terravl.datasets import open_dataset
    from terravl.datasets.derived_vqa import derive_questions, tag_object

    records = list(open_dataset(shared_data / "ucm_captions" / "dataset_ucm_captions.json"))
    questions = derive_questions(records)
    by_id = {r.image_id: r for r in records}
    kinds = collections.Counter((q.question_type, q.answer) for q in questions if q.question_type == "presence")
    assert kinds == {("presence", "yes"): 1890, ("presence", "no"): 1890}
    for q in questions:
        if q.question_type == "presence":
            obj = re.fullmatch(r"is there (?:an? )?(.+) in this image\?", q.question).group(1)
            assert (obj in {tag_object(t) for t in by_id[q.image_id].tags}) == (q.answer == "yes"), q
    scenes = {q.answer for q in questions if q.question_type == "scene"}
    assert {"dense residential", "storage tanks", "tennis court", "mobile home park"} <= scenes
    assert len({q.image_id for q in questions if q.split == "val"}) == 210
