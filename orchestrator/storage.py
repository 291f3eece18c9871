"""Where delivered images live: a small `Storage` interface and its filesystem twin.

Keys look like `renders/<job_id>/<idx>.<ext>`. Writes are atomic (a temporary
file renamed into place) and idempotent: storing the same bytes again is a
success that rewrites nothing, so a retried or resumed delivery is harmless.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Protocol

import trio


class Storage(Protocol):
    async def put(self, key: str, data: bytes) -> str:
        """Keep `data` under `key`; return where it is (a path or URL)."""
        ...

    async def delete(self, locations: Iterable[str]) -> int:
        """Remove stored objects; return how many existed."""
        ...


class FilesystemStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def _path(self, key: str) -> Path:
        relative = PurePosixPath(key)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"storage key {key!r} leaves the storage root")
        return self.root.joinpath(*relative.parts)

    async def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        await trio.to_thread.run_sync(_write_atomically, path, data)
        return str(path)

    async def delete(self, locations: Iterable[str]) -> int:
        paths = [Path(location) for location in locations]
        return await trio.to_thread.run_sync(self._delete, paths)

    def _delete(self, paths: list[Path]) -> int:
        removed = 0
        for path in paths:
            if not path.resolve().is_relative_to(self.root):
                raise ValueError(f"{path} is outside the storage root")
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
        return removed


def _write_atomically(path: Path, data: bytes) -> None:
    if path.exists() and _sha256(path.read_bytes()) == _sha256(data):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
