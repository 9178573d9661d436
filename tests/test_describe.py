"""Issue 18, the detailed description (RS-MoE with small experts): terravl.tasks.describe composes a caption, the
scene type, the objects of the multi-label head, where they are and how many; the object head's training
(`terravl train objects`), its measurement (`terravl eval describe`), the CLI, bad inputs, and the shipped head
on a real UC Merced image. Tiny random models are built here; the captioner is a stand-in that answers known text."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fakedata import truncate, write_image
from terravl.models.bridge import CAPTION_PROMPT
from terravl.models.object_head import ObjectHead, find_objects, object_mentions, plural
from terravl.models.terravl_encoder import TerraVLEncoder, TerraVLModel
from terravl.results import Problem
from terravl.tasks.describe import (ACROSS, POSITIONS, Description, Experts, ScenePart, caption_count, compose,
                                    describe, position)

TINY = {"arch": "terravl-cnn", "embed_dim": 384,
        "image": {"widths": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "resolution": 64, "dropout": 0.0,
                  "mean": [0.4, 0.4, 0.37], "std": [0.2, 0.19, 0.19]},
        "text": {"tower": "all-MiniLM-L6-v2", "features": 384, "projection": "linear"}}
CAPTION = "two tennis courts are near many green trees."


class HashTextEncoder(TerraVLEncoder):
    """A tiny random TerraVL encoder whose text features are a hash of the text (no MiniLM: tests stay fast)."""

    def _forward_texts(self, texts):
        feats = [torch.from_numpy(np.random.default_rng(sum(map(ord, t)) * 7919 % 2**32).standard_normal(384)
                                  .astype(np.float32)) for t in texts]
        return self.model.encode_text_features(torch.stack(feats))


class StandInCaptioner:
    """Answers a fixed caption, and "three" to "how many cars …?" ("no" to any other question), like the
    bridge's generate(features, prompts)."""

    name = "stand-in"

    def __init__(self, encoder):
        self.encoder = encoder
        self.calls: list[list[str]] = []

    def generate(self, features, prompts=CAPTION_PROMPT, beams=None, max_tokens=None, **_):
        n = len(features)
        prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
        self.calls.append(prompts)
        return [CAPTION if p == CAPTION_PROMPT else "three" if "how many cars" in p else "no" for p in prompts]


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return HashTextEncoder(TerraVLModel(TINY), "tiny", device="cpu")


def tiny_head(encoder, present=("building", "car", "water"), absent=("tree", "tennis court", "river")) -> ObjectHead:
    """A head whose outputs ignore the image: ``present`` objects score 0.95, ``absent`` ones 0.05."""
    names = [("tag:trees", "tree", 0.5)] + [(f"noun:{c}", c, 0.5) for c in (*present, *absent)]
    bias = np.array([-3.0] + [3.0] * len(present) + [-3.0] * len(absent), np.float32)
    settings = {"kind": "objects", "name": "tiny-objects", "encoder": "tiny",
                "labels": [{"name": n, "canonical": c, "threshold": t} for n, c, t in names],
                "plural_share": {"water": 0.0, "building": 0.9, "car": 0.9}}
    weights = {"out.weight": np.zeros((len(names), 384), np.float32), "out.bias": bias}
    return ObjectHead(settings, weights, encoder)


@pytest.fixture(scope="module")
def experts(encoder):
    return Experts(encoder=encoder, captioner=StandInCaptioner(encoder), objects=tiny_head(encoder))


def _images(tmp_path, n=2):
    return [write_image(tmp_path / f"img{i}.png", 80, 64, seed=i) for i in range(n)]


# ------------------------------------------------------------------------------------------------ words
def test_object_words_merge_plurals_synonyms_and_prefer_the_longest_phrase():
    text = "Three tennis courts and some mobile homes near a parking lot; ships, a boat and people."
    assert object_mentions(text) == {"tennis court", "mobile home", "parking lot", "boat", "people"}
    assert object_mentions("many factories and bushes beside the woods") == {"factory", "plant", "forest"}
    assert [(c, many) for c, _, _, many in find_objects("a river and two rivers")] == [("river", False),
                                                                                        ("river", True)]
    assert plural("storage tank") == "storage tanks" and plural("factory") == "factories" and plural("bush") == \
        "bushes"


@pytest.mark.parametrize("caption, noun, expected", [
    ("two white storage tanks", "storage tanks", "two"), ("lots of cars are parked", "cars", "many"),
    ("a lot of cars", "cars", "many"), ("there is a long river", "river", "one"), ("12 planes", "planes", "12"),
    ("green trees near a pond", "trees", None), ("some buildings and cars", "cars", None),
])
def test_caption_counts(caption, noun, expected):
    words = caption.split()
    start = words.index(noun.split()[0])
    assert caption_count(words, start, noun.endswith("s")) == expected


def test_position_words_from_a_map():
    grid = np.zeros((6, 6))
    grid[0, 0] = 1.0
    assert position(grid)[0] == POSITIONS[0][0] == "in the top left"
    grid = np.zeros((6, 6))
    grid[4:, 2:4] = 1.0
    words, centre, coverage = position(grid)
    assert words == "at the bottom" and centre == [0.5, pytest.approx(0.833, abs=1e-3)] and coverage == \
        pytest.approx(4 / 36, abs=1e-3)
    assert position(np.ones((5, 5)))[0] == ACROSS
    assert position(np.zeros((3, 3))) == (None, None, None)


# ------------------------------------------------------------------------------------------------ describe
def test_description_is_deterministic_and_mentions_each_part(tmp_path, experts):
    images = _images(tmp_path)
    first = describe(images, experts=experts)
    second = describe(images, experts=experts)
    assert [a.to_dict() for a in first] == [a.to_dict() for a in second]
    for answer in first:
        assert isinstance(answer, Description)
        text = answer.description
        sentences = [s for s in text.split(". ") if s]
        assert 2 <= len(sentences) <= 4
        assert text.startswith("Two tennis courts are near many green trees.")
        assert answer.caption == CAPTION
        assert f"most likely a{'n' if answer.scene.label[0] in 'aeiou' else ''} {answer.scene.label} scene" in text
        assert answer.scene.probability == answer.scene.top[0].probability and 0 < answer.scene.probability <= 1
        parts = {p.name: p for p in answer.objects}
        # the head's objects are mentioned, best first, each with its position; caption-only objects are parts
        assert [n for n, p in parts.items() if p.mentioned] == ["building", "car", "water"]
        assert parts["tennis court"].in_caption and parts["tennis court"].count == "two"
        assert parts["tennis court"].count_source == "caption" and not parts["tennis court"].mentioned
        assert parts["tree"].in_caption and parts["tree"].count == "many"
        assert parts["car"].count == "three" and parts["car"].count_source == "question"
        assert parts["building"].count is None and parts["water"].count is None
        for name in ("building", "car", "water"):
            p = parts[name]
            assert p.position in {w for row in POSITIONS for w in row} | {ACROSS}
            assert 0 < p.coverage <= 1 and all(0 <= c <= 1 for c in p.centre)
        assert f"buildings {parts['building'].position}" in text
        assert f"three cars {parts['car'].position}" in text
        assert f"water {parts['water'].position}" in text
        assert answer.labels == []  # the only tag output (trees) is below its threshold


def test_compose_is_a_pure_template():
    from terravl.tasks.describe import ObjectPart

    scene = ScenePart(label="industrial", probability=0.7, top=[])
    objects = [ObjectPart(name="storage tank", score=0.9, mentioned=True, count="two", position="on the left",
                          coverage=0.2),
               ObjectPart(name="road", score=0.8, mentioned=True, position=ACROSS, coverage=0.6),
               ObjectPart(name="sea", score=None, in_caption=True)]
    text = compose("a factory is near the sea", scene, objects, frozenset({"sea"}), {"road": 0.2})
    assert text == ("A factory is near the sea. It is most likely an industrial scene. It shows two storage tanks "
                    "on the left and a road across the image. The road covers more than half of the image.")
    assert compose("a factory is near the sea", scene, objects, frozenset({"sea"}), {"road": 0.2}) == text
    assert compose("x", scene, []) == "X. It is most likely an industrial scene."


def test_bad_inputs_are_problems_in_place_and_the_rest_goes_on(tmp_path, experts):
    good = _images(tmp_path)
    broken = truncate(write_image(tmp_path / "broken.jpg", 64, 64), 0.3)
    answers = describe([good[0], tmp_path / "missing.png", broken, good[1]], experts=experts)
    assert len(answers) == 4 and answers.summary() == {"inputs": 4, "answered": 2, "problems": 2}
    assert isinstance(answers[1], Problem) and "missing.png" in answers[1].path and answers[1].index == 1
    assert isinstance(answers[2], Problem) and "broken.jpg" in answers[2].path
    assert answers[0].path == str(good[0]) and answers[3].path == str(good[1])
    assert answers[0].description == describe([good[0]], experts=experts)[0].description


def test_bad_arguments_are_refused_by_field(tmp_path, experts):
    from terravl.errors import InputError

    with pytest.raises(InputError, match="max_objects"):
        describe(_images(tmp_path, 1), experts=experts, max_objects=-1)
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(InputError, match="no image files"):
        describe([tmp_path / "empty-folder"], experts=experts)


def test_an_encoder_without_a_cnn_tower_describes_without_positions(tmp_path, tiny_model):
    import terravl.models as m

    enc = m.load(str(tiny_model))
    head = tiny_head(enc)
    head.weights["out.weight"] = np.zeros((len(head.labels), enc.embed_dim), np.float32)
    answer = describe(_images(tmp_path, 1), experts=Experts(enc, StandInCaptioner(enc), head))[0]
    assert all(p.position is None for p in answer.objects)
    assert any("no positions" in w for w in answer.warnings)
    assert "It shows buildings, three cars and water." in answer.description


# ------------------------------------------------------------------------------------------------ train + eval
def _caption_dataset(root, n_train=24, n_test=6):
    """Karpathy JSON with images, UCM-style multi-labels and captions naming objects."""
    kinds = [("there are many cars in a parking lot .", ["cars", "pavement"]),
             ("a river with green trees on both sides .", ["trees", "water"]),
             ("some buildings and a swimming pool .", ["buildings"])]
    (root / "imgs").mkdir(parents=True)
    images = []
    for i in range(n_train + n_test):
        caption, tags = kinds[i % 3]
        write_image(root / "imgs" / f"s{i}.png", 48, 48, seed=i % 3)
        images.append({"filename": f"s{i}.png", "filepath": "imgs", "imgid": i, "labels": tags,
                       "split": "train" if i < n_train else "test", "class": "x",
                       "sentences": [{"raw": caption, "imgid": i, "sentid": 5 * i + j} for j in range(5)]})
    path = root / "data.json"
    path.write_text(json.dumps({"dataset": "tiny", "images": images}))
    return path


def _run(capsys, *args):
    from terravl.cli.main import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("objects")
    data = _caption_dataset(root)
    enc_folder = encoder.model.save(root / "encoder")
    return root, data, enc_folder


def test_train_objects_end_to_end_and_the_head_loads(trained, encoder, capsys):
    from terravl.models.object_head import load_object_head

    root, data, enc_folder = trained
    out = root / "run"
    code, stdout, err = _run(capsys, "train", "objects", "--out", str(out), "--encoder", str(enc_folder),
                             "--set", f"data=[{data}]", "--set", "min_positives=3", "--set", "dev_fraction=0.3",
                             "--epochs", "150", "--set", "lr=0.05", "--format", "json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["images"] == 24 and result["labels"] == 5 + 6  # 5 multi-labels, 6 caption nouns
    settings = json.loads((out / "model" / "objects.json").read_text())
    assert settings["encoder"] == "tiny" or settings["encoder"] == str(enc_folder)
    names = [lab["name"] for lab in settings["labels"]]
    assert names[:5] == ["tag:buildings", "tag:cars", "tag:pavement", "tag:trees", "tag:water"]
    assert set(names[5:]) == {"noun:car", "noun:parking lot", "noun:river", "noun:tree", "noun:building",
                              "noun:swimming pool"}
    assert list((out / "cache").glob("features_*.npz"))  # embeddings cached: a second run reads them
    head = load_object_head(out / "model", encoder=encoder)
    # three distinct images, each with its own labels: the head learns them
    from terravl.datasets import KarpathyCaptions

    recs = KarpathyCaptions(data, split="test").records
    probs = head.scores(encoder.encode_images([r.path for r in recs]))
    for r, p in zip(recs, probs):
        found = {lab.name for lab, s in zip(head.labels, p) if s >= 0.5}
        assert {f"tag:{t}" for t in r.tags} <= found
    code, stdout, err = _run(capsys, "train", "objects", "--out", str(out), "--encoder", str(enc_folder),
                             "--set", f"data=[{data}]", "--set", "split=test")
    assert code == 2 and "train splits only" in err and "Traceback" not in err


def test_eval_describe_end_to_end(trained, encoder, capsys, monkeypatch):
    from terravl.eval.describe import eval_describe, object_precision, object_recall

    root, data, _ = trained
    head = tiny_head(encoder, present=("car", "parking lot", "tree"), absent=("river",))
    experts = Experts(encoder, StandInCaptioner(encoder), head)
    result = eval_describe(data, experts, "test", meteor=False)
    assert result["images"] == 6 and result["split"] == "test"
    assert set(result["scores"]["caption"]) >= {"Bleu_4", "CIDEr", "ROUGE_L"}
    # the caption names tennis courts and trees; the description adds cars and a parking lot, which the
    # references of two images in three name
    assert result["object_recall"]["description"] > result["object_recall"]["caption"]
    assert result["words"]["description"] > result["words"]["caption"]
    assert len(result["predictions"]) == 6 and result["object_head"]["tag_labels"] >= 1
    refs = [["many cars in a parking lot ."], ["a river with trees ."]]
    assert object_recall(refs, ["cars here", "trees"], head.vocabulary) == pytest.approx(100 * (0.5 + 0.5) / 2)
    assert object_precision(refs, ["cars and a beach", "trees"], head.vocabulary) == pytest.approx(75.0)
    with pytest.raises(Exception, match="held-apart"):
        eval_describe(data, experts, "train")

    import terravl.cli.describe_cmd as cmd

    monkeypatch.setattr(cmd, "_experts", lambda *a: experts)
    out = root / "eval.json"
    code, stdout, err = _run(capsys, "eval", "describe", "--dataset", str(data), "--split", "test", "--limit", "3",
                             "--no-meteor", "--format", "json", "--out", str(out))
    assert code == 0, err
    saved = json.loads(out.read_text())
    assert json.loads(stdout) == saved and saved["images"] == 3 and "predictions" not in saved
    code, stdout, err = _run(capsys, "eval", "describe", "--dataset", str(data), "--split", "test", "--limit", "2",
                             "--no-meteor")
    assert code == 0 and "describe vs caption: test split of data.json (2 images)" in stdout
    assert "object head" in stdout


def test_cli_describe_each_format_and_bad_inputs(tmp_path, experts, capsys, monkeypatch):
    import terravl.cli.describe_cmd as cmd

    monkeypatch.setattr(cmd, "_experts", lambda *a: experts)
    good = _images(tmp_path, 1)[0]
    code, stdout, err = _run(capsys, "describe", str(good), str(tmp_path / "nope.png"), "--format", "json")
    assert code == 0
    rows = json.loads(stdout)
    assert rows[0]["description"].startswith("Two tennis courts") and rows[0]["scene"]["label"]
    assert {"name", "score", "position"} <= set(rows[0]["objects"][0])
    assert rows[1] == {"path": str(tmp_path / "nope.png"), "error": rows[1]["error"]} and "problem:" in err
    code, stdout, err = _run(capsys, "describe", str(good))
    assert code == 0 and "Two tennis courts" in stdout and "1 answered" in err
    code, stdout, err = _run(capsys, "describe", str(tmp_path / "nope.png"))
    assert code == 2 and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ shipped head
def test_shipped_head_scores_a_real_ucm_image(shared_data):
    from terravl.models.object_head import load_object_head

    head = load_object_head()
    assert head.encoder_name == "terravl-default-v2"  # the encoder it was trained on, not the v3 default
    image = shared_data / "ucm_captions" / "images" / "harbor" / "harbor05.jpg"
    probs = head.scores(head.encoder.encode_images([image]))[0]
    assert probs.shape == (len(head.labels),) and ((probs >= 0) & (probs <= 1)).all()
    tags = {lab.name.split(":", 1)[1]: p for lab, p in zip(head.labels, probs) if lab.source == "tag"}
    assert len(tags) == 17
    assert max(tags, key=tags.get) in {"dock", "ship", "water"}  # the harbour's own labels
