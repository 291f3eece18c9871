"""Apply `schema.sql`, idempotently, and tell whether it is current."""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from pathlib import Path

import asyncpg

from ._connector import Pool
from ._queries import queries


@functools.cache
def schema_text() -> str:
    """The schema shipped with the package, or the repository's in a source checkout."""
    packaged = importlib.resources.files("orchestrator").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text("utf-8")
    return (Path(__file__).resolve().parents[2] / "schema.sql").read_text("utf-8")


def schema_hash() -> str:
    return hashlib.sha256(schema_text().encode()).hexdigest()


async def migrate(pool: Pool) -> None:
    q = queries()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(q["migration_lock"])
        await conn.execute(schema_text())
        await conn.execute(q["stamp_schema_version"], schema_hash())


async def is_current(pool: Pool) -> bool:
    try:
        applied = await pool.fetchval(queries()["schema_version"])
    except asyncpg.UndefinedTableError:
        return False
    return bool(applied == schema_hash())
