"""What every subcommand shares: exit codes, expected errors, and the database it runs on."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from orchestrator.db import OPERATOR_ROLE, Database, ensure_embedded_server, open_database
from orchestrator.settings import Settings

EXIT_OK: Final = 0
EXIT_AUDIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_JOB_FAILED: Final = 3

Command = Callable[[Settings, argparse.Namespace], int]
DatabaseBody = Callable[[Database, Settings, argparse.Namespace], Awaitable[int]]
Subparsers = argparse._SubParsersAction  # noqa: SLF001  (argparse names no public type)


class CliError(Exception):
    """An expected failure, reported as one line without a traceback."""


def database_url(settings: Settings) -> str:
    """DATABASE_URL when given, else the embedded server (started on first use)."""
    if settings.database_url:
        return settings.database_url
    return ensure_embedded_server(settings.home)


async def with_database(
    settings: Settings, body: Callable[[Database], Awaitable[int]], *, migrate: bool = False
) -> int:
    """Run `body` as the operator role, or on the login's own rights to migrate."""
    role = None if migrate else OPERATOR_ROLE
    async with open_database(database_url(settings), min_size=1, max_size=2, role=role) as db:
        if migrate:
            await db.migrate()
        elif not await db.schema_is_current():
            raise CliError("the database schema is missing or stale: run `orchestrator migrate`")
        return await body(db)


def database_command(body: DatabaseBody) -> Command:
    """A subcommand that runs `body` in one Trio program, on the operator role's database."""

    @functools.wraps(body)
    def command(settings: Settings, args: argparse.Namespace) -> int:
        async def run(db: Database) -> int:
            return await body(db, settings, args)

        return trio.run(with_database, settings, run)

    return command
