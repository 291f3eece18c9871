"""The event feed and the callbacks owed from it, on asyncio."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import attrs

from orchestrator.core import (
    CallbackDue,
    CallbackOutput,
    ErrorCode,
    JobEvent,
    JobStatus,
    StoredOutput,
)

from ._connector import Pool
from ._queries import queries


@attrs.frozen
class CallbackRow:
    """One callback as operators see it: where, how far it got, and why it stopped."""

    seq: int
    job_id: uuid.UUID
    url: str
    status: JobStatus
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    failed_at: datetime | None
    created_at: datetime


def _event(row: asyncpg.Record) -> JobEvent:
    code = row["error_code"]
    return JobEvent(
        seq=row["seq"],
        job_id=row["job_id"],
        user_id=row["user_id"],
        status=JobStatus(row["status"]),
        error_code=None if code is None else ErrorCode(code),
        finished_at=row["finished_at"],
    )


async def after(pool: Pool, seq: int, limit: int) -> list[JobEvent]:
    return [_event(row) for row in await pool.fetch(queries()["job_events_after"], seq, limit)]


async def head(pool: Pool) -> int:
    return int(await pool.fetchval(queries()["job_events_head"]))


async def prune(pool: Pool, older_than_s: float, limit: int) -> int:
    return int(await pool.fetchval(queries()["prune_job_events"], older_than_s, limit))


async def outputs(pool: Pool, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[StoredOutput]]:
    found: dict[uuid.UUID, list[StoredOutput]] = {job_id: [] for job_id in job_ids}
    for row in await pool.fetch(queries()["job_outputs"], list(job_ids)):
        found[row["job_id"]].append(
            StoredOutput(
                idx=row["idx"],
                url=row["url"] or "",
                path=row["path"],
                size_bytes=row["size_bytes"],
                sha256=row["sha256"],
                content_type=row["content_type"],
                public_url=row["public_url"],
            )
        )
    return found


async def claim(pool: Pool, member: str, limit: int, claim_s: float) -> list[CallbackDue]:
    rows = await pool.fetch(queries()["claim_callbacks"], member, limit, claim_s)
    return [
        CallbackDue(
            seq=row["seq"],
            attempt=row["attempt"],
            url=row["url"],
            created_at=row["created_at"],
            event=_event(row),
            message=row["error_message"],
            outputs=tuple(_callback_output(item) for item in row["outputs"] or ()),
        )
        for row in rows
    ]


def _callback_output(item: dict[str, object]) -> CallbackOutput:
    def text(key: str) -> str | None:
        value = item.get(key)
        return value if isinstance(value, str) else None

    idx, size = item.get("idx"), item.get("size_bytes")
    return CallbackOutput(
        idx=idx if isinstance(idx, int) else -1,
        public_url=text("public_url"),
        sha256=text("sha256"),
        content_type=text("content_type"),
        size_bytes=size if isinstance(size, int) else None,
    )


async def record(
    pool: Pool,
    seq: int,
    attempt: int,
    delivered: bool,
    status: int | None,
    error: str | None,
    retry_in_s: float | None,
) -> bool:
    return bool(
        await pool.fetchval(
            queries()["record_callback"],
            seq,
            attempt,
            delivered,
            status,
            error,
            retry_in_s,
            not delivered and retry_in_s is None,
        )
    )


async def redeliver(pool: Pool, seq: int) -> bool:
    return bool(await pool.fetchval(queries()["redeliver_callback"], seq))


async def listing(pool: Pool, failed: bool, limit: int) -> list[CallbackRow]:
    return [callback_row(row) for row in await pool.fetch(queries()["ui_callbacks"], failed, limit)]


def callback_row(row: asyncpg.Record) -> CallbackRow:
    return CallbackRow(
        seq=row["seq"],
        job_id=row["job_id"],
        url=row["url"],
        status=JobStatus(row["status"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_attempt_at=row["last_attempt_at"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        failed_at=row["failed_at"],
        created_at=row["created_at"],
    )


async def counts(pool: Pool) -> tuple[int, int]:
    row = await pool.fetchrow(queries()["callback_counts"])
    assert row is not None  # noqa: S101  (an aggregate always returns a row)
    return int(row["pending"]), int(row["failed"])
