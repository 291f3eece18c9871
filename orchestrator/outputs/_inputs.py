"""Users' input images: checked before the debit, handed to the provider presigned.

Implements the actors' `InputImages`. A private input is the user's own object under
`private/<user_id>/inputs/`: it must exist, be at most `max_bytes`, and its first bytes
must be an image's (the type an upload claims is not trusted; an app may have put the
object there itself). An allow-listed URL is fetched the same way, streamed and cut at
the limit, without following redirects. At each create the daemon asks for a fresh
presigned GET URL per private input, valid `url_ttl_s` (300 s by default, at most 900):
enough for the provider to fetch it, too short to matter once leaked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import httpx
import trio

from orchestrator.core import (
    IMAGE_INPUT,
    SNIFF_BYTES,
    ImageInput,
    InputsUnavailable,
    PrivateInput,
    sniffed_type,
)

from ._errors import InvalidKey, ObjectNotFound, StorageError, StorageUnavailable
from ._store import (
    NullStorageObserver,
    ObjectStore,
    StorageObserver,
    check_expiry,
    outcome_of,
)

_CHUNK: Final = 64 * 1024


class StoredInputs:
    """Input images in an object store, and allow-listed URLs fetched over `client`."""

    def __init__(
        self,
        store: ObjectStore,
        client: httpx.AsyncClient,
        *,
        max_bytes: int,
        url_ttl_s: int,
        timeout_s: float = 10.0,
        observer: StorageObserver | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._max_bytes = max_bytes
        self._ttl_s = check_expiry(url_ttl_s)
        self._timeout_s = timeout_s
        self._observer = observer or NullStorageObserver()

    async def problem(self, inputs: Sequence[ImageInput]) -> str | None:
        """Every input checked at once, so the job waits for the slowest, not their sum."""
        found: dict[int, str | None] = {}
        outages: list[InputsUnavailable] = []

        async def check(n: int, entry: ImageInput) -> None:
            try:
                if isinstance(entry, PrivateInput):
                    found[n] = await self._stored_problem(entry.key)
                else:
                    found[n] = await self._remote_problem(entry.url)
            except InputsUnavailable as exc:
                outages.append(exc)

        async with trio.open_nursery() as nursery:
            for n, entry in enumerate(inputs):
                nursery.start_soon(check, n, entry)
        if outages:
            raise outages[0]
        for n in sorted(found):
            if (why := found[n]) is not None:
                return f"{IMAGE_INPUT}[{n}] {why}"
        return None

    async def for_provider(self, inputs: Sequence[ImageInput]) -> tuple[str, ...]:
        return tuple(
            [
                await self._store.presign_get(entry.key, self._ttl_s)
                if isinstance(entry, PrivateInput)
                else entry.url
                for entry in inputs
            ]
        )

    async def _stored_problem(self, key: str) -> str | None:
        try:
            why = await self._looked_at(key)
        except InvalidKey as exc:  # a ValueError, not a store failure: the key is refused
            return f"is not a usable key: {exc}"
        except StorageError as exc:
            self._observer.storage_call("check", outcome_of(exc))
            if isinstance(exc, StorageUnavailable):
                raise InputsUnavailable(f"the input store did not answer: {exc}") from exc
            return f"cannot be read: {type(exc).__name__}"
        self._observer.storage_call("check", "ok")
        return why

    async def _looked_at(self, key: str) -> str | None:
        info = await self._store.head(key)
        if info is None:
            return _MISSING
        if info.size_bytes > self._max_bytes:
            return self._too_large(info.size_bytes)
        try:
            head = await self._store.read_prefix(key, SNIFF_BYTES)
        except ObjectNotFound:
            return _MISSING  # deleted between the two calls
        return None if sniffed_type(head) else _NOT_AN_IMAGE

    async def _remote_problem(self, url: str) -> str | None:
        """Fetched within the timeout as a whole (a trickling host is no excuse to wait)."""
        with trio.move_on_after(self._timeout_s):
            try:
                return await self._fetched_problem(url)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                return f"could not be fetched: {type(exc).__name__}"
        return f"could not be fetched within {self._timeout_s:g} s"

    async def _fetched_problem(self, url: str) -> str | None:
        async with self._client.stream("GET", url) as response:
            if response.status_code != 200:  # noqa: PLR2004
                return f"could not be fetched: HTTP {response.status_code}"
            head = b""
            size = 0
            async for chunk in response.aiter_bytes(_CHUNK):
                head += chunk[: SNIFF_BYTES - len(head)]
                size += len(chunk)
                if size > self._max_bytes:
                    return self._too_large(size)
        return None if sniffed_type(head) else _NOT_AN_IMAGE

    def _too_large(self, size: int) -> str:
        return f"is larger than {self._max_bytes} bytes ({size} or more)"


_NOT_AN_IMAGE: Final = "is not an image (PNG, JPEG, WebP or GIF)"
_MISSING: Final = "does not exist (upload it first)"
