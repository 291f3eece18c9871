"""The object store every backend implements, and the values it hands back."""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Iterable
from typing import Final, Protocol

import attrs

from ._errors import StorageUnavailable

MAX_PRESIGN_S: Final = 900


@attrs.frozen
class StoredObject:
    """An object as `put` left it; `location` is what a database row keeps to delete it."""

    key: str
    location: str
    size_bytes: int
    sha256: str
    content_type: str


@attrs.frozen
class ObjectInfo:
    """What a HEAD tells about an object; `sha256` is None when the store does not know it."""

    key: str
    size_bytes: int
    content_type: str
    sha256: str | None


class ObjectStore(Protocol):
    """Outputs and input images, by key (see `render_key`, `input_key`).

    Every method checks its key first and raises `InvalidKey` for a bad one; store
    failures are `StorageError`s (transient ones already retried).
    """

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        """Keep `data` under `key`, idempotently.

        The same bytes already there count as success and are not written again (a
        retried delivery costs a HEAD, not an upload); different bytes replace them.
        """
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """Size, type and hash of the object, or None when there is none."""
        ...

    async def read_prefix(self, key: str, n: int) -> bytes:
        """The first `n` bytes (fewer for a shorter object), to sniff magic bytes.

        Raises:
            ObjectNotFound: no object under `key`.
        """
        ...

    async def delete(self, locations: Iterable[str]) -> int:
        """Remove objects by the `location` `put` returned; how many existed.

        Raises:
            ForeignLocation: before anything is removed, if one is not in this store.
        """
        ...

    def public_url(self, key: str) -> str:
        """An http(s) URL that serves a `public/...` key's bytes to anyone."""
        ...

    async def presign_get(self, key: str, expires_s: int) -> str:
        """A GET URL for a `private/...` key, valid for `expires_s` seconds (at most 900).

        Async because a store may need fresh credentials to sign.

        Raises:
            ValueError: `expires_s` outside 1..900.
        """
        ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_expiry(expires_s: int) -> int:
    """`expires_s` when it is 1..900 seconds.

    A presigned URL goes to a third party (the AI provider); 15 minutes is enough for
    it to fetch an image and short enough that a leaked URL soon stops working.

    Raises:
        ValueError: zero, negative, or more than 900 seconds.
    """
    if not 0 < expires_s <= MAX_PRESIGN_S:
        raise ValueError(f"expires_s must be 1 to {MAX_PRESIGN_S} seconds, got {expires_s}")
    return expires_s


def http_base(url: str, what: str) -> str:
    """`url` without its trailing slash, when it is an absolute http(s) URL to join keys to.

    Raises:
        ValueError: naming `what`, for another scheme, no host, a query or a fragment.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"{what} must be an absolute http(s) URL, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or fragment, got {url!r}")
    return url.rstrip("/")


class StorageObserver(Protocol):
    """What the downloader and the input checks report for metrics, per store call.

    `operation` is `put` (an output stored) or `check` (an input looked at); `outcome`
    is `ok`, `unavailable` (retried and still failing: an outage) or `refused`.
    `orchestrator.metrics.StorageMetrics` counts them.
    """

    def storage_call(self, operation: str, outcome: str) -> None: ...


class NullStorageObserver:
    def storage_call(self, operation: str, outcome: str) -> None:
        pass


def outcome_of(exc: BaseException | None) -> str:
    """The bounded label for how a store call ended."""
    if exc is None:
        return "ok"
    return "unavailable" if isinstance(exc, StorageUnavailable) else "refused"
