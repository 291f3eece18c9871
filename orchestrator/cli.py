"""The `orchestrator` command: the composition root for every subcommand.

Each subcommand builds `Settings` once, resolves the database (DATABASE_URL
or the shared embedded server) and runs one Trio program. Expected failures
(bad input, unknown ids, an unreachable database) print one line on stderr
and exit 2; `audit` exits 1 when it finds a violation.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final, NoReturn

import attrs
import trio

from orchestrator import logs, views
from orchestrator.core import MAX_OUTPUTS, JobStatus, sole_exception
from orchestrator.db import (
    OPERATOR_ROLE,
    Database,
    DbError,
    embedded_server_running,
    ensure_embedded_server,
    open_database,
    stop_embedded_server,
)
from orchestrator.settings import Settings, SettingsError, environment_variables, from_env
from orchestrator.simulator import add_simulator_flags, simulator_config

EXIT_OK: Final = 0
EXIT_AUDIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_JOB_FAILED: Final = 3


class CliError(Exception):
    """An expected failure, reported as one line without a traceback."""


def database_url(settings: Settings) -> str:
    """DATABASE_URL when given, else the embedded server (started on first use)."""
    if settings.database_url:
        return settings.database_url
    return ensure_embedded_server(settings.home)


def _job_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (a UUID)") from None


_WHOLE: Final = re.compile(r"[+-]?[0-9]+")
_MAX_WHOLE: Final = 2**63 - 1  # a bigint, as the ledger stores it
_USER_ID: Final = re.compile(r"[A-Za-z0-9._@:+-]{1,128}")  # the rule jobs.user_id is held to


def _whole(text: str, what: str) -> int:
    """ASCII digits only: ``int()`` also reads Arabic-Indic, fullwidth and ``1_000``."""
    if _WHOLE.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number of {what}")
    if len(text.lstrip("+-")) > len(str(_MAX_WHOLE)) or abs(int(text)) > _MAX_WHOLE:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is too large a number of {what}")
    return int(text)


def _credits(text: str) -> int:
    value = _whole(text, "credits")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"credits must be positive, got {value}")
    return value


def _nonzero(text: str) -> int:
    value = _whole(text, "credits")
    if value == 0:
        raise argparse.ArgumentTypeError("an adjustment must not be zero")
    return value


def _outputs(text: str) -> int:
    try:
        value = _whole(text, "outputs")
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of outputs") from None
    if not 1 <= value <= MAX_OUTPUTS:
        raise argparse.ArgumentTypeError(f"outputs must be 1 to {MAX_OUTPUTS}, got {value}")
    return value


def _new_user_id(text: str) -> str:
    """A grant creates the account: refuse an id no job could ever be submitted for."""
    if _USER_ID.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(
            "a user id must be 1 to 128 characters of A-Z a-z 0-9 . _ @ : + -"
        )
    return text


def _note(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the note must say why, for the audit trail")
    return text


def _positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not 0 < value <= 24 * 365:
        raise argparse.ArgumentTypeError(f"hours must be in (0, 8760], got {text}")
    return value


def _params(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--params is not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError):  # a number too long or nesting too deep for Python
        raise argparse.ArgumentTypeError("--params cannot be read: too deep or too long") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--params must be a JSON object")
    return value


async def _with_database(
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


Command = Callable[[Settings, argparse.Namespace], int]
DatabaseBody = Callable[[Database, Settings, argparse.Namespace], Awaitable[int]]


def database_command(body: DatabaseBody) -> Command:
    """A subcommand that runs `body` in one Trio program, on the operator role's database."""

    @functools.wraps(body)
    def command(settings: Settings, args: argparse.Namespace) -> int:
        async def run(db: Database) -> int:
            return await body(db, settings, args)

        return trio.run(_with_database, settings, run)

    return command


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    async def body(_db: Database) -> int:
        views.say("schema applied; the database is current")
        return EXIT_OK

    return trio.run(lambda: _with_database(settings, body, migrate=True))


@database_command
async def cmd_grant(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    balance = await db.grant(args.user, args.credits, ref=args.ref, plan=args.plan)
    views.say(f"{args.user}: balance {balance}")
    return EXIT_OK


@database_command
async def cmd_adjust(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    balance = await db.adjust(args.user, args.amount, note=args.note, ref=args.ref)
    if balance is None:
        views.say(f"adjustment {args.ref} was already applied; nothing changed")
    else:
        views.say(f"{args.user}: balance {balance}")
    return EXIT_OK


@database_command
async def cmd_submit(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    job_id = await db.submit_job(
        args.user,
        args.prompt,
        params=args.params,
        num_outputs=args.outputs,
        idempotency_key=args.idempotency_key,
    )
    print(job_id)  # noqa: T201  (the id is the command's output, for scripts)
    if not args.wait:
        return EXIT_OK
    job = await views.follow(db.job, job_id)
    views.job(job, as_json=False)
    return EXIT_OK if job.status is JobStatus.SUCCEEDED else EXIT_JOB_FAILED


@database_command
async def cmd_cancel(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    if await db.request_cancel(args.job_id):
        views.say(f"cancellation of {args.job_id} requested")
        return EXIT_OK
    raise CliError(f"job {args.job_id} has already finished and cannot be cancelled")


@database_command
async def cmd_delete(db: Database, settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.daemon import storage_root  # noqa: PLC0415
    from orchestrator.storage import FilesystemStorage  # noqa: PLC0415

    job = await db.job(args.job_id)
    if job is None:
        raise CliError(f"unknown job {args.job_id}")
    if not job.status.terminal:
        raise CliError(f"job {args.job_id} is {job.status.value}: cancel it first")
    paths = await db.stored_outputs(args.job_id)
    removed = await FilesystemStorage(storage_root(settings)).delete(paths)
    marked = await db.soft_delete_outputs(args.job_id)
    views.say(f"job {args.job_id}: {removed} files removed, {marked} outputs marked deleted")
    return EXIT_OK


@database_command
async def cmd_jobs(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    jobs = await db.jobs(user_id=args.user, limit=args.limit)
    views.jobs(jobs, as_json=args.json)
    return EXIT_OK


@database_command
async def cmd_status(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    job = await db.job(args.job_id)
    if job is None:
        raise CliError(f"unknown job {args.job_id}")
    views.job(job, as_json=args.json)
    return EXIT_OK


@database_command
async def cmd_accounts(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    views.accounts(await db.account_summaries(user_id=args.user), as_json=args.json)
    return EXIT_OK


@database_command
async def cmd_cluster(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    views.cluster(await db.cluster_members(), await db.cluster_owners(), as_json=args.json)
    return EXIT_OK


@database_command
async def cmd_audit(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    report = await db.audit()
    views.audit(report, as_json=args.json)
    return EXIT_OK if report.ok else EXIT_AUDIT_FAILED


@database_command
async def cmd_reconcile(db: Database, settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.daemon import open_provider  # noqa: PLC0415
    from orchestrator.reconcile import Reconciler  # noqa: PLC0415

    logs.configure(settings.log_level, settings.log_format)  # to stderr: stdout is the report
    async with open_provider(settings) as provider:
        reconciler = Reconciler(
            db,
            provider,
            provider_name=settings.provider,
            window_s=args.window_hours * 3600.0,
            limit=args.limit,
            cancel_timeout_s=settings.cancel_timeout_s,
            dry_run=args.dry_run,
        )
        report = await reconciler.run_once()
    views.reconcile(report, as_json=args.json)
    return EXIT_OK


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "url":
        print(database_url(settings))  # noqa: T201
        return EXIT_OK
    if settings.database_url:
        raise CliError("DATABASE_URL is set: that server is not ours to stop")
    stopped = stop_embedded_server(settings.home)
    views.say("embedded Postgres stopped" if stopped else "no embedded Postgres was running")
    return EXIT_OK


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from orchestrator import daemon  # noqa: PLC0415  (only `run` pays for the daemon)

    logs.configure(settings.log_level, settings.log_format)
    url = database_url(settings)
    trio.run(daemon.serve, settings, url)
    return EXIT_OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator import demo  # noqa: PLC0415  (only the demo pays for it)

    settings = attrs.evolve(
        settings,
        job_deadline_s=args.deadline,
        poll_initial_s=0.1,
        poll_max_s=1.0,
        scan_interval_s=1.0,
        grace_s=1.0,
        cancel_timeout_s=2.0,
        replicate_model="sim/image",
    )
    started_here = not settings.database_url and not embedded_server_running(settings.home)
    url = database_url(settings)
    log_path = Path(settings.home).expanduser() / "demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok = trio.run(
            functools.partial(
                demo.run,
                settings,
                url,
                console=views.console(),
                log_path=log_path,
                scale=args.scale,
            )
        )
    finally:
        if started_here:
            stop_embedded_server(settings.home)
    return EXIT_OK if ok else EXIT_AUDIT_FAILED


def cmd_simulate_provider(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.simulator import serve_simulator  # noqa: PLC0415

    logs.configure(settings.log_level, settings.log_format)
    try:
        config = simulator_config(args)
    except ValueError as exc:
        raise CliError(str(exc)) from exc

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                functools.partial(serve_simulator, config, host=args.host, port=args.port)
            )
            views.say(f"simulated provider listening on {url}")

    trio.run(main)
    return EXIT_OK


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
    _add_ledger_commands(sub)
    _add_job_commands(sub)
    _add_daemon_commands(sub)
    return parser


Subparsers = argparse._SubParsersAction  # noqa: SLF001  (argparse names no public type)


def _add_ledger_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    sub.add_parser("migrate", help="apply schema.sql (idempotent)").set_defaults(func=cmd_migrate)

    p = sub.add_parser("grant", help="grant credits, creating the account if needed")
    p.add_argument("user", type=_new_user_id)
    p.add_argument("credits", type=_credits)
    p.add_argument("--plan", help="move the account to this plan")
    p.add_argument("--ref", help="idempotency reference: a repeated grant pays once")
    p.set_defaults(func=cmd_grant)

    p = sub.add_parser("adjust", help="correct a balance by hand, as an `adjust` ledger row")
    p.add_argument("user")
    p.add_argument("amount", type=_nonzero, help="credits to add (negative to remove)")
    p.add_argument("--note", type=_note, required=True, help="why, for the audit trail")
    p.add_argument("--ref", help="idempotency reference")
    p.set_defaults(func=cmd_adjust)

    p = sub.add_parser("accounts", help="balances, credits debited and refunded, jobs by status")
    p.add_argument("--user")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accounts)

    p = sub.add_parser(
        "cluster", help="daemons alive, the partition slots each holds, and their queues"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("audit", help="check every ledger invariant; exit 1 on a violation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "reconcile",
        help="cancel predictions running upstream for ended jobs; count undelivered ones",
    )
    p.add_argument(
        "--window-hours",
        type=_positive_hours,
        default=24.0,
        help="ended jobs of the last N hours (default 24)",
    )
    p.add_argument(
        "--limit",
        type=_positive_count,
        default=1000,
        help="ask about at most N predictions (default 1000)",
    )
    p.add_argument("--dry-run", action="store_true", help="only look: cancel and store nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reconcile)


def _add_job_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("submit", help="submit a job; prints its id")
    p.add_argument("user")
    p.add_argument("prompt")
    p.add_argument("--outputs", type=_outputs, default=1, help="images to generate (1-30)")
    p.add_argument("--params", type=_params, default=None, help="model input as a JSON object")
    p.add_argument("--idempotency-key", help="a repeat with the same key returns the same job")
    p.add_argument(
        "--wait", action="store_true", help="follow the job to its end; exit 3 unless it succeeded"
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id", type=_job_id)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("delete", help="remove a finished job's stored outputs (soft delete)")
    p.add_argument("job_id", type=_job_id)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--user")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("status", help="show one job")
    p.add_argument("job_id", type=_job_id)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


def _add_daemon_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run the daemon and the simulator through a realistic burst, then audit"
    )
    p.add_argument(
        "--deadline", type=float, default=5.0, help="job deadline for the demo (default 5 s)"
    )
    p.add_argument("--scale", type=int, default=1, help="multiply the ordinary traffic")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    p.add_argument("--deadline", type=float, help="seconds a job may wait on the provider")
    p.add_argument("--provider-url", help="provider base URL (REPLICATE_API_BASE)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "simulate-provider", help="serve a Replicate-compatible simulator on loopback"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8090, help="port to listen on (default: 8090)")
    add_simulator_flags(p)
    p.set_defaults(func=cmd_simulate_provider)

    p = sub.add_parser("db", help="the embedded Postgres: show its URL or stop it")
    p.add_argument("action", choices=("url", "stop"))
    p.set_defaults(func=cmd_db)


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


if __name__ == "__main__":
    sys.exit(main())
