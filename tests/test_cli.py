import json
import subprocess
import sys

from fakedata import write_geotiff, write_karpathy, write_png_bomb
from terravl.cli.main import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_teaches_with_examples(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "terravl tiles" in out and "--format json" in out
    code, out, _ = run(capsys, "tiles", "--help")
    assert code == 0 and "Examples:" in out and "--overlap" in out


def test_info_json(capsys):
    code, out, _ = run(capsys, "info", "--format", "json")
    info = json.loads(out)
    assert code == 0 and info["version"] and info["device"] in ("cpu", "cuda")
    assert "landsat7_rgb.tif" in info["samples"] and isinstance(info["models"], list)


def test_tiles_json_and_geojson(capsys, tmp_path, samples):
    code, out, err = run(capsys, "tiles", str(samples / "landsat7_rgb.tif"), "--size", "256", "--overlap", "32",
                         "--out", str(tmp_path / "chips"), "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    # 791 × 718 with stride 224: 4 columns (0, 224, 448, 672) × 4 rows (0, 224, 448, 672)
    assert result["tiles"] == 16 and result["partial"] == 7 and result["problems"] == []
    features = json.loads((tmp_path / "chips" / "tiles.geojson").read_text())["features"]
    assert len(features) == 16 and features[0]["geometry"]["type"] == "Polygon"


def test_tiles_bad_file_one_line_and_run_finishes(capsys, tmp_path):
    good = write_geotiff(tmp_path / "good.tif", 40, 40)
    bomb = write_png_bomb(tmp_path / "bomb.png")
    code, out, err = run(capsys, "tiles", str(good), str(bomb), "--size", "32", "--out", str(tmp_path / "o"),
                         "--format", "json")
    assert code == 0
    assert json.loads(out)["tiles"] == 4
    problem_lines = [line for line in err.splitlines() if "problem:" in line]
    assert len(problem_lines) == 1 and "bomb.png" in problem_lines[0] and "exceeds the limit" in problem_lines[0]
    code, _, err = run(capsys, "tiles", str(bomb), "--out", str(tmp_path / "o2"))
    assert code == 2


def test_bad_usage_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "tiles", "x.tif", "--out", str(tmp_path), "--size", "32", "--overlap", "32")
    assert code == 2 and "overlap" in err.lower()
    code, _, _ = run(capsys, "tiles", "x.tif", "--out", str(tmp_path), "--bands", "purple")
    assert code == 2
    code, _, err = run(capsys, "datasets", "inspect", str(tmp_path / "nothing"))
    assert code == 2 and "no such file" in err


def test_datasets_inspect_json(capsys, tmp_path):
    write_karpathy(tmp_path / "d.json", malformed=True)
    code, out, _ = run(capsys, "datasets", "inspect", str(tmp_path / "d.json"), "--format", "json")
    summary = json.loads(out)
    assert code == 0 and summary["format"] == "karpathy-captions"
    assert set(summary) >= {"format", "splits", "classes", "problems"}
    assert all(set(p) == {"path", "error"} for p in summary["problems"]) and len(summary["problems"]) == 4
    code, out, _ = run(capsys, "datasets", "inspect", str(tmp_path / "d.json"))
    assert code == 0 and "4 problem(s)" in out


def test_console_script_runs(tmp_path):
    exe = [sys.executable, "-m", "terravl.cli.main"]
    done = subprocess.run([*exe, "datasets", "inspect", str(tmp_path / "missing")], capture_output=True, text=True)
    assert done.returncode == 2 and "error:" in done.stderr and done.stdout == ""
