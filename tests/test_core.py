"""The core's contracts (issue 14): stateless encoding, one result and problem shape, every input accounted for in
input order, one validation layer shared by the library and the CLI, bounded work."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import terravl.models as m
from fakedata import truncate, write_geotiff, write_image, write_karpathy, write_scene_folders
from terravl.errors import InputError, WorkBudgetError
from terravl.results import Answers, Classification, Problem


def _loop(path: Path) -> Path:
    os.symlink(path.name, path)  # a link to itself: ELOOP on open
    return path


# -- encoding is a pure call --------------------------------------------------------------------------------
def test_encode_batch_is_safe_from_many_threads(tmp_path, tiny_model):
    encoder = m.load(tiny_model)
    good = [write_image(tmp_path / f"g{i}.png", 40, 40, seed=i) for i in range(4)]
    bad = [truncate(write_image(tmp_path / f"b{i}.png", 80, 80, seed=i), 0.3) for i in range(2)]
    expected = encoder.encode_images(good)
    inputs = {0: [good[0], bad[0], good[1]], 1: [bad[1], good[2], good[3]]}
    results: dict[int, list] = {0: [], 1: []}

    def run(worker: int) -> None:
        for _ in range(5):
            results[worker].append(encoder.encode_batch(inputs[worker], batch_size=2))

    threads = [threading.Thread(target=run, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in results[0]:  # each call's own record, whatever the other thread did meanwhile
        assert out.kept == [0, 2] and [p.index for p in out.problems] == [1]
        assert out.problems[0].path.endswith("b0.png")
        np.testing.assert_allclose(out.vectors, expected[[0, 1]], atol=1e-5)
    for out in results[1]:
        assert out.kept == [1, 2] and out.problems[0].path.endswith("b1.png")
        np.testing.assert_allclose(out.vectors, expected[[2, 3]], atol=1e-5)


# -- every input accounted for, in input order ----------------------------------------------------------------
def test_classify_answers_in_input_order_with_problems_in_place(tmp_path, tiny_model):
    from terravl.tasks import classify

    folder = tmp_path / "folder"
    folder.mkdir()
    write_image(folder / "a.png", 40, 40, seed=1)
    write_image(folder / "b.png", 40, 40, seed=2)
    broken = truncate(write_image(tmp_path / "broken.png", 80, 80), 0.3)
    first = write_image(tmp_path / "first.png", 40, 40, seed=3)
    last = write_image(tmp_path / "last.png", 40, 40, seed=4)
    answers = classify([first, broken, folder, tmp_path / "missing.png", last], m.load(tiny_model), "x,y,z")
    assert isinstance(answers, Answers)
    names = [Path(a.path).name for a in answers]
    assert names == ["first.png", "broken.png", "a.png", "b.png", "missing.png", "last.png"]
    kinds = [type(a) for a in answers]
    assert kinds == [Classification, Problem, Classification, Classification, Problem, Classification]
    assert answers[4].error == "no such file"
    assert answers.summary() == {"inputs": 6, "answered": 4, "problems": 2}
    assert [d.get("error") is not None for d in answers.to_list()] == [False, True, False, False, True, False]


def test_symbolic_link_loop_is_reported_by_index_build_and_inspect(tmp_path, tiny_model):
    from terravl.datasets import inspect_dataset
    from terravl.index import build_index

    root = write_scene_folders(tmp_path / "scenes", per_class=2)
    (root / "Beach" / "broken.jpg").unlink(missing_ok=True)
    for broken in root.rglob("broken.jpg"):
        broken.unlink()
    _loop(root / "Beach" / "x.jpg")
    report = build_index([root], m.load(tiny_model), tmp_path / "idx")
    assert [(Path(p.path).name, p.error) for p in report.problems] == [("x.jpg", "symbolic-link loop")]
    assert report.files == report.added + len(report.problems) + report.skipped_existing
    summary = inspect_dataset(root)
    assert [p for p in summary["problems"] if p["path"].endswith("x.jpg")] == [
        {"path": str(root / "Beach" / "x.jpg"), "error": "symbolic-link loop"}]


def test_inspect_reports_an_image_a_caption_file_names_but_does_not_have(tmp_path):
    from terravl.datasets import inspect_dataset

    data = write_karpathy(tmp_path / "captions.json", n_train=1, n_test=1)
    (tmp_path / "imgs" / "scene_1.jpg").unlink()
    summary = inspect_dataset(data)
    assert summary["images_checked"] == 2
    assert [p["error"] for p in summary["problems"]] == ["image file not found"]
    assert summary["problems"][0]["path"].endswith("scene_1.jpg")


def test_caption_only_copy_is_not_a_problem_per_record(tmp_path):
    from terravl.datasets import inspect_dataset

    summary = inspect_dataset(write_karpathy(tmp_path / "captions.json", with_images=False))
    assert summary["problems"] == [] and summary["images_checked"] == 0


def test_no_valid_pixels_is_a_problem_not_a_confident_answer(tmp_path, tiny_model):
    import rasterio

    from terravl.tasks import classify

    empty = write_geotiff(tmp_path / "nan.tif", 64, 64, count=3, dtype="float32")
    with rasterio.open(empty, "r+") as dst:
        dst.write(np.full((3, 64, 64), np.nan, dtype=np.float32))
    big = write_geotiff(tmp_path / "big_nodata.tif", 600, 300, count=3, dtype="float32")
    with rasterio.open(big, "r+") as dst:
        dst.write(np.full((3, 300, 600), np.nan, dtype=np.float32))
    answers = classify([empty, big], m.load(tiny_model), "water,forest")
    assert [type(a) for a in answers] == [Problem, Problem]
    assert all("no valid pixels" in a.error for a in answers)


# -- one validation layer, the same for library, CLI and service ---------------------------------------------
@pytest.mark.parametrize("args,field", [
    (["search", "{idx}", ""], "query"),
    (["search", "{idx}", "harbor \udcff\udcfe"], "query"),
    (["search", "{idx}", "x", "--bbox", "500,500,600,600"], "bbox"),
    (["search", "{idx}", "x", "--bbox", "nan,nan,nan,nan"], "bbox"),
    (["search", "{idx}", "x", "--bbox", "1,2,3"], "bbox"),
    (["search", "{idx}", "x", "--date-from", "garbage"], "date_from"),
    (["search", "{idx}", "x", "--k", "0"], "k"),
    (["classify", "{img}", "--labels", ",".join(f"l{i}" for i in range(300))], "labels"),
    (["classify", "{img}", "--labels", "a,b", "--classes", "aid"], "labels"),
    (["classify", "{img}", "--labels", "x" * 101 + ",b"], "labels"),
    (["localize", "{img}", "river", "--scales", "8"], "scales"),
    (["localize", "{img}", "river", "--scales", "32,64,128,256,512"], "scales"),
    (["caption", "{img}", "--beams", "100000"], "beams"),
    (["caption", "{img}", "--method", "retrieval", "--bank", "{bank}", "--k", "100000"], "k"),
    (["ask", "{img}", "what \udcff?"], "question"),
])
def test_cli_refuses_what_the_api_refuses_naming_the_field(tmp_path, tiny_model, capsys, args, field):
    from terravl.cli.main import main
    from terravl.index import build_index

    img = write_image(tmp_path / "a.png", 40, 40)
    idx = tmp_path / "idx"
    if "{idx}" in args:
        build_index([img], m.load(tiny_model), idx)
    bank = write_karpathy(tmp_path / "bank.json", n_train=1, n_test=1)
    filled = [a.format(idx=idx, img=img, bank=bank) for a in args]
    assert main(filled) == 2
    err = capsys.readouterr().err
    assert f"error: {field}:" in err and "Traceback" not in err


def test_validation_functions_name_fields_and_parse():
    from terravl import validation as v

    assert v.check_bbox("-10,-5,10,5") == (-10.0, -5.0, 10.0, 5.0)
    assert v.check_scales("128,256") == (128, 256)
    assert v.check_labels("forest, river ,  harbor") == ["forest", "river", "harbor"]
    assert v.check_text("  a   harbor ") == "a harbor"
    assert v.check_date_range("2020-01-01", "2020-12-31") == ("2020-01-01", "2020-12-31")
    for call, field in [(lambda: v.check_bbox("10,0,-10,5"), "bbox"),
                        (lambda: v.check_date_range("2021-01-01", "2020-01-01"), "date_from"),
                        (lambda: v.check_text(b"\xff"), "query"),
                        (lambda: v.check_labels(None, "nope", {"aid": ["a", "b"]}), "classes"),
                        (lambda: v.check_beams(9), "beams")]:
        with pytest.raises(InputError) as info:
            call()
        assert info.value.source == field


# -- bounded work ---------------------------------------------------------------------------------------------
def test_localize_keeps_scores_not_pixels_and_honours_a_work_budget(tmp_path, tiny_model):
    import tracemalloc

    from terravl.tasks import localize
    from terravl.tasks.localize import count_windows

    encoder = m.load(tiny_model)
    scene = write_image(tmp_path / "scene.png", 1000, 1000, seed=3)
    windows = count_windows(1000, 1000, (32,), 0.5)
    with pytest.raises(WorkBudgetError) as info:
        localize(scene, "a river", encoder, scales=(32,), max_windows=windows - 1)
    assert info.value.source == "scales"
    tracemalloc.start()
    result = localize(scene, "a river", encoder, scales=(32,), top=3)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result["windows"] == windows > 3000
    assert len(result["regions"]["features"]) == 3
    # the image (3 MB) plus batches; keeping every tile's pixels (or a view of the whole image each) is far more
    assert peak < 40 << 20, f"peak traced memory {peak / 2**20:.0f} MiB"


def test_localize_refuses_unwritable_outputs_before_any_work(tmp_path, tiny_model, capsys):
    from terravl.cli.main import main

    scene = write_image(tmp_path / "scene.png", 200, 200)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
            target = tmp_path / "scene.png" / "regions.geojson"
        else:
            target = locked / "regions.geojson"
        code = main(["localize", str(scene), "a river", "--model", str(tiny_model), "--regions", str(target)])
    finally:
        locked.chmod(0o700)
    assert code == 1
    assert "cannot" in capsys.readouterr().err and not target.exists()


def test_results_json_matches_the_shapes_the_cli_prints(tmp_path, tiny_model, capsys):
    from terravl.cli.main import main

    img = write_image(tmp_path / "a.png", 40, 40)
    assert main(["classify", str(img), str(tmp_path / "gone.png"), "--labels", "a,b", "--model", str(tiny_model),
                 "--format", "json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert list(out[0]) == ["path", "label", "score", "top"] and list(out[0]["top"][0]) == ["label", "probability"]
    assert out[1] == {"path": str(tmp_path / "gone.png"), "error": "no such file"}
    assert "1 answered, 1 problem(s), 2 in all" in captured.err


def test_bands_option_reads_a_multispectral_file_that_says_nothing(tmp_path, tiny_model, capsys):
    from terravl.cli.main import main

    s2 = write_geotiff(tmp_path / "s2.tif", 64, 64, count=13, dtype="uint16")
    args = ["classify", str(s2), "--labels", "water,forest", "--model", str(tiny_model), "--format", "json"]
    assert main(args) == 2  # nothing in the file says which bands are red, green and blue
    assert "band profile" in capsys.readouterr().err
    assert main(args + ["--bands", "sentinel2"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["label"] in {"water", "forest"}
    assert result["bands"] == {"bands": [4, 3, 2], "reason": "band profile sentinel2"}
    assert main(args + ["--bands", "4,3"]) == 2
    assert "error: bands:" in capsys.readouterr().err


def test_caption_memory_cache_follows_the_buffers():
    from terravl.models.terravl_encoder import TerraVLModel

    torch.manual_seed(0)
    config = {"arch": "terravl-cnn", "embed_dim": 16,
              "image": {"widths": [8], "depths": [1], "resolution": 32, "dropout": 0.0, "mean": [0.5] * 3,
                        "std": [0.25] * 3},
              "text": {"tower": "all-MiniLM-L6-v2", "features": 384, "projection": "linear"}}
    pixels = torch.randn(2, 3, 32, 32)

    def memory(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return (torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=-1),
                torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=-1))

    model, other = TerraVLModel(config).eval(), TerraVLModel(config).eval()
    other.load_state_dict(model.state_dict(), strict=False)
    model.set_memory(*memory(1), k=5, tau=0.05, alpha=0.5)
    other.set_memory(*memory(2), k=5, tau=0.05, alpha=0.5)
    model.encode_image(pixels)  # builds the fp32 copy of memory 1
    model.set_memory(*memory(2), k=5, tau=0.05, alpha=0.5)  # replaced: the cached fp32 copy must follow
    assert torch.allclose(model.encode_image(pixels), other.encode_image(pixels))
    model.load_state_dict({**model.state_dict(), "memory_keys": memory(1)[0].half(),
                           "memory_values": memory(1)[1].half()})  # loaded in place into the same buffers
    reference = TerraVLModel(config).eval()
    reference.load_state_dict(model.state_dict(), strict=False)
    reference.set_memory(*memory(1), k=5, tau=0.05, alpha=0.5)
    assert torch.allclose(model.encode_image(pixels), reference.encode_image(pixels), atol=1e-6)
    assert not torch.allclose(model.encode_image(pixels), other.encode_image(pixels))


def test_a_huge_sparse_raster_is_answered_tile_by_tile_at_constant_memory(tmp_path, tiny_model):
    import tracemalloc

    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from terravl.tasks import classify

    path = tmp_path / "sparse.tif"
    profile = {"driver": "GTiff", "width": 12_000, "height": 12_000, "count": 3, "dtype": "uint8", "nodata": 0,
               "tiled": True, "blockxsize": 256, "blockysize": 256, "sparse_ok": True, "crs": "EPSG:32618",
               "transform": Affine(1.0, 0, 300000.0, 0, -1.0, 4000000.0)}
    with rasterio.open(path, "w", **profile) as dst:  # 432 MB of pixels if decoded whole; two blocks of data
        block = np.random.default_rng(0).integers(1, 255, (3, 256, 256), dtype=np.uint8)
        dst.write(block, window=Window(512, 256, 256, 256))
        dst.write(block, window=Window(11_520, 11_520, 256, 256))
    tracemalloc.start()
    answers = classify([path], m.load(tiny_model), "water,forest", tile_size=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [a.window for a in answers] == [{"col_off": 512, "row_off": 256, "width": 256, "height": 256},
                                           {"col_off": 11_520, "row_off": 11_520, "width": 256, "height": 256}]
    assert all(a.footprint["type"] == "Polygon" for a in answers)
    assert peak < 64 << 20, f"peak traced memory {peak / 2**20:.0f} MiB"
