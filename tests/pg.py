"""Raw Postgres access for test set-up and for attacking the schema.

The product reaches the database only through `orchestrator.db`; tests also
need to act as a superuser or as the `submitter` role, to create databases
and to try what the schema must refuse. This runs asyncpg on plain asyncio
in a worker thread, so it never touches the code under test's event loops.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from typing import Any

import asyncpg
import trio


async def _run(
    url: str, query: str, args: tuple[Any, ...], role: str | None
) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        if role is not None:
            await conn.execute(f"SET ROLE {role}")
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def _script(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def script(url: str, sql: str) -> None:
    """Run several statements as a superuser (no parameters)."""
    await trio.to_thread.run_sync(lambda: asyncio.run(_script(url, sql)))


def fetch_sync(url: str, query: str, *args: Any, role: str | None = None) -> list[asyncpg.Record]:
    return asyncio.run(_run(url, query, args, role))


async def fetch(url: str, query: str, *args: Any, role: str | None = None) -> list[asyncpg.Record]:
    return await trio.to_thread.run_sync(lambda: fetch_sync(url, query, *args, role=role))


async def execute(url: str, query: str, *args: Any, role: str | None = None) -> None:
    await fetch(url, query, *args, role=role)


def as_login(url: str, user: str, password: str) -> str:
    """The same server and database, logged in as another role."""
    parts = urllib.parse.urlsplit(url)
    where = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{where}"))


def with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


async def plan(
    url: str, *, cost_per_output: int = 1, max_inflight: int = 10, priority: int = 1
) -> str:
    """A fresh plan with the given price, seats and priority, for tests that need others."""
    name = f"plan-{uuid.uuid4().hex[:8]}"
    await execute(
        url,
        "INSERT INTO orchestrator.plans (name, monthly_generations, max_inflight,"
        " min_seconds_between, cost_per_output, priority)"
        " VALUES ($1, 1000000, $2, 0, $3, $4)",
        name,
        max_inflight,
        cost_per_output,
        priority,
    )
    return name
