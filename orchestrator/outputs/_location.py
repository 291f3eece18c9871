"""Where the store is: `file:///abs/path` or `s3://bucket[/prefix]`, parsed and checked once.

The composition root reads ORCHESTRATOR_STORAGE_URL and hands the string here; a
mistake (a relative path, an http URL, a bucket name S3 would refuse) fails at start-up
with the variable's name in the message, not on the first delivered image.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from pathlib import Path
from typing import Final, Literal

import attrs

from ._errors import StorageUrlError
from ._keys import check_key

_VARIABLE: Final = "ORCHESTRATOR_STORAGE_URL"
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Names S3 reserves for its own features (general purpose buckets, 2025 rules).
_RESERVED_PREFIXES: Final = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES: Final = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


@attrs.frozen
class FileLocation:
    """Files under `root`, an absolute path."""

    root: Path

    @property
    def scheme(self) -> Literal["file"]:
        return "file"


@attrs.frozen
class S3Location:
    """Objects in `bucket`, every key under `prefix` (empty, or ending in `/`)."""

    bucket: str
    prefix: str = ""

    @property
    def scheme(self) -> Literal["s3"]:
        return "s3"


StorageLocation = FileLocation | S3Location


def parse_storage_url(url: str) -> StorageLocation:
    """The store a storage URL names.

    Raises:
        StorageUrlError: not `file:///absolute/path` nor `s3://bucket[/prefix]`, or a
            bucket name or prefix S3 would refuse.
    """
    parts = urllib.parse.urlsplit(url.strip())
    if parts.query or parts.fragment:
        raise _error(url, "a query or fragment has no meaning here")
    match parts.scheme:
        case "file":
            return _file(url, parts)
        case "s3":
            return _s3(url, parts)
        case "":
            raise _error(url, "it has no scheme (a bare path? write file:///absolute/path)")
        case other:
            raise _error(url, f"scheme {other!r} is not supported")


def check_bucket(bucket: str) -> str:
    """`bucket` when S3 would accept it as a general purpose bucket name.

    Raises:
        ValueError: with the rule it breaks.
    """
    if _BUCKET.fullmatch(bucket) is None:
        raise ValueError(
            f"bucket {bucket!r} must be 3 to 63 lower-case letters, digits, dots or"
            " hyphens, starting and ending with a letter or digit"
        )
    if ".." in bucket:
        raise ValueError(f"bucket {bucket!r} has two adjacent dots")
    if _is_ip_address(bucket):
        raise ValueError(f"bucket {bucket!r} is formatted as an IP address")
    if bucket.startswith(_RESERVED_PREFIXES) or bucket.endswith(_RESERVED_SUFFIXES):
        raise ValueError(f"bucket {bucket!r} uses a prefix or suffix S3 reserves")
    return bucket


def normalize_prefix(prefix: str) -> str:
    """`a/b/` for `a/b`, `/a/b/` or `a/b/`; empty stays empty.

    Raises:
        InvalidKey: a segment that is empty, `.`, `..`, or holds NUL or a backslash.
    """
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    check_key(stripped)
    return stripped + "/"


def _file(url: str, parts: urllib.parse.SplitResult) -> FileLocation:
    if parts.netloc not in {"", "localhost"}:
        raise _error(
            url,
            f"{parts.netloc!r} reads as a host; a file URL needs an absolute path,"
            " file:///srv/orchestrator",
        )
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/"):
        raise _error(url, "the path must be absolute")
    if "\x00" in path:
        raise _error(url, "the path holds a NUL byte")
    return FileLocation(root=Path(path))


def _s3(url: str, parts: urllib.parse.SplitResult) -> S3Location:
    if "@" in parts.netloc or ":" in parts.netloc:
        raise _error(
            url,
            "credentials and ports do not belong in the URL; the S3 endpoint and keys"
            " come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        )
    try:
        bucket = check_bucket(parts.netloc)
        prefix = normalize_prefix(urllib.parse.unquote(parts.path))
    except ValueError as exc:  # InvalidKey is one
        raise _error(url, str(exc)) from exc
    return S3Location(bucket=bucket, prefix=prefix)


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def _error(url: str, reason: str) -> StorageUrlError:
    shown = _redacted(url)
    return StorageUrlError(
        f"{_VARIABLE} must be file:///absolute/path or s3://bucket[/prefix];"
        f" {shown!r} will not do: {reason}"
    )


def _redacted(url: str) -> str:
    """The URL without a password, should someone have pasted one into it."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))
