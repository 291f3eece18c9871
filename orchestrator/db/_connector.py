"""The one place Trio meets asyncpg.

asyncpg runs on asyncio; the daemon runs on Trio. Every database operation is
an asyncio coroutine that acquires a connection, runs its statements and
returns a plain value, and crosses the trio-asyncio bridge exactly once:
crossing per statement cost about 30% of debit throughput here, crossing per
transaction about nothing.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Concatenate, Final, Literal, ParamSpec, TypeVar

import asyncpg
import attrs
import structlog
import trio
import trio_asyncio

from orchestrator.core import sole_exception

from ._errors import DbError, DbUnavailable, RoleUnavailable, map_error
from ._queries import queries

log = structlog.get_logger("orchestrator.db")

P = ParamSpec("P")
T = TypeVar("T")

Pool = asyncpg.Pool
Operation = Callable[Concatenate[Pool, P], Awaitable[T]]

_CLOSE_TIMEOUT_S = 5.0

Role = Literal["orchestrator_daemon", "orchestrator_operator"]
"""A least-privilege role a connection drops to; see the Privileges section of schema.sql."""

DAEMON_ROLE: Final[Role] = "orchestrator_daemon"
OPERATOR_ROLE: Final[Role] = "orchestrator_operator"


class Connector:
    """Runs asyncio operations against a pool, mapping driver errors once.

    A second, smaller pool (`reserved`) serves the writes that end work already paid
    for (finishing a job, recording a prediction, recovery): a burst of admissions
    holding every connection of the main pool can then never make a finish wait.
    """

    def __init__(
        self,
        pool: Pool,
        url: str,
        loop: trio_asyncio.TrioEventLoop,
        role: Role | None = None,
        reserved: Pool | None = None,
        listen_url: str | None = None,
    ) -> None:
        self._pool = pool
        self._reserved = reserved or pool
        self._loop = loop
        self.url = url
        self.listen_url = listen_url or url
        self.role = role

    async def connect(self) -> asyncpg.Connection:
        """A dedicated connection outside the pool, as the pool's role (for LISTEN).

        It goes to `listen_url`: notifications need a session of their own, so behind a
        transaction-pooling PgBouncer it must reach Postgres directly.
        """
        conn = await self.call(asyncpg.connect(self.listen_url))
        try:
            await self.call(drop_to(conn, self.role))
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def run(self, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one operation (one transaction) across the bridge.

        Raises:
            DbError: any failure of the driver or the server, mapped.
        """
        return await self._run_on(self._pool, operation, *args, **kwargs)

    async def run_reserved(
        self, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`run` on the reserved pool: for settles and recovery, never behind admissions.

        Raises:
            DbError: any failure of the driver or the server, mapped.
        """
        return await self._run_on(self._reserved, operation, *args, **kwargs)

    async def _run_on(
        self, pool: Pool, operation: Operation[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        try:
            return await self.call(operation(pool, *args, **kwargs))
        except DbError:
            raise
        except Exception as exc:
            mapped = map_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def call(self, coroutine: Awaitable[T]) -> T:
        """Await an asyncio coroutine on our loop, from any Trio task.

        The loop is named explicitly rather than found through trio-asyncio's
        context variable, so tasks of nurseries opened elsewhere can use it.
        """
        return await self._loop.run_aio_coroutine(coroutine)  # type: ignore[no-any-return]

    async def bridge_lag(self) -> float:
        """Seconds a no-op takes across the bridge and back: how long DB calls queue."""
        started = trio.current_time()
        await self.call(asyncio.sleep(0))
        return trio.current_time() - started

    @property
    def pool_in_use(self) -> int:
        in_use = self._pool.get_size() - self._pool.get_idle_size()
        if self._reserved is not self._pool:
            in_use += self._reserved.get_size() - self._reserved.get_idle_size()
        return in_use


@attrs.frozen
class UndecodableJson:
    """A jsonb value Postgres holds but Python's decoder cannot read, and why.

    Postgres accepts nesting thousands deep and integers thousands of digits long;
    ``json.loads`` raises on both. As an exception it failed the whole row on every
    read, so the job could never be rejected; as a value the row reads and says why.
    """

    problem: str


def decode_jsonb(text: str) -> object:
    """``json.loads``, with a value Python cannot represent returned as `UndecodableJson`."""
    try:
        return json.loads(text)
    except RecursionError:
        return UndecodableJson("params cannot be read: they are nested too deeply")
    except ValueError:
        return UndecodableJson("params cannot be read: a number in them has too many digits")


def log_loop_error(_loop: object, context: dict[str, object]) -> None:
    """Report asyncio's own errors (a socket reset as Postgres restarts) in one line.

    The default handler logs a traceback for every transport Postgres drops; those
    are expected faults, and the operation that used the transport reports its own
    failure. A bug still surfaces there, with its traceback.
    """
    exc = context.get("exception")
    error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else None
    log.warning("db.loop_error", message=str(context.get("message", "")), error=error)


async def drop_to(conn: asyncpg.Connection, role: Role | None) -> None:
    """Act as `role` for the rest of the session, whatever the login could do.

    A login stronger than the role (a superuser in embedded mode) keeps no more
    than the role's rights; a plain member of the role loses nothing.
    """
    if role is None:
        return
    try:
        await conn.execute(queries()["set_role"], role)
    except (asyncpg.InsufficientPrivilegeError, asyncpg.InvalidParameterValueError) as exc:
        user = conn.get_settings().session_authorization
        raise RoleUnavailable(
            f"database login {user!r} cannot act as {role}: grant it the role"
            f" (GRANT {role} TO {user}) or run `orchestrator migrate` first"
        ) from exc


async def _init_connection(conn: asyncpg.Connection, role: Role | None) -> None:
    await drop_to(conn, role)
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=decode_jsonb, schema="pg_catalog"
    )


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's per-release reset round trip.

    Safe because nothing leaves session state on a pooled connection: LISTEN
    and advisory session locks live on dedicated connections only.
    """
    del conn


@asynccontextmanager
async def open_connector(
    url: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    role: Role | None = None,
    reserved_size: int = 0,
    listen_url: str | None = None,
) -> AsyncIterator[Connector]:
    """Open a trio-asyncio loop and a pool on it, for the lifetime of the block.

    With `role`, every connection acts as that role from its first statement. With
    `reserved_size`, a second pool of that many connections serves `run_reserved`.
    `listen_url` (default: `url`) is where LISTEN connections go.

    Raises:
        DbUnavailable: the server cannot be reached.
        RoleUnavailable: the login may not act as `role`.
    """
    try:
        async with _loop_and_pools(
            url, min_size, max_size, role, reserved_size, listen_url
        ) as connector:
            yield connector
    except BaseExceptionGroup as group:
        raise sole_exception(group) from None


@asynccontextmanager
async def _loop_and_pools(
    url: str,
    min_size: int,
    max_size: int,
    role: Role | None,
    reserved_size: int,
    listen_url: str | None,
) -> AsyncIterator[Connector]:
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(log_loop_error)
        async with _pool(loop, url, min_size, max_size, role) as pool:
            if not reserved_size:
                yield Connector(pool, url, loop, role, listen_url=listen_url)
                return
            async with _pool(loop, url, reserved_size, reserved_size, role) as reserved:
                yield Connector(pool, url, loop, role, reserved, listen_url=listen_url)


@asynccontextmanager
async def _pool(
    loop: trio_asyncio.TrioEventLoop, url: str, min_size: int, max_size: int, role: Role | None
) -> AsyncIterator[Pool]:
    try:
        pool = await loop.run_aio_coroutine(
            asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                init=functools.partial(_init_connection, role=role),
                reset=_no_reset,
                max_inactive_connection_lifetime=0,  # keep warm connections; 0 disables expiry
            )
        )
    except DbError:
        raise
    except Exception as exc:
        raise (map_error(exc) or DbUnavailable(str(exc))) from exc
    try:
        yield pool
    finally:
        with trio.move_on_after(_CLOSE_TIMEOUT_S, shield=True) as scope:
            await loop.run_aio_coroutine(pool.close())
        if scope.cancelled_caught:
            pool.terminate()
