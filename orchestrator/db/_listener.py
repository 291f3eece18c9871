"""A dedicated LISTEN connection whose notifications arrive on a Trio channel.

Notifications are only wake-up hints: when the buffer is full they are
dropped (and counted), because the catch-up scan finds every queued job
anyway. When the connection dies the channel ends, so the owner notices at
once and reconnects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import asyncpg
import attrs
import trio

from ._connector import Connector
from ._errors import DbUnavailable, map_error

_CLOSE_TIMEOUT_S: Final = 2.0


@attrs.define
class Listener:
    notifications: trio.MemoryReceiveChannel[str]
    dropped: int = 0


@asynccontextmanager
async def listen(
    connector: Connector, channel: str, *, buffer: int = 4096
) -> AsyncIterator[Listener]:
    """LISTEN on `channel` for the lifetime of the block, on its own connection.

    Raises:
        DbUnavailable: the connection could not be made.
    """
    send, receive = trio.open_memory_channel[str](buffer)
    listener = Listener(receive)

    def on_notification(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            send.send_nowait(str(payload))
        except trio.WouldBlock:
            listener.dropped += 1
        except trio.ClosedResourceError:
            pass

    def on_termination(_conn: object) -> None:
        send.close()

    try:
        conn = await connector.call(asyncpg.connect(connector.url))
        conn.add_termination_listener(on_termination)
        await connector.call(conn.add_listener(channel, on_notification))
    except Exception as exc:
        raise (map_error(exc) or DbUnavailable(str(exc))) from exc
    try:
        yield listener
    finally:
        send.close()
        with trio.move_on_after(_CLOSE_TIMEOUT_S, shield=True) as scope:
            try:
                await connector.call(conn.close())
            except (OSError, asyncpg.InterfaceError):
                conn.terminate()
        if scope.cancelled_caught:
            conn.terminate()
