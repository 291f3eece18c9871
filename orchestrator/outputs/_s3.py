"""The S3 store: any S3-compatible bucket (AWS, MinIO, R2, GCS's XML API) through obstore.

Why obstore (Rust's object_store) and not boto3, measured by `bench/object_store.py`
on this 2-core machine against moto (two runs of 5 x 200 calls, medians, the client's
own CPU): a 100 KiB put costs 0.5-0.6 ms against 2.0-2.1 ms, a HEAD 0.4 against
1.2-1.5 ms, a ranged read 0.4-0.6 against 1.4-1.8 ms, a presign 9-12 us against
150-230 us; importing and building a client takes 10-14 ms against 400-570 ms, and
resident memory after that is 33 MiB against 52 MiB (the same ~53 MiB at the peak,
once obstore's runtime has run). It presigns SigV4 by default (boto3 gives SigV2 at
a custom endpoint in us-east-1 unless configured). What boto3 does better: its
errors are structured, where obstore folds statuses into one class with the status
in its message (`_mapped` reads it from there).

Its async API runs only on asyncio, so under Trio each call is its sync API in a worker
thread (`trio.to_thread.run_sync`, at most `concurrency` at once). The call releases the
GIL while it waits on the network, so the Trio loop runs on meanwhile. A cancelled call
waits for its thread (at most the HTTP timeout): a put is never abandoned half-known.

obstore's own retries are off; transient failures (transport errors, timeouts, 5xx,
429) are retried here with stamina, so there is one retry policy and it is
instrumented like the rest of the daemon's.

The sha256 of every object travels with it as user metadata (`x-amz-meta-sha256`):
a repeat put is one HEAD that finds the same hash and the same content type, not an
upload. Keys are prefixed with the location's prefix; `location` is
`s3://<bucket>/<prefix><key>`.

obstore fills unset options from AWS_* environment variables. The package reads no
environment itself, and pins what would change a request behind the caller's back:
the credentials (a provider returning exactly the keys given, so an ambient
AWS_SESSION_TOKEN is not mixed in), the region, the endpoint, path-style addressing,
signed payloads. Other AWS_* options obstore knows (server-side encryption, request
payer, checksum algorithm) still apply if set in the daemon's environment.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Final, TypeVar

import attrs
import obstore
import obstore.exceptions
import stamina
import trio
from obstore.store import S3Store

from ._errors import (
    ForeignLocation,
    InvalidKey,
    ObjectNotFound,
    StorageError,
    StorageRefused,
    StorageUnavailable,
)
from ._keys import check_key, require_private, require_public
from ._location import S3Location, check_bucket, normalize_prefix
from ._store import ObjectInfo, StoredObject, check_expiry, http_base, sha256_hex

if TYPE_CHECKING:  # obstore's typed dicts exist for the checker only
    from obstore.store import S3Credential

T = TypeVar("T")

SHA256_METADATA: Final = "sha256"
_STATUS: Final = re.compile(r"Server returned non-2xx status code: (\d{3})")
_TRANSIENT_STATUSES: Final = frozenset({408, 429})
_SERVER_ERROR: Final = 500
_RANGE_NOT_SATISFIABLE: Final = 416


@attrs.frozen
class S3Access:
    """How to reach the bucket, as the settings layer read it (AWS_ENDPOINT_URL, ...).

    Args:
        region: AWS_REGION; signs every request, so it must be the bucket's.
        access_key_id: AWS_ACCESS_KEY_ID.
        secret_access_key: AWS_SECRET_ACCESS_KEY.
        endpoint: AWS_ENDPOINT_URL; None for AWS itself, `https://s3.<region>.amazonaws.com`.
        session_token: for temporary credentials only.
    """

    region: str
    access_key_id: str
    secret_access_key: str = attrs.field(repr=False)
    endpoint: str | None = None
    session_token: str | None = attrs.field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        if self.endpoint is None:
            return f"https://s3.{self.region}.amazonaws.com"
        return http_base(self.endpoint, "endpoint")


@attrs.frozen
class Retries:
    """stamina's policy for transient failures: attempts in all, waits, a total bound."""

    attempts: int = 3
    wait_initial_s: float = 0.1
    wait_max_s: float = 2.0
    timeout_s: float = 30.0


class _StaticCredentials:
    """Exactly the keys given, never expiring: obstore asks once and caches them."""

    def __init__(self, access: S3Access) -> None:
        self._access = access

    def __call__(self) -> S3Credential:
        return {
            "access_key_id": self._access.access_key_id,
            "secret_access_key": self._access.secret_access_key,
            "token": self._access.session_token,
            "expires_at": None,
        }


class S3Objects:
    """Implements `ObjectStore` on an S3-compatible bucket.

    Args:
        location: the bucket and prefix (from `parse_storage_url`).
        access: endpoint, region and keys.
        public_base_url: ORCHESTRATOR_PUBLIC_OUTPUTS_URL, a CDN or the bucket's public
            base; `public_url` is `<it>/<prefix><key>`. None: the path-style object URL
            at the endpoint, `<endpoint>/<bucket>/<prefix><key>`, which serves only if
            the bucket's policy lets anyone read `public/`.
        retries: how transient failures are retried.
        timeout_s: one HTTP request's bound (connecting within at most 5 s of it).
        concurrency: worker threads in S3 calls at once.
    """

    def __init__(
        self,
        location: S3Location,
        *,
        access: S3Access,
        public_base_url: str | None = None,
        retries: Retries = Retries(),
        timeout_s: float = 30.0,
        concurrency: int = 16,
    ) -> None:
        self.bucket = check_bucket(location.bucket)
        self.prefix = normalize_prefix(location.prefix)
        self._endpoint = access.endpoint_url
        self._public_base = (
            None if public_base_url is None else http_base(public_base_url, "public_base_url")
        )
        self._retries = retries
        self._limiter = trio.CapacityLimiter(concurrency)
        self._store = S3Store(
            self.bucket,
            endpoint=self._endpoint,
            region=access.region,
            credential_provider=_StaticCredentials(access),
            virtual_hosted_style_request=False,
            skip_signature=False,
            unsigned_payload=False,
            client_options={
                "allow_http": self._endpoint.startswith("http://"),
                "timeout": timedelta(seconds=timeout_s),
                "connect_timeout": timedelta(seconds=min(5.0, timeout_s)),
            },
            retry_config={"max_retries": 0},
        )

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        name = self._name(key)
        digest = sha256_hex(data)
        stored = StoredObject(
            key=key,
            location=f"s3://{self.bucket}/{name}",
            size_bytes=len(data),
            sha256=digest,
            content_type=content_type,
        )
        existing = await self._call(self._head, name)
        if existing is not None and (existing.sha256, existing.content_type) == (
            digest,
            content_type,
        ):
            return stored
        attributes = {"Content-Type": content_type, SHA256_METADATA: digest}
        await self._call(self._put, name, data, attributes)
        return stored

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._call(self._head, self._name(key))

    async def read_prefix(self, key: str, n: int) -> bytes:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        name = self._name(key)
        data = await self._call(self._read_prefix, name, n)
        if data is None:
            raise ObjectNotFound(f"no object under {key!r}")
        return data

    async def delete(self, locations: Iterable[str]) -> int:
        names = [self._owned(location) for location in locations]
        removed = 0
        for name in names:
            removed += await self._call(self._delete, name)
        return removed

    def public_url(self, key: str) -> str:
        name = urllib.parse.quote(self._name(require_public(key)))
        if self._public_base is not None:
            return f"{self._public_base}/{name}"
        return f"{self._endpoint}/{self.bucket}/{name}"

    async def presign_get(self, key: str, expires_s: int) -> str:
        name = self._name(require_private(key))
        expires_in = timedelta(seconds=check_expiry(expires_s))
        with _mapped_errors(name):
            return obstore.sign(self._store, "GET", name, expires_in)

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _owned(self, location: str) -> str:
        """The object name of a location in this bucket under this prefix."""
        mine = f"s3://{self.bucket}/{self.prefix}"
        if not location.startswith(mine):
            raise ForeignLocation(f"{location!r} is not in {mine}")
        name = location.removeprefix(f"s3://{self.bucket}/")
        try:
            check_key(name)
        except InvalidKey as exc:
            raise ForeignLocation(f"{location!r} is not an object of this store") from exc
        return name

    async def _call(self, operation: Callable[..., T], *args: object) -> T:
        """One store operation in a worker thread, retried while the store is unavailable."""
        retries = self._retries
        async for attempt in stamina.retry_context(
            on=StorageUnavailable,
            attempts=retries.attempts,
            timeout=retries.timeout_s,
            wait_initial=retries.wait_initial_s,
            wait_max=retries.wait_max_s,
        ):
            with attempt, _mapped_errors(str(args[0])):
                return await trio.to_thread.run_sync(operation, *args, limiter=self._limiter)
        raise AssertionError("unreachable: stamina re-raises the last failure")  # pragma: no cover

    # The blocking halves, each run in a worker thread.

    def _head(self, name: str) -> ObjectInfo | None:
        try:
            result = obstore.get(self._store, name, options={"head": True})
        except FileNotFoundError:
            return None
        attributes = result.attributes
        return ObjectInfo(
            key=name.removeprefix(self.prefix),
            size_bytes=result.meta["size"],
            content_type=attributes.get("Content-Type", "application/octet-stream"),
            sha256=attributes.get(SHA256_METADATA),
        )

    def _put(self, name: str, data: bytes, attributes: dict[str, str]) -> None:
        try:
            obstore.put(self._store, name, data, attributes=attributes, use_multipart=False)
        except FileNotFoundError as exc:
            raise StorageRefused(f"bucket {self.bucket!r} not found: {_first_line(exc)}") from exc

    def _read_prefix(self, name: str, n: int) -> bytes | None:
        try:
            result = obstore.get(self._store, name, options={"range": (0, n)})
            return bytes(result.bytes())
        except FileNotFoundError:
            return None
        except obstore.exceptions.GenericError as exc:
            if _status(exc) == _RANGE_NOT_SATISFIABLE:
                return b""  # bytes=0-(n-1) is unsatisfiable only for an empty object
            raise

    def _delete(self, name: str) -> int:
        # DeleteObject answers 204 whether or not the object was there: HEAD to count.
        if self._head(name) is None:
            return 0
        obstore.delete(self._store, name)
        return 1


@contextmanager
def _mapped_errors(what: str) -> Iterator[None]:
    """Map the S3 client's errors to ours; anything not the client's travels up untouched."""
    try:
        yield
    except obstore.exceptions.BaseError as exc:
        raise _mapped(exc, what) from exc


def _mapped(exc: obstore.exceptions.BaseError, what: str) -> StorageError:
    reason = f"S3 {what!r}: {_first_line(exc)}"
    if isinstance(
        exc, obstore.exceptions.PermissionDeniedError | obstore.exceptions.UnauthenticatedError
    ):
        return StorageRefused(reason)
    if isinstance(exc, obstore.exceptions.GenericError):
        # obstore folds transport failures and unexpected statuses into one class;
        # its message says which, in a form stable across its releases so far.
        status = _status(exc)
        if status is not None:
            if status >= _SERVER_ERROR or status in _TRANSIENT_STATUSES:
                return StorageUnavailable(reason)
            return StorageRefused(reason)
        if "HTTP error" in str(exc):
            return StorageUnavailable(reason)
        return StorageError(reason)
    return StorageRefused(reason)


def _status(exc: obstore.exceptions.GenericError) -> int | None:
    found = _STATUS.search(str(exc))
    return None if found is None else int(found[1])


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0].strip()
