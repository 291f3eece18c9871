"""The app's side of the loop as operators see it: the event feed and the callbacks owed."""

from __future__ import annotations

import argparse
import json
import sys

import trio

from orchestrator import views
from orchestrator.cli import _arguments as arguments
from orchestrator.cli._command import EXIT_OK, CliError, Subparsers, database_command
from orchestrator.core import EVENTS_CHANNEL
from orchestrator.db import Database
from orchestrator.settings import Settings

_FOLLOW_SAFETY_S = 1.0


@database_command
async def cmd_callbacks(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    if args.redeliver is not None:
        if not await db.redeliver_callback(args.redeliver):
            raise CliError(f"callback {args.redeliver} was not given up on: nothing to redeliver")
        views.say(f"callback {args.redeliver} is due again now")
        return EXIT_OK
    rows = await db.callbacks(failed=args.failed, limit=args.limit)
    views.callbacks(rows, failed=args.failed, as_json=args.json)
    return EXIT_OK


@database_command
async def cmd_events(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    """Print the feed after a seq, oldest first, as JSON lines; `--follow` keeps listening."""
    after = args.after if args.after is not None else await db.job_events_head()
    async with db.listen(EVENTS_CHANNEL) as listener:
        while True:
            events = await db.job_events_after(after, limit=1000)
            for event in events:
                sys.stdout.write(json.dumps(views.event_record(event)) + "\n")
            sys.stdout.flush()
            if events:
                after = events[-1].seq
                continue
            if not args.follow:
                return EXIT_OK
            with trio.move_on_after(_FOLLOW_SAFETY_S):
                await listener.notifications.receive()


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "callbacks",
        help="callbacks owed to apps, or given up on; redeliver one",
        description="Each ending of a job with a callback_url is POSTed, signed, to it by "
        "the slot's owner, retried with backoff for the retry window. Without --failed: "
        "those not delivered yet. --redeliver makes a given-up one due again now.",
    )
    p.add_argument("--failed", action="store_true", help="only those given up on")
    p.add_argument(
        "--redeliver", type=arguments.positive_count, metavar="SEQ", help="retry this one now"
    )
    p.add_argument(
        "--limit", type=arguments.positive_count, default=100, help="at most N (default 100)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_callbacks)

    p = sub.add_parser(
        "events",
        help="the endings feed as JSON lines (what job_events_after returns)",
        description="Every ending in seq order, after --after SEQ (default: from now); "
        "--follow keeps printing them as they happen, woken by NOTIFY orchestrator_job_events.",
    )
    p.add_argument(
        "--after", type=arguments.seq, default=None, help="start after this seq (0: the oldest)"
    )
    p.add_argument("--follow", action="store_true", help="keep listening until interrupted")
    p.set_defaults(func=cmd_events)
