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
import trio

from ._connector import Connector
from ._errors import DbError, DbUnavailable, map_error
from ._queries import queries

_CLOSE_TIMEOUT_S: Final = 2.0


class Listener:
    """Notifications from one LISTEN connection, and the leadership held on its session."""

    def __init__(self, connector: Connector, conn: asyncpg.Connection, buffer: int) -> None:
        self._connector = connector
        self._conn = conn
        self._send, self.notifications = trio.open_memory_channel[str](buffer)
        self.dropped = 0

    def deliver(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        """Hand a payload over from asyncpg's callback without ever blocking the connection."""
        try:
            self._send.send_nowait(str(payload))
        except trio.WouldBlock:
            self.dropped += 1
        except trio.ClosedResourceError:
            pass

    def close(self, _conn: object = None) -> None:
        self._send.close()

    async def try_lead(self) -> bool:
        """Take intake leadership on this session, unless another daemon holds it.

        Raises:
            DbUnavailable: the connection is gone.
        """
        query = queries()["try_intake_leadership"]
        try:
            return bool(await self._connector.call(self._conn.fetchval(query)))
        except Exception as exc:
            raise (map_error(exc) or DbUnavailable(str(exc))) from exc


@asynccontextmanager
async def listen(
    connector: Connector, channel: str, *, buffer: int = 4096
) -> AsyncIterator[Listener]:
    """LISTEN on `channel` for the lifetime of the block, on its own connection.

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
        try:
            conn.add_termination_listener(listener.close)
            await connector.call(conn.add_listener(channel, listener.deliver))
        except Exception as exc:
            raise (map_error(exc) or DbUnavailable(str(exc))) from exc
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
