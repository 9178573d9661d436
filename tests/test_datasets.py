import pytest

from fakedata import (write_karpathy, write_levir_cc, write_levir_cd, write_retrieval_splits, write_rsvqa,
                      write_scene_folders)
from terravl.datasets import (KarpathyCaptions, LevirCC, LevirCD, RetrievalSplits, RSVQA, SceneFolderDataset,
                              detect_format, inspect_dataset, open_dataset)
from terravl.errors import DatasetFormatError


def test_scene_folders_with_split_files_and_bad_files(tmp_path):
    root = write_scene_folders(tmp_path / "ucm" / "Images", split_files=False, bad_file=True)
    write_scene_folders(root, split_files=True)  # split lists beside the class folders
    ds = open_dataset(tmp_path / "ucm")  # one wrapper folder is descended into
    assert isinstance(ds, SceneFolderDataset)
    summary = inspect_dataset(tmp_path / "ucm")
    assert summary["format"] == "scene-folders"
    assert summary["classes"] == {"Airport": 4, "Beach": 3, "Forest": 3}  # broken.jpg is still a listed image
    assert summary["splits"] == {"all": 1, "test": 4, "train": 5}
    errors = {p["path"].rsplit("/", 1)[-1]: p["error"] for p in summary["problems"]}
    assert "not an image" in errors["notes.txt"]
    assert "broken.jpg" in errors
    assert len(open_dataset(tmp_path / "ucm", split="train")) == 5


def test_karpathy_captions_report_malformed_records(tmp_path):
    path = write_karpathy(tmp_path / "dataset_fake.json", malformed=True)
    ds = KarpathyCaptions(path)
    assert len(ds) == 6  # the three malformed entries are skipped, and reported
    first = ds.records[0]
    assert first.path is not None and first.path.name == "scene_0.jpg" and len(first.captions) == 4
    wheres = [p.path.split("#")[1] for p in ds.problems]
    assert wheres == ["images[0].sentences[1]", "images[6]", "images[7]", "images[8]"]
    summary = inspect_dataset(tmp_path)
    assert summary["format"] == "karpathy-captions"
    assert summary["splits"] == {"test": 2, "train": 4} and summary["classes"] == {"Beach": 3, "Forest": 3}
    assert len(KarpathyCaptions(path, split="test")) == 2


def test_invalid_json_names_the_line(tmp_path):
    bad = tmp_path / "d.json"
    bad.write_text('{"images": [{"filename": "a.jpg", "sentences": [}]}')
    with pytest.raises(DatasetFormatError, match="d.json: invalid JSON at line 1"):
        KarpathyCaptions(bad)


def test_retrieval_splits_both_alignments(tmp_path):
    folder = write_retrieval_splits(tmp_path / "rsicd", mismatch=False)
    ds = RetrievalSplits(folder)
    assert {r.split for r in ds} == {"train", "test"}
    assert all(len(r.captions) == 5 for r in ds) and len(ds) == 5
    e0 = next(r for r in ds if r.filename == "e0.tif")
    assert e0.split == "test" and e0.captions == tuple(f"cap {j} of e0.tif" for j in range(5))
    broken = RetrievalSplits(write_retrieval_splits(tmp_path / "bad", mismatch=True))
    assert len(broken) == 3 and "do not match" in broken.problems[0].error


def test_rsvqa_counts_active_questions_and_types(tmp_path):
    folder = write_rsvqa(tmp_path / "lr", malformed=True)
    write_rsvqa(folder, prefix="LR_split_test")
    ds = RSVQA(folder)
    summary = ds.summary()
    assert summary["format"] == "rsvqa"
    assert summary["splits"] == {"test": 3, "train": 3}
    assert summary["questions"] == {"test": 11, "train": 11}  # one inactive question per split
    assert summary["question_types"]["presence"] == 6
    errors = [p["error"] for p in summary["problems"]]
    assert any("missing field(s): type, answers_ids" in e for e in errors)
    assert any("no active answer" in e for e in errors)
    assert ds.records[0].path.name == "0.tif" and ds.records[0].answer == "yes"


def test_levir_cc_pairs_and_change_flags(tmp_path):
    ds = LevirCC(write_levir_cc(tmp_path / "levircc", malformed=True))
    summary = ds.summary()
    assert summary["splits"] == {"test": 1, "train": 3}
    assert summary["changed"] == 2 and summary["pairs_found"] == 4
    assert "changeflag" in summary["problems"][0]["error"]
    assert ds.records[1].before.parent.name == "A" and ds.records[1].after.is_file()


def test_levir_cd_pairs_splits_and_orphans(tmp_path):
    ds = LevirCD(write_levir_cd(tmp_path / "cd", orphan=True))
    assert [r.split for r in ds] == ["test", "train"]
    assert all(r.mask is not None for r in ds)
    assert "no matching after image" in ds.problems[0].error


def test_detection_errors_list_the_formats(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="format not recognised.*levir-cc"):
        detect_format(tmp_path / "empty")
    with pytest.raises(DatasetFormatError, match="no such file"):
        detect_format(tmp_path / "nope")


# -- the real samples in ../shared/data ---------------------------------------------------------------------

def test_real_rsicd_aid_counts(shared_data):
    summary = inspect_dataset(shared_data / "rsicd_aid", check_images=False)
    assert summary["format"] == "karpathy-captions"
    assert summary["splits"] == {"test": 1027, "train": 8973}
    assert summary["captions"] == 50000 and summary["images_found"] == 10000
    assert len(summary["classes"]) == 30 and summary["classes"]["Pond"] == 420
    assert summary["problems"] == []


def test_real_aid_class_folders(shared_data):
    summary = inspect_dataset(shared_data / "aid_150px", check_images=False)
    assert summary["format"] == "scene-folders" and summary["images"] == 10000
    assert len(summary["classes"]) == 30 and summary["classes"]["BaseballField"] == 220


@pytest.mark.parametrize("name,train,test,captions,problems", [
    ("ucm", 1680, 210, 9450, 0), ("sydney", 497, 58, 2775 + 1985 + 500, 0), ("rsicd", 9828, 1093, 54605, 0),
    ("rsitmd", 4291, 452, 23715 - 20, 20)])
def test_real_retrieval_splits(shared_data, name, train, test, captions, problems):
    summary = inspect_dataset(shared_data / "rs_caption_splits_amfmn" / name)
    assert summary["format"] == "retrieval-splits"
    assert summary["splits"]["train"] == train and summary["splits"]["test"] == test
    assert summary["captions"] == captions and len(summary["problems"]) == problems
    derived = inspect_dataset(shared_data / "rs_caption_splits_amfmn" / name / "captions.json")
    assert derived["format"] == "karpathy-captions"
    assert derived["splits"]["train"] == train and derived["splits"]["test"] == test


def test_real_levir_cd_samples(shared_data):
    summary = inspect_dataset(shared_data / "levir_cd_samples", deep=True)
    assert summary["splits"] == {"test": 7, "train": 3, "val": 1} and summary["masks"] == 11
    assert summary["images_checked"] == 33 and summary["problems"] == []
