"""Parse the command line, build the settings, run the subcommand, report expected errors."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NoReturn

from orchestrator import views
from orchestrator.cli import _feed, _jobs, _ledger, _processes, _top
from orchestrator.cli._command import EXIT_USAGE, CliError
from orchestrator.core import sole_exception
from orchestrator.db import DbError
from orchestrator.settings import SettingsError, environment_variables, from_env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Run paid image-generation jobs without losing, double-charging "
        "or over-delivering anything.",
        epilog="environment: " + ", ".join(environment_variables()),
    )
    parser.add_argument("--database-url", help="Postgres URL (default: DATABASE_URL or embedded)")
    parser.add_argument("--home", help="where the embedded Postgres keeps its data")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _ledger.add_commands(sub)
    _jobs.add_commands(sub)
    _feed.add_commands(sub)
    _processes.add_commands(sub)
    _top.add_commands(sub)
    return parser


def _fail(message: str) -> NoReturn:
    views.error(message)
    raise SystemExit(EXIT_USAGE)


_EXPECTED: Final = (CliError, SettingsError, DbError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run_command(args)
    except BaseExceptionGroup as group:
        # Nurseries wrap what they raise; one expected error is still one line.
        sole = sole_exception(group)
        if not isinstance(sole, _EXPECTED):
            raise
        _fail(_describe(sole))
    except _EXPECTED as exc:
        _fail(_describe(exc))
    except KeyboardInterrupt:
        return 130


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DbError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    return str(exc)


def _run_command(args: argparse.Namespace) -> int:
    home = Path(args.home) if args.home else None
    settings = from_env(
        os.environ,
        database_url=args.database_url,
        home=home,
        job_deadline_s=getattr(args, "deadline", None) if args.command == "run" else None,
        replicate_api_base=getattr(args, "provider_url", None),
    )
    code: int = args.func(settings, args)
    return code
