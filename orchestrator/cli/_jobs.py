"""Jobs as a submitter or support sees them: submit, cancel, delete outputs, list, show."""

from __future__ import annotations

import argparse

from orchestrator import views
from orchestrator.cli import _arguments as arguments
from orchestrator.cli._command import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    CliError,
    Subparsers,
    database_command,
)
from orchestrator.core import MAX_PROMPT_CHARS, JobStatus
from orchestrator.db import Database
from orchestrator.settings import Settings


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


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("submit", help="submit a job; prints its id")
    p.add_argument("user", help="whose credits pay for it")
    p.add_argument("prompt", help=f"the text prompt (at most {MAX_PROMPT_CHARS} characters)")
    p.add_argument(
        "--outputs", type=arguments.output_count, default=1, help="images to generate (1-30)"
    )
    p.add_argument(
        "--params", type=arguments.json_object, default=None, help="model input as a JSON object"
    )
    p.add_argument("--idempotency-key", help="a repeat with the same key returns the same job")
    p.add_argument(
        "--wait", action="store_true", help="follow the job to its end; exit 3 unless it succeeded"
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id", type=arguments.job_id, help="the job's id (a UUID)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("delete", help="remove a finished job's stored outputs (soft delete)")
    p.add_argument("job_id", type=arguments.job_id, help="the job's id (a UUID)")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--user", help="only this user's jobs")
    p.add_argument(
        "--limit", type=arguments.positive_count, default=50, help="at most N jobs (default 50)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("status", help="show one job")
    p.add_argument("job_id", type=arguments.job_id, help="the job's id (a UUID)")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(func=cmd_status)
