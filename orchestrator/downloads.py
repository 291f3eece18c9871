"""Fetching a provider's output: only from allowed hosts, only images, never too much.

A prediction's output URL is provider-controlled data. Following it blindly
is an SSRF hole (`file:///etc/passwd`, `http://169.254.169.254/`), so the
URL must be http(s) to a host on the allow-list (the provider's delivery
host by default), redirects are not followed, the body is streamed and cut
at a size limit, and only image content types are kept. Transient failures
(transport errors, 5xx) are retried with backoff by stamina; refusals are not.
"""

from __future__ import annotations

import hashlib
import urllib.parse
import uuid
from collections.abc import Iterable
from typing import Final

import httpx
import stamina
import trio

from orchestrator.core import OutputUnavailable, StoredOutput
from orchestrator.storage import Storage

_EXTENSIONS: Final = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
}


class _Transient(Exception):
    pass


def allowed_host(entry: str) -> str:
    """Normalize an allow-list entry: `host` or `host:port`, lower case."""
    return entry.strip().lower().rstrip("/")


class Downloader:
    """Implements the actors' `OutputStore` with httpx and a `Storage`."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        *,
        allowed_hosts: Iterable[str],
        max_bytes: int,
        timeout_s: float,
        attempts: int = 3,
        concurrency: int = 32,
    ) -> None:
        # Bounded here rather than by the client's pool: a queued download waits for its
        # turn instead of spending its timeout waiting for a connection.
        self._limiter = trio.CapacityLimiter(concurrency)
        self._client = client
        self._storage = storage
        self._allowed = frozenset(allowed_host(h) for h in allowed_hosts if h.strip())
        self._max_bytes = max_bytes
        self._timeout = httpx.Timeout(timeout_s)
        self._attempts = attempts

    async def store(self, job_id: uuid.UUID, idx: int, url: str) -> StoredOutput:
        self._check_url(url)
        try:
            async with self._limiter:
                data, content_type = await self._fetch_with_retries(url)
        except _Transient as exc:
            raise OutputUnavailable(f"download failed: {exc}") from exc
        key = f"renders/{job_id}/{idx}.{_EXTENSIONS[content_type]}"
        try:
            path = await self._storage.put(key, data)
        except OSError as exc:
            raise OutputUnavailable(
                f"storage failed: {exc.strerror or type(exc).__name__}"
            ) from exc
        return StoredOutput(
            idx=idx,
            url=url,
            path=path,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type=content_type,
        )

    def _check_url(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in {"http", "https"}:
            raise OutputUnavailable(f"refused: scheme {parts.scheme or 'none'!r} is not http(s)")
        host = (parts.hostname or "").lower()
        with_port = f"{host}:{parts.port}" if parts.port else host
        if host not in self._allowed and with_port not in self._allowed:
            raise OutputUnavailable(f"refused: host {host!r} is not on the download allow-list")

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
                if content_type not in _EXTENSIONS:
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
