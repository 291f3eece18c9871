"""An in-memory twin of the object store, for pure tests.

It keeps the contract's rules (checked keys, idempotent puts by sha256, delete by
location refusing foreign ones, public URLs only for `public/`, presigned ones only for
`private/` and at most 900 s) without I/O or threads: its methods do their work at once.
`tests/test_object_store.py` runs one contract against it, the file store and S3, so
the three cannot drift. URLs it hands out are resolved by `fetch`, not by HTTP.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable

import attrs

from ._errors import ForeignLocation, InvalidKey, ObjectNotFound
from ._keys import PUBLIC_PREFIX, check_key, require_private, require_public
from ._store import ObjectInfo, StoredObject, check_expiry, sha256_hex

LOCATION_PREFIX = "memory://"
URL_BASE = "https://objects.invalid/"


@attrs.frozen
class _Object:
    data: bytes
    content_type: str
    sha256: str


class MemoryObjects:
    """Implements `ObjectStore` in a dict; `writes` counts what each put really wrote.

    Args:
        clock: Unix time now, for presigned URLs' expiry.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.objects: dict[str, _Object] = {}
        self.writes: Counter[str] = Counter()
        self.calls: list[tuple[str, str]] = []
        self._clock = clock
        self._signatures: dict[str, tuple[str, int]] = {}

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        check_key(key)
        self.calls.append(("put", key))
        digest = sha256_hex(data)
        existing = self.objects.get(key)
        if existing is None or (existing.sha256, existing.content_type) != (digest, content_type):
            self.objects[key] = _Object(bytes(data), content_type, digest)
            self.writes[key] += 1
        return StoredObject(
            key=key,
            location=LOCATION_PREFIX + key,
            size_bytes=len(data),
            sha256=digest,
            content_type=content_type,
        )

    async def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        self.calls.append(("head", key))
        found = self.objects.get(key)
        if found is None:
            return None
        return ObjectInfo(
            key=key,
            size_bytes=len(found.data),
            content_type=found.content_type,
            sha256=found.sha256,
        )

    async def read_prefix(self, key: str, n: int) -> bytes:
        check_key(key)
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.calls.append(("read_prefix", key))
        found = self.objects.get(key)
        if found is None:
            raise ObjectNotFound(f"no object under {key!r}")
        return found.data[:n]

    async def delete(self, locations: Iterable[str]) -> int:
        keys = [self._owned(location) for location in locations]
        removed = 0
        for key in keys:
            self.calls.append(("delete", key))
            removed += self.objects.pop(key, None) is not None
        return removed

    def public_url(self, key: str) -> str:
        return URL_BASE + urllib.parse.quote(require_public(key))

    async def presign_get(self, key: str, expires_s: int) -> str:
        require_private(key)
        expires = int(self._clock()) + check_expiry(expires_s)
        token = secrets.token_hex(16)
        self._signatures[token] = (key, expires)
        return f"{URL_BASE}{urllib.parse.quote(key)}?expires={expires}&sig={token}"

    def fetch(self, url: str) -> bytes | None:
        """The bytes a GET of a URL this twin handed out would return, or None (403/404)."""
        parts = urllib.parse.urlsplit(url)
        if not url.startswith(URL_BASE):
            return None
        key = urllib.parse.unquote(parts.path.removeprefix("/"))
        if not key.startswith(PUBLIC_PREFIX):
            sig = urllib.parse.parse_qs(parts.query).get("sig", [""])[0]
            signed = self._signatures.get(sig)
            if signed is None or signed[0] != key or self._clock() > signed[1]:
                return None
        found = self.objects.get(key)
        return None if found is None else found.data

    def _owned(self, location: str) -> str:
        if not location.startswith(LOCATION_PREFIX):
            raise ForeignLocation(f"{location!r} is not in this memory store")
        try:
            return check_key(location.removeprefix(LOCATION_PREFIX))
        except InvalidKey as exc:
            raise ForeignLocation(f"{location!r} is not an object of this store") from exc
