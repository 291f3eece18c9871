"""Read-only HTTP for the file store: the daemon serves renders and signed inputs itself.

    GET|HEAD /renders/<job_id>/<idx>.<ext>               <root>/public/renders/..., to anyone
    GET|HEAD /inputs/<user>/<name>?expires=..&sig=..     <root>/private/<user>/inputs/<name>,
                                                         only with a valid, unexpired signature

A raw-ASGI handler for `orchestrator.http.HttpApp`. A path is accepted only in its one
canonical spelling (lower-case job UUID, an index without leading zeros, a known image
extension); anything else is a 404, so no spelling reaches outside `public/renders`.
An input's signature is checked before the file is looked at: without one (403) nobody
learns whether an input exists (404 only with a valid signature). Bodies stream in
64 KiB chunks through hypercorn's `more_body`, from one open file, so a replaced object
is served whole, old or new.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from ._errors import InvalidKey
from ._keys import input_key, parse_render_key, type_for
from ._signing import check_signing_key, signature_valid

if TYPE_CHECKING:  # annotations only: hypercorn's types are for checking
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope

CHUNK_BYTES: Final = 64 * 1024
_RENDER_CACHE: Final = b"public, max-age=31536000, immutable"
_INPUT_CACHE: Final = b"private, no-store"
_METHODS: Final = frozenset({"GET", "HEAD"})


class FileRoutes:
    """Serves `/renders/...` and signed `/inputs/...` from a `FileObjects` root.

    Args:
        root: the same root the `FileObjects` writes under.
        signing_key: the same key the `FileObjects` signs with.
        clock: Unix time now, as the `FileObjects` has it.
    """

    def __init__(
        self, root: Path, *, signing_key: bytes, clock: Callable[[], float] = time.time
    ) -> None:
        self.root = root.expanduser().resolve()
        self._signing_key = check_signing_key(signing_key)
        self._clock = clock

    def handles(self, path: str) -> bool:
        """Whether a request path is one of these routes (then `__call__` answers it)."""
        return path.startswith(("/renders/", "/inputs/"))

    async def __call__(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        del receive  # GET and HEAD carry no body worth reading
        method, path = scope["method"], scope["path"]
        if method not in _METHODS:
            await _reply(send, 405, "use GET or HEAD", [(b"allow", b"GET, HEAD")])
            return
        head = method == "HEAD"
        if path.startswith("/renders/"):
            render = "public" + path
            if parse_render_key(render) is None:
                await _reply(send, 404, "not found")
                return
            await self._serve(send, render, head=head, cache=_RENDER_CACHE)
            return
        signed = self._signed_input(path, scope["query_string"])
        if signed is None:
            await _reply(send, 403, "a valid, unexpired signature is required")
            return
        await self._serve(send, signed, head=head, cache=_INPUT_CACHE)

    def _signed_input(self, path: str, query_string: bytes) -> str | None:
        """The object key a signed `/inputs/<user>/<name>` request may read, else None."""
        segments = path.removeprefix("/inputs/").split("/")
        if len(segments) != 2:  # noqa: PLR2004  (user, name)
            return None
        try:
            key = input_key(*segments)
        except InvalidKey:
            return None
        try:
            query = urllib.parse.parse_qs(query_string.decode("latin-1"), max_num_fields=4)
        except ValueError:  # more fields than a signed URL carries: not one of ours
            return None
        expires, sig = query.get("expires", [""]), query.get("sig", [""])
        if len(expires) != 1 or len(sig) != 1:
            return None
        ok = signature_valid(self._signing_key, key, expires[0], sig[0], now=self._clock())
        return key if ok else None

    async def _serve(self, send: ASGISendCallable, key: str, *, head: bool, cache: bytes) -> None:
        path = self.root.joinpath(*key.split("/"))
        try:
            opened = await trio.open_file(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
            await _reply(send, 404, "not found")
            return
        async with opened as source:
            size = os.fstat(source.fileno()).st_size
            content_type = type_for(key) or "application/octet-stream"
            headers = [
                (b"content-type", content_type.encode()),
                (b"content-length", str(size).encode()),
                (b"cache-control", cache),
                (b"x-content-type-options", b"nosniff"),
            ]
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": headers,
                    "trailers": False,
                }
            )
            if head:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            remaining = size
            while remaining > 0:
                chunk = await source.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    break  # truncated under us: stop short rather than pad
                remaining -= len(chunk)
                await send(
                    {"type": "http.response.body", "body": chunk, "more_body": remaining > 0}
                )
            if remaining > 0 or size == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _reply(
    send: ASGISendCallable,
    status: int,
    error: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers, "trailers": False}
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
