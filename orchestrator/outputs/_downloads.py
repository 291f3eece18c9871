"""Fetching a provider's output into the object store: only from allowed hosts, only images.

A prediction's output URL is provider-controlled data. Following it blindly
is an SSRF hole (`file:///etc/passwd`, `http://169.254.169.254/`), so the
URL must be http(s) to a host on the allow-list (the provider's delivery
host by default), redirects are not followed, the body is streamed and cut
at a size limit, and only image content types are kept. Transient failures
(transport errors, 5xx) are retried with backoff by stamina; refusals are not.
The bytes go to `public/renders/<job_id>/<idx>.<ext>` in the store, idempotently,
and the output carries the store's location (to delete it) and its public URL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Final

import httpx
import stamina
import trio

from orchestrator.core import HostList, OutputUnavailable, StoredOutput

from ._errors import StorageError
from ._keys import EXTENSIONS, render_key
from ._store import NullStorageObserver, ObjectStore, StorageObserver, outcome_of

_SETTING: Final = "ORCHESTRATOR_DOWNLOAD_HOSTS"


class _Transient(Exception):
    pass


class Downloader:
    """Implements the actors' `OutputStore` with httpx and an `ObjectStore`."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        storage: ObjectStore,
        *,
        allowed_hosts: Iterable[str],
        max_bytes: int,
        timeout_s: float,
        attempts: int = 3,
        concurrency: int = 32,
        observer: StorageObserver | None = None,
    ) -> None:
        # Bounded here rather than by the client's pool: a queued download waits for its
        # turn instead of spending its timeout waiting for a connection.
        self._limiter = trio.CapacityLimiter(concurrency)
        self._client = client
        self._storage = storage
        # Output CDNs are plain hosts: any scheme of the two, any port unless named.
        self._allowed = HostList.parse(allowed_hosts, schemes=("http", "https"))
        self._max_bytes = max_bytes
        self._timeout = httpx.Timeout(timeout_s)
        self._attempts = attempts
        self._observer = observer or NullStorageObserver()

    async def store(self, job_id: uuid.UUID, idx: int, url: str) -> StoredOutput:
        self._check_url(url)
        try:
            async with self._limiter:
                data, content_type = await self._fetch_with_retries(url)
        except _Transient as exc:
            raise OutputUnavailable(f"download failed: {exc}") from exc
        key = render_key(job_id, idx, EXTENSIONS[content_type])
        try:
            stored = await self._storage.put(key, data, content_type=content_type)
        except StorageError as exc:
            self._observer.storage_call("put", outcome_of(exc))
            raise OutputUnavailable(f"storage failed: {type(exc).__name__}") from exc
        self._observer.storage_call("put", "ok")
        return StoredOutput(
            idx=idx,
            url=url,
            path=stored.location,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            content_type=stored.content_type,
            public_url=self._storage.public_url(key),
        )

    def _check_url(self, url: str) -> None:
        problem = self._allowed.problem(url, setting=_SETTING)
        if problem is not None:
            raise OutputUnavailable(f"refused: {problem}")

    async def _fetch_with_retries(self, url: str) -> tuple[bytes, str]:
        async for attempt in stamina.retry_context(on=_Transient, attempts=self._attempts):
            with attempt:
                return await self._fetch(url)
        raise AssertionError("unreachable: stamina re-raises the last failure")  # pragma: no cover

    async def _fetch(self, url: str) -> tuple[bytes, str]:
        try:
            async with self._client.stream("GET", url, timeout=self._timeout) as response:
                if response.status_code >= 500:  # noqa: PLR2004
                    raise _Transient(f"HTTP {response.status_code}")
                if response.status_code != 200:  # noqa: PLR2004
                    raise OutputUnavailable(f"refused: HTTP {response.status_code}")
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                if content_type not in EXTENSIONS:
                    raise OutputUnavailable(
                        f"refused: content type {content_type or 'none'!r} is not an image"
                    )
                declared = _content_length(response.headers.get("content-length"))
                if declared > self._max_bytes:
                    raise OutputUnavailable(self._too_large())
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise OutputUnavailable(self._too_large())
                    chunks.append(chunk)
                return b"".join(chunks), content_type
        except httpx.TimeoutException as exc:
            raise _Transient("timed out") from exc
        except httpx.TransportError as exc:
            raise _Transient(type(exc).__name__) from exc
        except httpx.HTTPError as exc:  # undecodable bodies, invalid URLs: not worth a retry
            raise OutputUnavailable(f"download failed: {type(exc).__name__}") from exc

    def _too_large(self) -> str:
        return f"refused: larger than {self._max_bytes} bytes"


def _content_length(value: str | None) -> int:
    """A declared length, or 0 when absent or garbled (the streamed size still counts)."""
    try:
        return max(int(value or 0), 0)
    except ValueError:
        return 0
