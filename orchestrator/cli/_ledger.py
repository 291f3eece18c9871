"""The books: migrate, grant and adjust credits, read accounts and the cluster, audit, reconcile."""

from __future__ import annotations

import argparse

import trio

from orchestrator import logs, views
from orchestrator.cli import _arguments as arguments
from orchestrator.cli._command import (
    EXIT_AUDIT_FAILED,
    EXIT_OK,
    Subparsers,
    database_command,
    with_database,
)
from orchestrator.db import Database
from orchestrator.settings import Settings


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    async def body(_db: Database) -> int:
        views.say("schema applied; the database is current")
        return EXIT_OK

    return trio.run(lambda: with_database(settings, body, migrate=True))


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


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    sub.add_parser("migrate", help="apply schema.sql (idempotent)").set_defaults(func=cmd_migrate)

    p = sub.add_parser("grant", help="grant credits, creating the account if needed")
    p.add_argument("user", type=arguments.new_user_id, help="the account's user id")
    p.add_argument("credits", type=arguments.credit_count, help="credits to add (positive)")
    p.add_argument("--plan", help="move the account to this plan")
    p.add_argument("--ref", help="idempotency reference: a repeated grant pays once")
    p.set_defaults(func=cmd_grant)

    p = sub.add_parser("adjust", help="correct a balance by hand, as an `adjust` ledger row")
    p.add_argument("user", help="the account's user id")
    p.add_argument("amount", type=arguments.adjustment, help="credits to add (negative to remove)")
    p.add_argument(
        "--note", type=arguments.audit_note, required=True, help="why, for the audit trail"
    )
    p.add_argument("--ref", help="idempotency reference")
    p.set_defaults(func=cmd_adjust)

    p = sub.add_parser("accounts", help="balances, credits debited and refunded, jobs by status")
    p.add_argument("--user", help="only this account")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(func=cmd_accounts)

    p = sub.add_parser(
        "cluster", help="daemons alive, the partition slots each holds, and their queues"
    )
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("audit", help="check every ledger invariant; exit 1 on a violation")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "reconcile",
        help="cancel predictions running upstream for ended jobs; count undelivered ones",
    )
    p.add_argument(
        "--window-hours",
        type=arguments.positive_hours,
        default=24.0,
        help="ended jobs of the last N hours (default 24)",
    )
    p.add_argument(
        "--limit",
        type=arguments.positive_count,
        default=1000,
        help="ask about at most N predictions (default 1000)",
    )
    p.add_argument("--dry-run", action="store_true", help="only look: cancel and store nothing")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(func=cmd_reconcile)
