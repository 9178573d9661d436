"""GDAL settings that TerraVL needs, applied only while TerraVL itself opens and reads rasters.

A library must leave its host process as it found it: importing :mod:`terravl.io` changes no environment variable
and no GDAL or Pillow global. Instead:

* every open (and every read of an untrusted file) runs inside :func:`gdal_env` (a :class:`rasterio.Env`,
  entered in the thread that does the work — rasterio keeps one per thread, and
  :class:`~terravl.io.raster.RasterSource` opens a handle in each worker thread), which sets
  ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``: no directory listing, no sidecar (``.aux.xml``, ``.ovr``, ``.msk``)
  read beside a file. GDAL looks sidecars up when it opens a file, so reads of trusted files need no ``Env``;
* GDAL's block cache, one per process, is capped at :data:`CACHE_BYTES` by :func:`acquire_block_cache` while at
  least one TerraVL raster is open, and given back its previous size when the last one closes. rasterio's ``Env``
  cannot do this safely: two threads' ``Env`` would each restore the size the other one set.

A value the user put in the environment (``GDAL_CACHEMAX``, ``GDAL_DISABLE_READDIR_ON_OPEN``) wins, except that
files from untrusted sources are always opened with ``EMPTY_DIR``.
"""

from __future__ import annotations

import os
import threading

import rasterio

CACHE_BYTES = 64 * 1024 * 1024
"""GDAL's block cache while TerraVL reads (its default is 5 % of RAM): tiling a huge raster at constant memory."""

_lock = threading.Lock()
_users = 0
_saved_cache: int | None = None


def gdal_options(untrusted: bool = False, remote: bool = False) -> dict[str, str]:
    """The GDAL config options for one open or read, less those the user set in the environment; for a
    ``remote`` raster (``/vsis3/``) also the endpoint and region from the AWS environment
    (:func:`terravl.io.remote.gdal_s3_options`)."""
    options = {}
    if untrusted or "GDAL_DISABLE_READDIR_ON_OPEN" not in os.environ:
        options["GDAL_DISABLE_READDIR_ON_OPEN"] = "EMPTY_DIR"
    if remote:
        from terravl.io.remote import gdal_s3_options

        options.update(gdal_s3_options())
    return options


def gdal_env(untrusted: bool = False, remote: bool = False) -> rasterio.Env:
    """A :class:`rasterio.Env` with :func:`gdal_options`; enter it in the thread that calls GDAL.

    Its session is rasterio's ``DummySession``: GDAL reads the AWS credentials from the environment itself, and
    rasterio's default (a boto3 session built whenever AWS keys are in the environment: ~15 ms measured here)
    would be paid on every open of every local file."""
    from rasterio.session import DummySession

    return rasterio.Env(session=DummySession(), **gdal_options(untrusted, remote))


def acquire_block_cache() -> None:
    """Cap GDAL's process-wide block cache at :data:`CACHE_BYTES` while any TerraVL raster is open (reference
    counted across threads, paired with :func:`release_block_cache`); the previous size comes back when the last
    one closes. A smaller cache, or one the user set with ``GDAL_CACHEMAX``, is left alone."""
    global _users, _saved_cache
    from rasterio._env import get_gdal_config, set_gdal_config

    with _lock:
        if _users == 0 and "GDAL_CACHEMAX" not in os.environ:
            current = get_gdal_config("GDAL_CACHEMAX")  # rasterio answers GDALGetCacheMax64(): bytes, as an int
            if isinstance(current, int) and current > CACHE_BYTES:
                _saved_cache = current
                set_gdal_config("GDAL_CACHEMAX", CACHE_BYTES)
        _users += 1


def release_block_cache() -> None:
    """The end of one :func:`acquire_block_cache`."""
    global _users, _saved_cache
    from rasterio._env import set_gdal_config

    with _lock:
        _users = max(0, _users - 1)
        if _users == 0 and _saved_cache is not None:
            set_gdal_config("GDAL_CACHEMAX", _saved_cache)
            _saved_cache = None
