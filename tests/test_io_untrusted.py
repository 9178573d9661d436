"""Untrusted files (uploads): only self-contained formats are decoded, each by its own decoder, chosen by content."""

import os

import numpy as np
import pytest
from PIL import Image

from fakedata import write_geotiff, write_image
from terravl.errors import RasterReadError, UnsupportedFormatError
from terravl.io import iter_tiles, open_raster, raster_info, read_image
from terravl.io.formats import sniff_format


def write_vrt(path, source):
    """A 1 KB GDAL VRT (XML) whose pixels come from ``source``, another file on this machine."""
    path.write_text(f"""<VRTDataset rasterXSize="64" rasterYSize="48">
  <VRTRasterBand dataType="Byte" band="1">
    <SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand>
</VRTDataset>
""")
    return path


@pytest.fixture
def secret_jpeg(tmp_path):
    (tmp_path / "server").mkdir()
    return write_image(tmp_path / "server" / "secret.jpg", 64, 48)


@pytest.mark.parametrize("name", ["x.tif", "upload"])
def test_vrt_referencing_a_server_file_is_refused_not_decoded(tmp_path, secret_jpeg, name):
    vrt = write_vrt(tmp_path / name, secret_jpeg)
    if name.endswith(".tif"):  # the threat is real: trusted, GDAL follows the recipe and reads the other file
        assert read_image(vrt).array.shape == (48, 64, 3)
    readers = [lambda: raster_info(vrt, trusted=False), lambda: open_raster(vrt, trusted=False),
               lambda: read_image(vrt, trusted=False), lambda: list(iter_tiles(vrt, size=32, trusted=False))]
    for read in readers:
        with pytest.raises(UnsupportedFormatError) as caught:
            read()
        message = str(caught.value)
        assert message.startswith(str(vrt)) and "not a JPEG, PNG, TIFF/GeoTIFF or WebP" in message
        assert "secret" not in message and len(message) < 400  # says what the file is, shows nothing of it
    with pytest.raises(UnsupportedFormatError, match="^image: "):
        sniff_format(vrt, field="image")


def test_jpeg_named_tif_and_real_geotiff_open_untrusted(tmp_path, secret_jpeg, samples):
    renamed = tmp_path / "x.tif"
    renamed.write_bytes(secret_jpeg.read_bytes())
    img = read_image(renamed, trusted=False)
    with Image.open(secret_jpeg) as expected:
        np.testing.assert_array_equal(img.array, np.asarray(expected.convert("RGB")))
    assert raster_info(renamed, trusted=False).driver == "JPEG"
    data = np.random.default_rng(3).integers(1, 255, (3, 40, 50), dtype=np.uint8)
    tif = write_geotiff(tmp_path / "geo.tif", 50, 40, data=data)
    untrusted = read_image(tif, trusted=False)
    np.testing.assert_array_equal(untrusted.array, np.moveaxis(data, 0, -1))
    assert untrusted.georef.crs_name == "EPSG:32618"
    assert raster_info(tif, trusted=False).driver == "GTiff"
    real = samples / "landsat7_rgb.tif"
    np.testing.assert_array_equal(read_image(real, trusted=False).array, read_image(real).array)
    tiles = list(iter_tiles(real, size=256, trusted=False))
    assert len(tiles) == 4 * 3 and tiles[0].footprint is not None  # 791 × 718 in 256-pixel tiles


def test_content_not_name_picks_the_decoder(tmp_path):
    png_as_jpg = tmp_path / "photo.jpg"
    write_image(tmp_path / "real.png", 30, 20).rename(png_as_jpg)
    img = read_image(png_as_jpg, trusted=False)
    with Image.open(png_as_jpg) as expected:  # lossless: exactly the PNG's pixels, not a JPEG decoder's failure
        np.testing.assert_array_equal(img.array, np.asarray(expected.convert("RGB")))
    assert raster_info(png_as_jpg, trusted=False).driver == "PNG"
    webp = tmp_path / "w.tif"
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(webp, format="WEBP", lossless=True)
    assert read_image(webp, trusted=False).array.shape == (10, 12, 3)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UnsupportedFormatError, match="empty.png: empty file"):
        read_image(empty, trusted=False)


def test_untrusted_tiff_reads_no_sidecar_even_when_the_user_allows_it(tmp_path, monkeypatch):
    tif = write_geotiff(tmp_path / "plain.tif", 16, 16, crs=None)
    (tmp_path / "plain.tif.aux.xml").write_text(
        '<PAMDataset><SRS>EPSG:4326</SRS><GeoTransform>10, 1, 0, 20, 0, -1</GeoTransform></PAMDataset>')
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "FALSE")  # the user's own setting: trusted reads honour it
    assert raster_info(tif).georef is not None
    assert raster_info(tif, trusted=False).georef is None  # an upload's neighbours are never read


@pytest.mark.parametrize("trusted", [True, False])
@pytest.mark.parametrize("suffix", ["jpg", "tif"])
def test_links_loops_and_missing_files_say_what_they_are(tmp_path, trusted, suffix):
    loop = tmp_path / f"x.{suffix}"
    os.symlink(loop, loop)
    with pytest.raises(RasterReadError, match=f"x.{suffix}: symbolic-link loop"):
        read_image(loop, trusted=trusted)
    with pytest.raises(RasterReadError, match=f"missing.{suffix}: no such file"):
        raster_info(tmp_path / f"missing.{suffix}", trusted=trusted)
    dangling = tmp_path / f"gone.{suffix}"
    os.symlink(tmp_path / "nowhere", dangling)
    with pytest.raises(RasterReadError, match="broken symbolic link"):
        open_raster(dangling, trusted=trusted)
    folder = tmp_path / f"folder.{suffix}"
    folder.mkdir()
    with pytest.raises(RasterReadError, match="folder"):
        read_image(folder, trusted=trusted)
