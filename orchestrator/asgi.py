"""The two pieces of raw ASGI every one of our small apps needs.

The daemon's endpoints and the provider simulator are raw ASGI apps (no
framework, every byte under control); both read bounded request bodies and
answer hypercorn's lifespan protocol the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the CLI need not load hypercorn to parse its flags
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable


async def read_body(receive: ASGIReceiveCallable, limit: int) -> bytes | None:
    """The whole request body, or None once it exceeds `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] != "http.request":
            return b"".join(chunks)
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


async def lifespan(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """Acknowledge start-up and shutdown; our apps hold no start-up state."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
