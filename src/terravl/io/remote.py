"""Rasters in object storage: ``s3://bucket/key`` URLs (and GDAL's own ``/vsis3/bucket/key``) accepted wherever a
raster path is.

GDAL reads them through ``/vsis3/`` with ranged HTTP requests, so a large GeoTIFF (a COG above all) is tiled at
constant memory without being downloaded. Credentials and the endpoint come from the standard AWS environment:

* ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` (and
  ``~/.aws/credentials``), ``AWS_NO_SIGN_REQUEST=YES`` for public buckets: GDAL reads these itself;
* ``AWS_REGION`` / ``AWS_DEFAULT_REGION``;
* ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO, Ceph, a local test server): mapped to GDAL's
  ``AWS_S3_ENDPOINT``, ``AWS_HTTPS`` and ``AWS_VIRTUAL_HOSTING=FALSE`` (path-style addressing), which GDAL does
  not derive from the URL itself. A GDAL option the user set in the environment wins.

These options are applied only to TerraVL's own opens and reads of remote rasters (:func:`gdal_s3_options`, used
by :func:`terravl.io.gdalenv.gdal_env`); nothing is set process-wide. ``s3://bucket/prefix/`` "folders" are
listed with boto3 (:func:`expand`). A failed open says what S3 answered, naming the URL: no such object, no such
bucket, access denied (:func:`read_error`).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from terravl.errors import InputError, RasterReadError

S3_SCHEME = "s3://"
VSIS3 = "/vsis3/"


def is_remote(path: object) -> bool:
    """Whether ``path`` names an object in S3-compatible storage (``s3://…`` or ``/vsis3/…``).

    ``Path("s3://b/k")`` collapses the double slash into ``s3:/b/k``; that spelling is accepted too, so a URL
    that went through :class:`pathlib.Path` on its way here still reads as a URL."""
    if not isinstance(path, (str, Path)):
        return False
    text = str(path)
    return text.startswith((S3_SCHEME, VSIS3)) or (text.startswith("s3:/") and len(text) > 4)


def to_url(path: str | Path) -> str:
    """The canonical ``s3://bucket/key`` form of a remote path (the name stored in indexes and reports)."""
    text = str(path)
    if text.startswith(VSIS3):
        return S3_SCHEME + text[len(VSIS3):]
    if text.startswith(S3_SCHEME):
        return text
    if text.startswith("s3:/"):
        return S3_SCHEME + text[len("s3:/"):]
    raise ValueError(f"not an s3:// URL or /vsis3/ path: {text!r}")


def gdal_path(path: str | Path) -> str:
    """The ``/vsis3/bucket/key`` path GDAL opens for a remote path."""
    return VSIS3 + to_url(path)[len(S3_SCHEME):]


def split(path: str | Path) -> tuple[str, str]:
    """(bucket, key) of a remote path; the key may be empty (a whole bucket) or end with ``/`` (a prefix)."""
    rest = to_url(path)[len(S3_SCHEME):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InputError(str(path), "an s3:// URL needs a bucket name: s3://bucket/key")
    return bucket, key


def endpoint_url() -> str | None:
    """The S3 endpoint the AWS tools would use: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else None
    (Amazon S3 itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def gdal_s3_options() -> dict[str, str]:
    """GDAL config options for reading ``/vsis3/`` from the AWS environment variables GDAL does not read itself
    (see the module's docstring); options the user set for GDAL directly are left to GDAL."""
    options: dict[str, str] = {}
    url = endpoint_url()
    if url and "AWS_S3_ENDPOINT" not in os.environ:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        if "AWS_HTTPS" not in os.environ:
            options["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        if "AWS_VIRTUAL_HOSTING" not in os.environ:
            options["AWS_VIRTUAL_HOSTING"] = "FALSE"  # path-style: what MinIO and most local servers answer
    if "AWS_REGION" not in os.environ and os.environ.get("AWS_DEFAULT_REGION"):
        options["AWS_REGION"] = os.environ["AWS_DEFAULT_REGION"]
    return options


def s3_client():
    """A boto3 S3 client configured from the environment (a fresh session each time, so credentials changed in
    the environment since the last call are used, not a cached default session's)."""
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError:  # pragma: no cover - boto3 is a dependency; an install without it says what to do
        raise InputError("s3", "listing s3:// prefixes needs boto3 (pip install boto3)") from None
    unsigned = os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1")
    config = Config(signature_version=UNSIGNED, retries={"max_attempts": 2}) if unsigned else \
        Config(retries={"max_attempts": 2})
    session = boto3.session.Session(region_name=region())
    return session.client("s3", endpoint_url=endpoint_url(), config=config)


def expand(path: str | Path, suffixes: set[str] | frozenset[str]) -> list[str]:
    """The raster objects a remote path names, as ``s3://`` URLs: the object itself when its name ends in one of
    ``suffixes``; otherwise the objects under it as a prefix (``s3://bucket/prefix/``), listed recursively and
    sorted like a walked folder. A prefix with no such object, or one that cannot be listed, is returned as is, so
    that reading it reports the reason (no such object, access denied) instead of yielding nothing."""
    url = to_url(path)
    bucket, key = split(url)
    if key and not key.endswith("/") and Path(key).suffix.lower() in suffixes:
        return [url]
    prefix = key if not key or key.endswith("/") else key + "/"
    try:
        found = _list(bucket, prefix)
    except Exception:  # noqa: BLE001 - a listing that fails: reading the URL names the reason
        return [url]
    rasters = sorted(f"{S3_SCHEME}{bucket}/{k}" for k in found if Path(k).suffix.lower() in suffixes)
    return rasters or [url]


def _list(bucket: str, prefix: str) -> list[str]:
    client = s3_client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", ()) if not obj["Key"].endswith("/")]
    return keys


def read_error(path: str | Path, exc: BaseException) -> RasterReadError:
    """The :class:`RasterReadError` for a remote raster GDAL could not open, naming the URL and saying what S3
    answered: no such object, no such bucket, access denied, no credentials — or, for an object that is there
    and readable, that it is not a raster GDAL reads."""
    url = to_url(path)
    gdal_text = _first_line(exc)
    reason = _status(url)
    if reason is None:
        lowered = gdal_text.lower()
        if "does not exist in the file system" in lowered:
            reason = "no such object"
        elif "access denied" in lowered or "403" in lowered:
            reason = "access denied (check the credentials and the bucket's policy)"
        else:
            reason = f"cannot read the object ({gdal_text})"
    elif reason == "ok":
        reason = f"not a readable raster ({gdal_text})"
    return RasterReadError(url, reason)


def _status(url: str) -> str | None:
    """What S3 says of the object (a HEAD request) or the prefix (a listing): ``ok``, or why it cannot be read;
    None when S3 cannot be asked."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:  # pragma: no cover
        return None
    bucket, key = split(url)
    prefix = not key or key.endswith("/")
    try:
        if prefix:  # a "folder" that expanded to nothing: empty, or not listable
            s3_client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
            return "no such object (an s3:// prefix with no raster objects under it)"
        s3_client().head_object(Bucket=bucket, Key=key)
    except NoCredentialsError:
        return ("no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; "
                "AWS_NO_SIGN_REQUEST=YES for a public bucket)")
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return f"no such bucket ({bucket})"
        if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
            return "no such object"
        if status == 403 or code in ("403", "AccessDenied", "Forbidden"):
            return "access denied (check the credentials and the bucket's policy)"
        return f"cannot read the object (S3 answered {status or code})"
    except (BotoCoreError, InputError) as err:
        return f"cannot reach the object store ({_first_line(err)})"
    return "ok"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
