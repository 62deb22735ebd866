"""Where datasets and look-up tables live: local paths and urls.

A local store is a `Path`. A url (``s3://bucket/data.zarr/raw``, or any
other fsspec url such as ``memory://``) stays a string: a `Path` folds its
``//`` into ``/``, and the data would land in a local directory named
``s3:``. Remote stores are read and written through fsspec (zarr's
`FsspecStore` for arrays); S3 needs s3fs (``pip install "volara[s3]"``),
imported only when an ``s3://`` store is used.

``s3_kwargs`` (on datasets and look-up tables, as in volara 1.0.5) are the
options of ``s3fs.S3FileSystem``: ``key``, ``secret``, ``endpoint_url``,
``client_kwargs``, ... The names boto3 uses for the same things
(``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``,
``region_name``) are accepted too.

`check_reachable` asks the server once, with short timeouts and no
retries, whether it answers and accepts the credentials: a wrong endpoint or
key is then reported before any block runs, not as minutes of retries in
every worker.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# what pathlib makes of a url ("s3://b/k" becomes "s3:/b/k"); two letters at
# least, so that a drive letter ("C:/") is not taken for a protocol
_FOLDED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")
_S3_PROTOCOLS = ("s3", "s3a")
_BOTO_NAMES = {
    "aws_access_key_id": "key",
    "aws_secret_access_key": "secret",
    "aws_session_token": "token",
}
# the reachability check only: fail within seconds instead of retrying
_CHECK_CONFIG = {
    "connect_timeout": 5,
    "read_timeout": 10,
    "retries": {"max_attempts": 1, "mode": "standard"},
}
# (options, bucket) pairs that answered: a pipeline names the same store in
# several tasks, and asks once
_reachable: set[str] = set()


def is_url(location: Path | str) -> bool:
    """Whether ``location`` is a url (``s3://...``) rather than a local path."""
    return isinstance(location, str) and bool(_URL.match(location))


def path_or_url(location: Path | str, what: str) -> Path | str:
    """``location`` as a `Path`, or unchanged if it is a url.

    A path that starts like a folded url (``s3:/bucket/...``, what
    ``Path("s3://bucket/...")`` gives) is refused: written as a local path it
    would create a directory named ``s3:``.
    """
    if is_url(location):
        return location
    text = str(location)
    if _FOLDED_URL.match(text):
        raise ValueError(
            f"{what}: {text!r} looks like a url whose '//' was folded into '/' "
            "(by pathlib.Path?). Give the url as a string, e.g. "
            "'s3://bucket/data.zarr/raw'; volara does not write local directories "
            f"named {text.split('/', 1)[0]!r}."
        )
    return Path(location)


def validate_location(value: Any, handler: Any, what: str) -> Path | str:
    """The body of a pydantic ``mode="wrap"`` validator for a ``Path | str``
    field holding a location: a url is kept as given, before pydantic's
    union can turn it into a `Path` (JSON cannot tell the two apart);
    anything else goes through `path_or_url`."""
    if is_url(value):
        return value
    return path_or_url(handler(value), what)


def location_key(location: Path | str) -> str:
    """A string naming ``location`` uniquely, to compare the outputs and
    inputs of tasks: a url as given (without a trailing ``/``), a local path
    made absolute."""
    if is_url(location):
        return str(location).rstrip("/")
    return str(Path(location).absolute())


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def storage_options(url: str, s3_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The fsspec filesystem options for ``url``: ``s3_kwargs``, with boto3's
    names mapped to s3fs's for S3."""
    options = dict(s3_kwargs or {})
    if protocol(url) not in _S3_PROTOCOLS:
        return options
    for boto_name, s3fs_name in _BOTO_NAMES.items():
        if boto_name in options:
            options.setdefault(s3fs_name, options.pop(boto_name))
    if "region_name" in options:
        client_kwargs = dict(options.get("client_kwargs") or {})
        client_kwargs.setdefault("region_name", options.pop("region_name"))
        options["client_kwargs"] = client_kwargs
    return options


def require_backend(url: str, what: str) -> None:
    """Raise a clear error if fsspec cannot open ``url``: an unknown protocol
    (`ValueError`), or a package it needs is missing (`ImportError`)."""
    import fsspec

    if protocol(url) in _S3_PROTOCOLS:
        try:
            import s3fs  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f'{what}: {url} is on S3, which needs s3fs: pip install "volara[s3]"'
            ) from e
        return
    try:
        fsspec.get_filesystem_class(protocol(url))
    except ValueError as e:
        raise ValueError(
            f"{what}: volara cannot read or write {url}: {protocol(url)!r} is not a "
            "storage protocol it knows. Use a local path or an s3:// url."
        ) from e
    except ImportError as e:
        raise ImportError(
            f"{what}: {url} needs a package that is not installed ({e})"
        ) from e


def filesystem(url: str, s3_kwargs: dict[str, Any] | None, what: str) -> Any:
    """The fsspec filesystem ``url`` lives on. S3 listings are not cached:
    zarr writes through another instance, whose writes a cache would miss."""
    import fsspec

    require_backend(url, what)
    options = storage_options(url, s3_kwargs)
    if protocol(url) in _S3_PROTOCOLS:
        options = {**options, "use_listings_cache": False}
    return fsspec.filesystem(protocol(url), **options)


def check_reachable(url: str, s3_kwargs: dict[str, Any] | None, what: str) -> None:
    """Raise a clear error naming ``what`` if the server of ``url`` does not
    answer (`ConnectionError`), refuses the credentials (`PermissionError`),
    or has no bucket of that name (`FileNotFoundError`). Other protocols
    only need their package."""
    require_backend(url, what)
    if protocol(url) not in _S3_PROTOCOLS:
        return
    options = storage_options(url, s3_kwargs)
    path = url.split("://", 1)[1]
    bucket = path.split("/", 1)[0]
    key = json.dumps([options, bucket], sort_keys=True, default=str)
    if key in _reachable:
        return
    _ask_server(path, options, url, what)
    _reachable.add(key)


def _ask_server(path: str, options: dict[str, Any], url: str, what: str) -> None:
    import s3fs

    config = {**(options.get("config_kwargs") or {}), **_CHECK_CONFIG}
    # a cached instance (its own, as its options differ): one whose session
    # is closed by the garbage collector logs errors from the wrong loop
    s3 = s3fs.S3FileSystem(**{**options, "config_kwargs": config})
    s3.retries = 1  # s3fs's own retries, on top of botocore's (a class default)
    s3.invalidate_cache()
    endpoint = _endpoint(options)
    bucket = path.split("/", 1)[0]
    try:
        # the array itself, or, if it is not there (yet), its bucket: any
        # web server says "not found", only an S3 server knows the bucket
        if not s3.exists(path) and not s3.exists(bucket):
            raise FileNotFoundError(
                f"{what}: the server at {endpoint} has no bucket {bucket!r} for "
                f"{url}. Create the bucket, or check s3_kwargs' endpoint_url (is "
                "it an S3 server?)."
            )
    except FileNotFoundError:
        raise
    except PermissionError as e:
        raise PermissionError(
            f"{what}: the S3 server at {endpoint} refused access to {url} ({e}). "
            "Check the credentials (s3_kwargs' key and secret, or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and their rights on the bucket."
        ) from e
    except Exception as e:
        raise ConnectionError(
            f"{what}: cannot reach the S3 server at {endpoint} for {url} "
            f"({type(e).__name__}: {e}). Check s3_kwargs' endpoint_url and that "
            "the server is up."
        ) from e


def _endpoint(options: dict[str, Any]) -> str:
    client_kwargs = options.get("client_kwargs") or {}
    return str(
        options.get("endpoint_url")
        or client_kwargs.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "AWS (the default endpoint)"
    )
