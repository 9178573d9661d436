"""Issue 16's data side: composites (training and the fixed benchmark, held-apart images only), the grounding
metrics (RRSIS-D / LAVT and RSVG / TransVG definitions), the RRSIS-D and RSVG / DIOR-RSVG readers on fake data
written here, `terravl eval grounding` and `terravl train grounder` end to end on tiny data."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from fakedata import write_image
from terravl.datasets.composites import (BENCHMARK_SPLITS, TRAIN_SPLITS, Composite, CompositeMaker, Scene,
                                         benchmark, composites, load_scenes, noun, plural)
from terravl.errors import InputError
from terravl.eval.grounding import Scores, box_iou, evaluate_grounding, open_grounding_dataset
from terravl.tasks.ground_methods import GroundMethod


def _scenes(tmp_path, classes=("beach", "forest", "parking", "river", "dense residential"), per_class=3):
    scenes = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            path = tmp_path / f"{name.replace(' ', '')}_{i}.png"
            Image.fromarray(np.full((64, 64, 3), 40 * c + i, np.uint8)).save(path)
            scenes.append(Scene(path, name, (f"a {name} scene number {i} .",), "fake"))
    return scenes


def test_composites_regions_expressions_and_targets(tmp_path):
    made = composites(_scenes(tmp_path), 30, seed=3, size=96)
    assert [c.kind for c in made[:6]] == ["caption", "class", "spatial"] * 2
    for c in made:
        assert c.image.shape == (96, 96, 3) and c.mask.shape == (96, 96) and c.mask.sum() >= 100
        assert c.target != c.host and c.expression
        x0, y0, x1, y1 = c.box
        assert c.mask[y0:y1, x0:x1].any() and not c.mask[:, :x0].any()
        if c.kind == "caption":
            assert "scene number" in c.expression
    spatial = " ".join(c.expression for c in made if c.kind == "spatial")
    assert any(w in spatial for w in ("in the top", "in the bottom", "in the centre", "in the left", "in the right",
                                      "of the two", "on the", "at the"))
    again = composites(_scenes(tmp_path), 30, seed=3, size=96)
    assert [c.expression for c in again] == [c.expression for c in made]  # a fixed seed, the same benchmark
    assert all((a.mask == b.mask).all() and (a.image == b.image).all() for a, b in zip(again, made))


def test_negatives_name_an_absent_class_and_have_no_target(tmp_path):
    maker = CompositeMaker(_scenes(tmp_path), 96, negative_rate=1.0)
    rng = np.random.default_rng(0)
    for _ in range(10):
        c = maker.make(rng)
        assert c.negative and not c.mask.any() and c.box is None
        present = {c.host} | {r["class"] for r in c.regions}
        assert c.target not in present


def test_phrases():
    assert noun("dense residential") == "dense residential area" and noun("beach") == "beach"
    assert plural("parking") == "parking areas" and plural("beach") == "beaches" and plural("storage tanks") == \
        "storage tanks" and plural("runway") == "runways"


def test_benchmark_uses_held_apart_images_only(shared_data):
    assert BENCHMARK_SPLITS == {"rsicd_aid": "test", "ucm_captions": "val"}
    held = load_scenes(shared_data, BENCHMARK_SPLITS)
    train = {s.path for s in load_scenes(shared_data, TRAIN_SPLITS)}
    assert held and not train & {s.path for s in held}
    first = benchmark(shared_data, n=6)
    assert [c.expression for c in benchmark(shared_data, n=6)] == [c.expression for c in first]
    assert {c.kind for c in first} == {"caption", "class", "spatial"} and all(c.mask.any() for c in first)


# -- metrics --------------------------------------------------------------------------------------------------------


def test_metrics_follow_the_rrsis_and_rsvg_definitions():
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3) and box_iou(None, (0, 0, 1, 1)) == 0
    s = Scores()
    target = np.zeros((10, 10), bool)
    target[:, :5] = True                                   # 50 px
    s.add(target.copy(), target, (0, 0, 5, 10), (0, 0, 5, 10))             # IoU 1
    half = np.zeros((10, 10), bool)
    half[:, :4] = True
    s.add(half, target, (0, 0, 4, 10), (0, 0, 5, 10))                      # IoU 0.8
    s.add(np.zeros((10, 10), bool), target, None, (0, 0, 5, 10))            # nothing found: 0
    out = s.summary()
    assert out["n"] == 3 and out["miou"] == pytest.approx(0.6) and out["oiou"] == pytest.approx(90 / 150)
    assert out["p@0.5"] == pytest.approx(2 / 3) and out["p@0.7"] == pytest.approx(2 / 3)
    assert out["p@0.9"] == pytest.approx(1 / 3) and out["box_acc@0.5"] == pytest.approx(2 / 3)


# -- readers --------------------------------------------------------------------------------------------------------


def _rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE (the inverse of the reader's decoder, as pycocotools writes it)."""
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10 == 0 and x == 0) or (c & 0x10 and x == -1))
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def write_rrsis(root, malicious: bool = False):
    (root / "images" / "rrsisd" / "JPEGImages").mkdir(parents=True)
    for i in range(2):
        write_image(root / "images" / "rrsisd" / "JPEGImages" / f"{i:05d}.jpg", 48, 40, seed=i)
    # 48 × 40 images: annotation 1 a polygon (a square), annotation 2 a compressed RLE (columns 20-29)
    col_runs = [20 * 40, 10 * 40, 18 * 40]
    coco = {"images": [{"id": 1, "file_name": "00000.jpg", "width": 48, "height": 40},
                       {"id": 2, "file_name": "00001.jpg", "width": 48, "height": 40}],
            "annotations": [{"id": 11, "image_id": 1, "bbox": [5, 5, 10, 10], "category_id": 3,
                             "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]]},
                            {"id": 12, "image_id": 2, "bbox": [20, 0, 10, 40], "category_id": 4,
                             "segmentation": {"size": [40, 48], "counts": _rle_string(col_runs)}}]}
    (root / "instances.json").write_text(json.dumps(coco))
    refs = [{"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "test", "category_id": 3,
             "sentences": [{"sent": "the square on the left", "raw": "The square on the left"}, {"sent": ""}]},
            {"ref_id": 1, "ann_id": 12, "image_id": 2, "split": "test", "category_id": 4,
             "sentences": [{"sent": "the band"}]},
            {"ref_id": 2, "ann_id": 99, "image_id": 1, "split": "train", "sentences": [{"sent": "orphan"}]}]
    if malicious:
        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))

        refs.append(Evil())
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs))
    return root


def test_rrsis_reader_masks_boxes_and_problems(tmp_path):
    from terravl.datasets.rrsis import RRSISDataset, decode_mask

    reader = RRSISDataset(write_rrsis(tmp_path / "rrsisd"))
    assert [r.expression for r in reader.records] == ["the square on the left", "the band"]
    assert len(reader.problems) == 2  # an empty sentence, a reference to a missing annotation
    square, band = reader.records
    assert square.box == (5, 5, 15, 15) and band.image.name == "00001.jpg" and square.split == "test"
    m = decode_mask(square, 40, 48)
    assert m[5:16, 5:16].all() and m.sum() == 121 and not m[20:, :].any()
    b = decode_mask(band, 40, 48)
    assert b[:, 20:30].all() and not b[:, :20].any() and not b[:, 30:].any()


def test_rrsis_reader_never_runs_code_from_the_pickle(tmp_path, capsys):
    from terravl.errors import DatasetFormatError
    from terravl.datasets.rrsis import RRSISDataset

    with pytest.raises(DatasetFormatError, match="only plain data"):
        RRSISDataset(write_rrsis(tmp_path / "evil", malicious=True))
    assert "pwned" not in capsys.readouterr().out


def write_rsvg(root):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    objects = [[("vehicle", (2, 3, 12, 13), "the car on the left")],
               [("storagetank", (10, 10, 30, 25), "the large storage tank"), ("ship", (0, 0, 5, 5), "a small ship"),
                ("ship", (8, 8, 4, 4), "bad box")]]
    for i, objs in enumerate(objects):
        write_image(root / "JPEGImages" / f"{i:05d}.jpg", 48, 40, seed=i)
        body = "".join(f"<object><name>{n}</name><pose>x</pose><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                       f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox><description>{d}</description></object>"
                       for n, b, d in objs)
        (root / "Annotations" / f"{i:05d}.xml").write_text(f"<annotation><filename>{i:05d}.jpg</filename>{body}"
                                                           "</annotation>")
    (root / "Annotations" / "broken.xml").write_text("<annotation><object>")
    (root / "test.txt").write_text("0\n2\n3\n")
    (root / "train.txt").write_text("1\n")
    return root


def test_rsvg_reader_counts_objects_across_files_and_reads_splits(tmp_path):
    reader = open_grounding_dataset(write_rsvg(tmp_path / "rsvg"))
    assert reader.format == "rsvg"
    assert [(r.expression, r.split) for r in reader.records] == [("the car on the left", "test"),
                                                                 ("the large storage tank", "train"),
                                                                 ("a small ship", "test")]
    assert reader.records[1].box == (10, 10, 30, 25) and reader.records[1].category == "storagetank"
    assert {p.error.split(" (")[0] for p in reader.problems} >= {"not readable XML"}
    assert any("empty box" in p.error for p in reader.problems)


def test_unknown_dataset_layout_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not an RRSIS-D folder"):
        open_grounding_dataset(tmp_path)


class BoxMethod(GroundMethod):
    """Answers a fixed rectangle (10 × 10 at 5, 5): the metrics can be predicted by hand."""

    name = "box"

    def prepare(self, expression):
        return None

    def score(self, rgb, valid, state):
        out = np.full(rgb.shape[:2], 0.1, np.float32)
        out[5:15, 5:15] = 0.9
        return out


def test_eval_on_rrsis_and_rsvg_folders(tmp_path):
    rrsis = evaluate_grounding({"box": BoxMethod()}, dataset=write_rrsis(tmp_path / "rrsisd"), split="test")
    s = rrsis["scores"]["box"]
    assert rrsis["format"] == "rrsis-d" and s["n"] == 2
    # the square (121 px as COCO polygons fill) against the 10 × 10 answer; the band not found
    assert s["miou"] == pytest.approx(100 / 121 / 2) and s["p@0.5"] == 0.5 and s["p@0.9"] == 0
    assert s["box_acc@0.5"] == 0.5 and s["oiou"] == pytest.approx(100 / (121 + 400 + 100))
    rsvg = evaluate_grounding({"box": BoxMethod()}, dataset=write_rsvg(tmp_path / "rsvg"), split="test")
    s = rsvg["scores"]["box"]
    assert s["n"] == 2 and "miou" not in s  # boxes only
    assert s["box_miou"] == pytest.approx((box_iou((5, 5, 15, 15), (2, 3, 12, 13)) + box_iou((5, 5, 15, 15),
                                                                                             (0, 0, 5, 5))) / 2)


def test_eval_grounding_cli_on_a_user_dataset(tmp_path, capsys, monkeypatch):
    from terravl.cli.main import main
    import terravl.tasks.ground_methods as gm

    monkeypatch.setattr(gm, "make_method", lambda method, encoder=None, grounder=None: BoxMethod())
    code = main(["eval", "grounding", "--dataset", str(write_rsvg(tmp_path / "rsvg")), "--split", "test",
                 "--methods", "baseline", "--format", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["scores"]["baseline"]["n"] == 2 and result["format"] == "rsvg"
    code = main(["eval", "grounding", "--dataset", str(write_rsvg(tmp_path / "rsvg2")), "--methods", "baseline"])
    shown = capsys.readouterr().out
    assert code == 0 and shown.startswith("grounding: ") and "rsvg2" in shown


def test_eval_on_composites_scores_each_kind(tmp_path, monkeypatch):
    import terravl.datasets.composites as comp

    scenes = _scenes(tmp_path)
    monkeypatch.setattr(comp, "load_scenes", lambda root, splits: scenes)
    result = evaluate_grounding({"box": BoxMethod()}, data_root=tmp_path, n=6)
    assert result["dataset"] == "composites" and result["n"] == 6
    assert set(result["scores"]["box"]["kinds"]) == {"caption", "class", "spatial"}


# -- training -------------------------------------------------------------------------------------------------------


def _fake_root(root):
    for name, split_names in (("rsicd_aid", ("train", "test")), ("ucm_captions", ("train", "val"))):
        folder = root / name
        (folder / "imgs").mkdir(parents=True)
        images = []
        for i in range(16):
            cls = ("beach", "forest", "river", "parking")[i % 4]
            write_image(folder / "imgs" / f"{name}_{i}.png", 48, 48, seed=i)
            images.append({"filename": f"{name}_{i}.png", "filepath": f"{name}/imgs", "split": split_names[i % 4 == 3],
                           "class": cls, "sentences": [{"raw": f"a {cls} here ."}]})
        file = {"rsicd_aid": "dataset_rsicd_aid.json", "ucm_captions": "dataset_ucm_captions.json"}[name]
        (folder / file).write_text(json.dumps({"images": images}))
    return root


def test_train_grounder_end_to_end_on_tiny_data(tmp_path, capsys):
    from test_ground import TINY
    from terravl.cli.main import main
    from terravl.models.grounder import load_grounder
    from terravl.models.terravl_encoder import TerraVLModel

    import torch

    torch.manual_seed(0)
    encoder = TerraVLModel(TINY).save(tmp_path / "enc")
    root = _fake_root(tmp_path / "data")
    code = main(["train", "grounder", "--config", "configs/terravl-grounder.yaml", "--data-root", str(root),
                 "--encoder", str(encoder), "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "8",
                 "--threads", "1", "--set", "composites=16", "--set", "val_composites=8", "--set", "resolution=64",
                 "--set", "val_fraction=0.2", "--format", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["steps"] == 4 and result["best_epoch"]["epoch"] in (1, 2)
    g = load_grounder(tmp_path / "run" / "model")
    assert g.arch.resolution == 64 and g.arch.encoder == str(encoder)
    info = json.loads((tmp_path / "run" / "model" / "training.json").read_text())
    assert len(info["history"]) == 2 and "train" in info["data"]
    # the pixel threshold is chosen on the validation composites, written into the model and used by the task
    sweep = info["threshold"]
    best = max(s["miou"] for s in sweep["by_threshold"].values())
    assert sweep["by_threshold"][str(sweep["chosen"])]["miou"] == best and g.arch.threshold == sweep["chosen"]
    from terravl.tasks.ground_methods import TrainedMethod

    assert TrainedMethod(g).threshold(None, None, 1.0) == sweep["chosen"]
    # a second run reuses the cached features
    code = main(["train", "grounder", "--config", "configs/terravl-grounder.yaml", "--data-root", str(root),
                 "--encoder", str(encoder), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8",
                 "--threads", "1", "--set", "composites=16", "--set", "val_composites=8", "--set", "resolution=64",
                 "--set", "val_fraction=0.2"])
    assert code == 0 and "reusing the feature cache" in capsys.readouterr().err
    bad = main(["train", "grounder", "--data-root", str(tmp_path / "nowhere"), "--encoder", str(encoder),
                "--out", str(tmp_path / "run2")])
    assert bad == 2 and "data_root" in capsys.readouterr().err


def test_kinds_of_composite_are_typed():
    c = Composite(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), bool), "x", "class", "a", "b", "d", True)
    assert c.box is None


def test_datasets_inspect_recognises_both_grounding_formats(tmp_path):
    from terravl.datasets import detect_format

    assert detect_format(write_rsvg(tmp_path / "rsvg")).format == "rsvg"
    assert detect_format(write_rrsis(tmp_path / "rrsisd")).format == "rrsis-d"
