"""Library hygiene: importing or using terravl.io leaves the host process's environment, GDAL and Pillow as they
were; TerraVL's own settings apply only to its own opens and reads, in whichever thread does them."""

import json
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio._env import get_gdal_config

from fakedata import write_geotiff, write_image, write_png_bomb
from terravl.errors import ImageTooLargeError
from terravl.io import iter_tiles, open_raster, raster_info, read_image
from terravl.io.gdalenv import CACHE_BYTES

PROBE = r"""
import json, os, sys
from PIL import Image
def state():
    from rasterio._env import get_gdal_config
    return {"environ": {k: v for k, v in os.environ.items() if k.startswith(("GDAL_", "CPL_", "VSI_"))},
            "max_image_pixels": Image.MAX_IMAGE_PIXELS,
            "readdir": get_gdal_config("GDAL_DISABLE_READDIR_ON_OPEN"),
            "cachemax": get_gdal_config("GDAL_CACHEMAX")}
before = state()
import terravl.io, terravl.io.raster, terravl.io.tiling
imported = state()
from terravl.io import read_image, iter_tiles
read_image(sys.argv[1]); read_image(sys.argv[2]); list(iter_tiles(sys.argv[1], size=16, workers=2))
used = state()
print(json.dumps({"before": before, "imported": imported, "used": used}))
"""


def _probe(tmp_path, env=None):
    tif = write_geotiff(tmp_path / "a.tif", 40, 40)
    png = write_image(tmp_path / "a.png", 40, 30)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("GDAL_CACHEMAX", "GDAL_DISABLE"))}
    run_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", PROBE, str(tif), str(png)], capture_output=True, text=True,
                         env=run_env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_and_use_leave_the_host_process_untouched(tmp_path):
    seen = _probe(tmp_path)
    assert seen["imported"] == seen["before"]
    assert seen["before"]["max_image_pixels"] == 89478485  # Pillow's own default, still guarding the host
    assert seen["used"] == seen["before"]  # nothing left behind after reading and tiling either


def test_a_users_own_gdal_settings_win(tmp_path):
    seen = _probe(tmp_path, {"GDAL_CACHEMAX": "100"})
    assert seen["used"]["cachemax"] == 100 * 1024 * 1024 and seen["used"]["environ"]["GDAL_CACHEMAX"] == "100"


def test_settings_apply_while_reading_in_every_thread(tmp_path, monkeypatch):
    path = write_geotiff(tmp_path / "big.tif", 200, 200)
    opened: list[tuple[str, object]] = []
    real_open = rasterio.open

    def spy(*args, **kwargs):
        opened.append((threading.current_thread().name, get_gdal_config("GDAL_DISABLE_READDIR_ON_OPEN")))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(rasterio, "open", spy)
    outside = get_gdal_config("GDAL_CACHEMAX")
    with open_raster(path) as src:
        assert get_gdal_config("GDAL_CACHEMAX") == min(outside, CACHE_BYTES)  # capped while TerraVL reads
        tiles = list(iter_tiles(path, size=32, workers=2))
    assert len(tiles) == 49
    assert {name.split("_")[0] for name, _ in opened} >= {"MainThread", "terravl-tiles"}  # workers open their own
    assert all(value == "EMPTY_DIR" for _, value in opened)
    assert get_gdal_config("GDAL_CACHEMAX") == outside and get_gdal_config("GDAL_DISABLE_READDIR_ON_OPEN") is None
    assert src.bands == (1, 2, 3)


def test_pillow_bomb_check_is_terravls_own_and_leaves_pillows_alone(tmp_path, monkeypatch):
    # 14,000 × 13,000 = 182 Mpx: over Pillow's refusal threshold (2 × 89.5 Mpx), under TerraVL's 200 Mpx limit
    big = write_png_bomb(tmp_path / "big.png", 14_000, 13_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        info = raster_info(big)
    assert (info.width, info.height) == (14_000, 13_000)
    with pytest.raises(Image.DecompressionBombError):  # the host's own Image.open keeps Pillow's guard
        Image.open(big)
    assert Image.MAX_IMAGE_PIXELS == 89478485
    monkeypatch.setenv("TERRAVL_MAX_PIXELS", "1000000")
    with pytest.raises(ImageTooLargeError, match="big.png.*182,000,000 pixels"):
        read_image(big)  # refused on the header, before any decoding
    normal = read_image(write_image(tmp_path / "n.png", 20, 10))
    assert normal.array.shape == (10, 20, 3) and np.asarray(normal.array).dtype == np.uint8
