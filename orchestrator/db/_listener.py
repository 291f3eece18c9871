"""A dedicated LISTEN connection whose notifications arrive on a Trio channel.

Notifications are only wake-up hints: when the buffer is full they are
dropped (and counted), because the catch-up scan finds every queued job
anyway. When the connection dies the channel ends, so the owner notices at
once and reconnects. The channels can change while it is open: a daemon
listens on each partition slot it takes, before it scans that slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Final

import asyncpg
import attrs
import trio

from ._connector import Connector
from ._errors import DbError, DbUnavailable, map_error

_CLOSE_TIMEOUT_S: Final = 2.0


@attrs.frozen
class Notification:
    channel: str
    payload: str


class Listener:
    """Notifications from one LISTEN connection, on the channels it listens to now."""

    def __init__(self, connector: Connector, conn: asyncpg.Connection, buffer: int) -> None:
        self._connector = connector
        self._conn = conn
        self._send, self.notifications = trio.open_memory_channel[Notification](buffer)
        self.channels: set[str] = set()
        self.dropped = 0

    def deliver(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        """Hand a payload over from asyncpg's callback without ever blocking the connection."""
        try:
            self._send.send_nowait(Notification(channel, str(payload)))
        except trio.WouldBlock:
            self.dropped += 1
        except trio.ClosedResourceError:
            pass

    def close(self, _conn: object = None) -> None:
        self._send.close()

    async def add(self, channels: Iterable[str]) -> None:
        """LISTEN on more channels; those already listened to are skipped.

        Raises:
            DbUnavailable: the connection is gone.
        """
        fresh = sorted(set(channels) - self.channels)
        await self._call(_each(self._conn.add_listener, fresh, self.deliver))
        self.channels.update(fresh)

    async def remove(self, channels: Iterable[str]) -> None:
        """UNLISTEN; what is still queued for those channels may arrive anyway.

        Raises:
            DbUnavailable: the connection is gone.
        """
        gone = sorted(set(channels) & self.channels)
        self.channels.difference_update(gone)
        await self._call(_each(self._conn.remove_listener, gone, self.deliver))

    async def _call(self, coroutine: Awaitable[None]) -> None:
        try:
            await self._connector.call(coroutine)
        except Exception as exc:
            raise (map_error(exc) or DbUnavailable(str(exc))) from exc


async def _each(
    method: Callable[[str, Callable[..., None]], Awaitable[None]],
    channels: Sequence[str],
    callback: Callable[..., None],
) -> None:
    """(UN)LISTEN on many channels in one crossing of the bridge: a slot's take is one call."""
    for channel in channels:
        await method(channel, callback)


@asynccontextmanager
async def listen(
    connector: Connector, channels: Iterable[str], *, buffer: int = 4096
) -> AsyncIterator[Listener]:
    """LISTEN on `channels` for the lifetime of the block, on its own connection.

    Raises:
        DbUnavailable: the connection could not be made.
    """
    try:
        conn = await connector.connect()
    except DbError:
        raise
    except Exception as exc:
        raise (map_error(exc) or DbUnavailable(str(exc))) from exc
    listener = Listener(connector, conn, buffer)
    try:
        conn.add_termination_listener(listener.close)
        await listener.add(channels)
        yield listener
    finally:
        listener.close()
        with trio.move_on_after(_CLOSE_TIMEOUT_S, shield=True) as scope:
            try:
                await connector.call(conn.close())
            except (
                OSError,
                asyncpg.InterfaceError,
                asyncpg.PostgresConnectionError,  # 08xxx
                asyncpg.OperatorInterventionError,  # 57xxx: shutting down, starting up (57P03)
            ):
                conn.terminate()
        if scope.cancelled_caught:
            conn.terminate()
