"""The embedded store: objects are files under one root directory.

Writes are atomic (a temporary file in the same directory, fsync, rename, fsync of the
directory), so a reader or a crash sees the old bytes or the new, never half. They are
idempotent by sha256: the same bytes again rewrite nothing. No key leaves the root:
keys are checked (`check_key`) and the resolved path must still be under it.

The filesystem keeps no content type, so the key's extension is the content type: a
put whose `content_type` the extension does not name is refused rather than served
later under another type. File I/O runs in worker threads, at most `concurrency` at
once. Filesystem errors are not retried: a full or failing local disk does not heal
in the seconds a backoff waits.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import trio

from ._errors import (
    ForeignLocation,
    InvalidKey,
    ObjectNotFound,
    StorageRefused,
    StorageUnavailable,
)
from ._keys import (
    PUBLIC_PREFIX,
    check_key,
    parse_input_key,
    parse_render_key,
    require_private,
    require_public,
    type_for,
)
from ._signing import check_signing_key, signature
from ._store import ObjectInfo, StoredObject, check_expiry, http_base, sha256_hex

_CHUNK: Final = 1 << 20
# Refusals: asking again changes nothing. Other OSErrors (a full disk, EIO) are outages.
_REFUSED_ERRNOS: Final = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR})


class FileObjects:
    """Implements `ObjectStore` on the local filesystem, under `root`.

    Args:
        root: the directory objects live under (created on first write).
        base_url: the daemon's own base URL, which serves `/renders/...` and signed
            `/inputs/...` (see `FileRoutes`).
        signing_key: at least 32 secret bytes; `FileRoutes` must get the same.
        public_base_url: where something else serves this root (a CDN, nginx):
            `public_url` is then `<public_base_url>/<key>`.
        clock: Unix time now; tests move it to expire signed URLs without sleeping.
        concurrency: worker threads doing file I/O at once.
    """

    def __init__(
        self,
        root: Path,
        *,
        base_url: str,
        signing_key: bytes,
        public_base_url: str | None = None,
        clock: Callable[[], float] = time.time,
        concurrency: int = 16,
    ) -> None:
        self.root = root.expanduser().resolve()
        self._base = http_base(base_url, "base_url")
        self._public_base = (
            None if public_base_url is None else http_base(public_base_url, "public_base_url")
        )
        self._signing_key = check_signing_key(signing_key)
        self._clock = clock
        self._limiter = trio.CapacityLimiter(concurrency)

    def path_of(self, key: str) -> Path:
        """Where `key` lives on disk.

        Raises:
            InvalidKey: a key that is not a safe relative name.
        """
        return self.root.joinpath(*check_key(key).split("/"))

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        path = self.path_of(key)
        named = type_for(key)
        if named != content_type:
            raise InvalidKey(
                f"the file store serves {key!r} as {named or 'nothing'}, by its extension;"
                f" it cannot keep {content_type!r}"
            )
        digest = sha256_hex(data)
        mode = 0o644 if key.startswith(PUBLIC_PREFIX) else 0o600
        with _mapped_errors(key):
            await trio.to_thread.run_sync(
                _write_atomically, self.root, path, data, digest, mode, limiter=self._limiter
            )
        return StoredObject(
            key=key,
            location=str(path),
            size_bytes=len(data),
            sha256=digest,
            content_type=content_type,
        )

    async def head(self, key: str) -> ObjectInfo | None:
        """Also hashes the file (about 30 ms for 20 MiB, in a thread), so sha256 is known."""
        path = self.path_of(key)
        with _mapped_errors(key):
            found = await trio.to_thread.run_sync(_size_and_hash, path, limiter=self._limiter)
        if found is None:
            return None
        size, digest = found
        return ObjectInfo(
            key=key,
            size_bytes=size,
            content_type=type_for(key) or "application/octet-stream",
            sha256=digest,
        )

    async def read_prefix(self, key: str, n: int) -> bytes:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        path = self.path_of(key)
        with _mapped_errors(key):
            data = await trio.to_thread.run_sync(_read_prefix, path, n, limiter=self._limiter)
        if data is None:
            raise ObjectNotFound(f"no object under {key!r}")
        return data

    async def delete(self, locations: Iterable[str]) -> int:
        paths = [self._owned(location) for location in locations]
        with _mapped_errors("delete"):
            return await trio.to_thread.run_sync(_unlink_all, paths, limiter=self._limiter)

    def public_url(self, key: str) -> str:
        require_public(key)
        if self._public_base is not None:
            return f"{self._public_base}/{urllib.parse.quote(key)}"
        render = parse_render_key(key)
        if render is None:
            raise InvalidKey(
                f"the daemon serves only public/renders/<job_id>/<idx>.<ext>, not {key!r};"
                " configure a public base URL to publish other keys"
            )
        return f"{self._base}/renders/{render.job_id}/{render.idx}.{render.extension}"

    async def presign_get(self, key: str, expires_s: int) -> str:
        require_private(key)
        check_expiry(expires_s)
        parts = parse_input_key(key)
        if parts is None:
            raise InvalidKey(f"the daemon serves only private/<user>/inputs/<name>, not {key!r}")
        expires = int(self._clock()) + expires_s
        sig = signature(self._signing_key, key, expires)
        user = urllib.parse.quote(parts.user_id, safe="")
        name = urllib.parse.quote(parts.name, safe="")
        return f"{self._base}/inputs/{user}/{name}?expires={expires}&sig={sig}"

    def _owned(self, location: str) -> Path:
        """The path of a location this store wrote, refusing any other."""
        path = Path(location)
        if not path.is_absolute() or not Path(os.path.normpath(path)).is_relative_to(self.root):
            raise ForeignLocation(f"{location!r} is not under the storage root {self.root}")
        try:
            check_key(path.relative_to(self.root).as_posix())
        except InvalidKey as exc:
            raise ForeignLocation(f"{location!r} is not an object of this store") from exc
        return path


@contextmanager
def _mapped_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno in _REFUSED_ERRNOS or isinstance(exc, NotADirectoryError):
            raise StorageRefused(f"file store refused {what!r}: {reason}") from exc
        raise StorageUnavailable(f"file store failed on {what!r}: {reason}") from exc


def _write_atomically(root: Path, path: Path, data: bytes, digest: str, mode: int) -> None:
    if _same_file_bytes(path, data, digest):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.parent.resolve().is_relative_to(root):
        # Only a symlink planted inside the root can get here; never follow it out.
        raise StorageRefused(f"{path.parent} resolves outside the storage root")
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _same_file_bytes(path: Path, data: bytes, digest: str) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
    except FileNotFoundError:
        return False
    found = _size_and_hash(path)
    return found is not None and found[1] == digest


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable: a crash after this keeps the new name."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size_and_hash(path: Path) -> tuple[int, str] | None:
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as source:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except (FileNotFoundError, IsADirectoryError):
        return None
    return size, digest.hexdigest()


def _read_prefix(path: Path, n: int) -> bytes | None:
    try:
        with path.open("rb") as source:
            return source.read(n)
    except (FileNotFoundError, IsADirectoryError):
        return None


def _unlink_all(paths: list[Path]) -> int:
    removed = 0
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    return removed
