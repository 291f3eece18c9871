"""Lease rounds on a connection and an event loop of their own, for a thread of their own.

A daemon must renew its partition leases on time even while its Trio loop is
saturated with work, or it drops that work and the next owner redoes it:
under load that feedback would feed itself. So rounds do not go through the
Trio/asyncio bridge at all: a `LeaseSession` is used from one OS thread,
with a private asyncio loop and one connection, reconnecting after a failure.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg

from . import _leases
from ._connector import Role, decode_jsonb, drop_to
from ._errors import DbError, DbUnavailable, map_error

T = TypeVar("T")


class LeaseSession:
    """Blocking calls; create, use and close it on the thread that runs the rounds."""

    def __init__(self, url: str, role: Role | None, *, timeout_s: float) -> None:
        self._url = url
        self._role = role
        self._timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        self._loop.close()

    def live_members(self) -> tuple[list[str], int]:
        """Raises: DbError."""
        return self._call(_leases.live_members)

    def lease_round(
        self,
        member: str,
        ttl_s: float,
        keep: Sequence[int],
        take: Sequence[int],
        info: Mapping[str, Any],
    ) -> list[_leases.HeldSlot]:
        """Raises: DbError."""
        return self._call(_leases.lease_round, member, ttl_s, keep, take, info)

    def leave(self, member: str) -> int:
        """Raises: DbError."""
        return self._call(_leases.leave, member)

    def _call(self, operation: Callable[..., Awaitable[T]], *args: object) -> T:
        try:
            return self._loop.run_until_complete(
                asyncio.wait_for(self._on_connection(operation, *args), self._timeout_s)
            )
        except DbError:
            self._reset()
            raise
        except Exception as exc:
            self._reset()
            raise (map_error(exc) or DbUnavailable(str(exc))) from exc

    async def _on_connection(self, operation: Callable[..., Awaitable[T]], *args: object) -> T:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(self._url)
            try:
                await drop_to(conn, self._role)
                await conn.set_type_codec(
                    "jsonb", encoder=json.dumps, decoder=decode_jsonb, schema="pg_catalog"
                )
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
        return await operation(self._conn, *args)

    def _reset(self) -> None:
        """After a failure the connection's state is unknown: the next call reconnects."""
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
