"""Jobs as a submitter or support sees them: submit, retry, cancel, delete outputs, list, show."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Final

import trio

from orchestrator import views
from orchestrator.cli import _arguments as arguments
from orchestrator.cli._command import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    CliError,
    Subparsers,
    database_command,
)
from orchestrator.core import (
    EVENTS_CHANNEL,
    MAX_PROMPT_CHARS,
    SNIFF_BYTES,
    JobStatus,
    input_name_problem,
    sniffed_type,
)
from orchestrator.db import MAX_BULK_JOBS, Database, Listener
from orchestrator.outputs import EXTENSIONS, StorageError, input_key
from orchestrator.settings import Settings

_FOLLOW_REFRESH_S: Final = 1.0
# The CLI serves no HTTP: file-mode URLs it could build would point nowhere, and it needs none.
_NO_HTTP: Final = "http://127.0.0.1:9"


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    """One job from the arguments, or many from `--file`; the two shapes exclude each other."""
    parser: argparse.ArgumentParser = args.submit_parser
    if args.file is None:
        if args.user is None or args.prompt is None:
            parser.error("USER and PROMPT are required (or --file PATH to submit many)")
        return _submit_one(settings, args)
    single = [
        name
        for name, given in (
            ("USER", args.user is not None),
            ("PROMPT", args.prompt is not None),
            ("--outputs", args.outputs is not None),
            ("--params", args.params is not None),
            ("--idempotency-key", args.idempotency_key is not None),
            ("--wait", args.wait),
        )
        if given
    ]
    if single:
        parser.error(
            f"--file takes every job from the file; {', '.join(single)} cannot be given with it"
        )
    if args.file == "-":
        args.stream = sys.stdin
        return _submit_file(settings, args)
    with Path(args.file).open(encoding="utf-8") as stream:
        args.stream = stream
        return _submit_file(settings, args)


@database_command
async def _submit_one(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    job_id = await db.submit_job(
        args.user,
        args.prompt,
        params=args.params,
        num_outputs=1 if args.outputs is None else args.outputs,
        idempotency_key=args.idempotency_key,
    )
    print(job_id)  # noqa: T201  (the id is the command's output, for scripts)
    if not args.wait:
        return EXIT_OK
    return await _follow(db, job_id)


async def _follow(db: Database, job_id: uuid.UUID) -> int:
    """Follow the job to its end: the feed's NOTIFY wakes it, a slow re-read is the net."""
    async with db.listen(EVENTS_CHANNEL) as listener:
        job = await views.follow(db.job, job_id, _ending_heard(listener, job_id))
    outputs = (await db.job_outputs([job_id]))[job_id]
    views.job(job, outputs, as_json=False)
    return EXIT_OK if job.status is JobStatus.SUCCEEDED else EXIT_JOB_FAILED


def _ending_heard(listener: Listener, job_id: uuid.UUID) -> Callable[[], Awaitable[None]]:
    """Wait until the feed says this job ended, or the status line's next refresh is due."""

    async def wait() -> None:
        with trio.move_on_after(_FOLLOW_REFRESH_S):
            while True:
                note = await listener.notifications.receive()
                if _names(note.payload, job_id):
                    return

    return wait


def _names(payload: str, job_id: uuid.UUID) -> bool:
    """Whether an `orchestrator_job_events` payload is this job's ending."""
    try:
        event = json.loads(payload)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("job_id") == str(job_id)


class _Unreadable(str):
    """A line of the file that never reaches the database, and why."""

    __slots__ = ()


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _read_items(lines: Iterable[str]) -> Iterator[tuple[int, object | str]]:
    """(line number, parsed item) per non-blank line; a line that is no JSON, as its problem."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            yield number, _Unreadable(f"line {number} is not a JSON value: {exc}")
            continue
        yield number, _unstorable(number, item) or item


def _unstorable(number: int, item: object) -> _Unreadable | None:
    """What Postgres's jsonb would refuse for the whole call, refused for this line alone."""
    text = json.dumps(item, ensure_ascii=False)
    if "\\u0000" in text:
        return _Unreadable(
            f"line {number} holds a NUL character (\\u0000), which jsonb cannot store"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _Unreadable(f"line {number} holds a lone surrogate escape, which is not text")
    return None


def _emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")


@database_command
async def _submit_file(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    """JSON lines in, one JSON result per line out, in order; chunks of MAX_BULK_JOBS.

    Each chunk is one call and one transaction; a chunk refused whole (over the
    size limit) stops the command after the chunks before it were submitted, and
    running the file again is safe for items that carry an idempotency key.
    """
    refused = 0
    chunk: list[tuple[int, object]] = []
    for number, item in _read_items(args.stream):
        chunk.append((number, item))
        if len(chunk) == MAX_BULK_JOBS:
            refused += await _submit_chunk(db, chunk)
            chunk = []
    if chunk:
        refused += await _submit_chunk(db, chunk)
    return EXIT_OK if refused == 0 else EXIT_JOB_FAILED


async def _submit_chunk(db: Database, chunk: list[tuple[int, object]]) -> int:
    """Submit the readable items of `chunk` in one call; print every line's result in order."""
    readable = [item for _number, item in chunk if not isinstance(item, _Unreadable)]
    results = iter(await db.submit_jobs(readable))
    refused = 0
    for number, item in chunk:
        if isinstance(item, _Unreadable):
            record: dict[str, object] = {
                "line": number,
                "job_id": None,
                "error": "InvalidRequest",
                "code": "OR004",
                "message": str(item),
            }
        else:
            result = next(results)
            record = {
                "line": number,
                "job_id": None if result.job_id is None else str(result.job_id),
            }
            if not result.ok:
                record |= {"error": result.error, "code": result.code, "message": result.message}
        refused += record["job_id"] is None
        _emit(record)
    sys.stdout.flush()
    return refused


@database_command
async def cmd_retry(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    key = args.idempotency_key
    if args.again:
        key = f"retry:{args.job_id}:{uuid.uuid4()}"
    new_id = await db.retry_job(args.job_id, idempotency_key=key)
    print(new_id)  # noqa: T201  (the id is the command's output, for scripts)
    if not args.wait:
        return EXIT_OK
    return await _follow(db, new_id)


@database_command
async def cmd_cancel(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    if await db.request_cancel(args.job_id):
        views.say(f"cancellation of {args.job_id} requested")
        return EXIT_OK
    raise CliError(f"job {args.job_id} has already finished and cannot be cancelled")


@database_command
async def cmd_delete(db: Database, settings: Settings, args: argparse.Namespace) -> int:
    """Remove a finished job's stored objects, then mark its outputs deleted (rows stay)."""
    from orchestrator.daemon import object_store  # noqa: PLC0415  (the store the daemon writes)

    job = await db.job(args.job_id)
    if job is None:
        raise CliError(f"unknown job {args.job_id}")
    if not job.status.terminal:
        raise CliError(f"job {args.job_id} is {job.status.value}: cancel it first")
    store, _routes = object_store(settings, _NO_HTTP, signs=False)
    try:
        removed = await store.delete(await db.stored_outputs(args.job_id))
    except ValueError as exc:  # ForeignLocation: written under another storage URL
        raise CliError(f"job {args.job_id}: {exc}; nothing was removed") from exc
    except StorageError as exc:
        raise CliError(f"job {args.job_id}: the store failed ({exc}); run it again") from exc
    marked = await db.soft_delete_outputs(args.job_id)
    views.say(f"job {args.job_id}: {removed} objects removed, {marked} outputs marked deleted")
    return EXIT_OK


@database_command
async def cmd_upload(db: Database, settings: Settings, args: argparse.Namespace) -> int:
    """Put an input image of USER in the store and print its key, for `image_input`."""
    from orchestrator.daemon import object_store  # noqa: PLC0415  (the store the daemon reads)

    if await db.account(args.user) is None:
        raise CliError(f"unknown user {args.user!r}: grant credits to create the account")
    data = args.file.read_bytes()
    content_type = sniffed_type(data[:SNIFF_BYTES])
    if content_type is None:
        raise CliError(f"{args.file} is not an image (PNG, JPEG, WebP or GIF)")
    if len(data) > settings.input_max_bytes:
        raise CliError(
            f"{args.file} is {len(data)} bytes; inputs may be at most {settings.input_max_bytes}"
            " (ORCHESTRATOR_INPUT_MAX_BYTES)"
        )
    name = args.name or f"{uuid.uuid4()}.{EXTENSIONS[content_type]}"
    if (problem := input_name_problem(name)) is not None:
        raise CliError(problem)
    store, _routes = object_store(settings, _NO_HTTP, signs=False)
    stored = await store.put(input_key(args.user, name), data, content_type=content_type)
    print(stored.key)  # noqa: T201  (the key is the command's output, for scripts)
    return EXIT_OK


@database_command
async def cmd_jobs(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    jobs = await db.jobs(user_id=args.user, limit=args.limit)
    outputs = await db.job_outputs([job.id for job in jobs])
    views.jobs(jobs, outputs, as_json=args.json)
    return EXIT_OK


@database_command
async def cmd_status(db: Database, _settings: Settings, args: argparse.Namespace) -> int:
    job = await db.job(args.job_id)
    if job is None:
        raise CliError(f"unknown job {args.job_id}")
    views.job(job, (await db.job_outputs([job.id]))[job.id], as_json=args.json)
    return EXIT_OK


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "submit",
        help="submit a job and print its id, or many from a JSON-lines file",
        description="Submit one job (USER PROMPT), or with --file many in one round trip "
        "per 1,000: each line a JSON object {user_id, prompt, params?, num_outputs?, "
        "idempotency_key?}; one JSON result per line comes out, in order, and the exit "
        f"status is {EXIT_JOB_FAILED} if any line was refused.",
    )
    p.add_argument("user", nargs="?", help="whose credits pay for it")
    p.add_argument(
        "prompt", nargs="?", help=f"the text prompt (at most {MAX_PROMPT_CHARS} characters)"
    )
    p.add_argument(
        "--file",
        type=arguments.jobs_file,
        metavar="PATH",
        help="JSON lines, one job each ('-' reads standard input)",
    )
    p.add_argument(
        "--outputs", type=arguments.output_count, default=None, help="images to generate (1-30)"
    )
    p.add_argument(
        "--params", type=arguments.json_object, default=None, help="model input as a JSON object"
    )
    p.add_argument("--idempotency-key", help="a repeat with the same key returns the same job")
    p.add_argument(
        "--wait", action="store_true", help="follow the job to its end; exit 3 unless it succeeded"
    )
    p.set_defaults(func=cmd_submit, submit_parser=p)

    p = sub.add_parser(
        "retry",
        help="submit a failed or timed-out job again as a new linked job; prints its id",
        description="The new job has the old one's user, prompt, params and outputs, "
        "names it in retry_of, and is charged at admission like any job. Retrying one "
        "job twice returns the same new job unless --again or another key is given.",
    )
    p.add_argument("job_id", type=arguments.job_id, help="the failed or timed-out job (a UUID)")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--idempotency-key", help="the new job's key (default retry:JOB_ID: one retry per job)"
    )
    again.add_argument(
        "--again", action="store_true", help="a deliberate further retry, under a fresh key"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow the new job to its end; exit 3 unless it succeeded",
    )
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id", type=arguments.job_id, help="the job's id (a UUID)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("delete", help="remove a finished job's stored outputs (soft delete)")
    p.add_argument("job_id", type=arguments.job_id, help="the job's id (a UUID)")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser(
        "upload",
        help="put an input image of a user in storage; prints its key for params.image_input",
        description="The image goes to private/USER/inputs/NAME in ORCHESTRATOR_STORAGE_URL. "
        "A job of USER may then name the key in params.image_input; the daemon hands the "
        "provider a presigned URL for it that expires within minutes.",
    )
    p.add_argument("user", help="whose input it is (the account must exist)")
    p.add_argument("file", type=arguments.readable_file, help="a PNG, JPEG, WebP or GIF image")
    p.add_argument("--name", help="its name under the user's inputs (default: a UUID and the type)")
    p.set_defaults(func=cmd_upload)

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
