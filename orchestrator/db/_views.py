"""Read-only views for the web UI: bounded reads, one snapshot per page.

Every read here is a SELECT with a LIMIT, inside a read-only transaction, so
a page can neither change anything nor read without bound.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

import asyncpg
import attrs

from orchestrator.core import MAX_OUTPUTS, ErrorCode, Job, JobStatus

from . import _rows
from ._connector import Pool
from ._events import CallbackRow, callback_row
from ._queries import queries

# A job has at most MAX_OUTPUTS predictions and outputs; strays and ledger rows are few.
_PER_JOB_LIMIT: Final = 4 * MAX_OUTPUTS


@attrs.frozen
class LedgerRow:
    id: int
    user_id: str
    job_id: uuid.UUID | None
    kind: str
    amount: int
    ref: str
    note: str | None
    created_at: datetime


@attrs.frozen
class PredictionRow:
    idx: int
    provider: str
    prediction_id: str
    epoch: int | None
    created_at: datetime


@attrs.frozen
class UpstreamRow:
    provider: str
    prediction_id: str
    idx: int
    found_by: str
    status: str | None
    cancel_sent_at: datetime | None
    checked_at: datetime | None
    created_at: datetime


@attrs.frozen
class OutputRow:
    idx: int
    url: str | None
    path: str | None
    size_bytes: int | None
    sha256: str | None
    content_type: str | None
    public_url: str | None
    created_at: datetime
    deleted_at: datetime | None


@attrs.frozen
class JobTimeline:
    """One job and everything recorded about it, read in one snapshot."""

    job: Job
    provider: str | None
    admit_epoch: int | None
    finish_epoch: int | None
    predictions: tuple[PredictionRow, ...]
    upstream: tuple[UpstreamRow, ...]
    outputs: tuple[OutputRow, ...]
    ledger: tuple[LedgerRow, ...]
    # The ending's place in the feed, and its callback when the job named one.
    event_seq: int | None = None
    callback: CallbackRow | None = None


def _ledger(row: asyncpg.Record) -> LedgerRow:
    return LedgerRow(**_fields(LedgerRow, row))


def _fields(cls: type[Any], row: asyncpg.Record) -> dict[str, Any]:
    return {field.name: row[field.name] for field in attrs.fields(cls)}


async def jobs(
    pool: Pool,
    user_id: str | None,
    status: JobStatus | None,
    code: ErrorCode | None,
    before: uuid.UUID | None,
    limit: int,
) -> list[Job]:
    rows = await pool.fetch(
        queries()["ui_jobs"],
        user_id,
        None if status is None else status.value,
        None if code is None else code.value,
        before,
        limit,
    )
    return [_rows.job(row) for row in rows]


async def timeline(pool: Pool, job_id: uuid.UUID) -> JobTimeline | None:
    q = queries()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(q["ui_job"], job_id)
        if row is None:
            return None
        predictions = await conn.fetch(q["ui_job_predictions"], job_id, _PER_JOB_LIMIT)
        upstream = await conn.fetch(q["ui_job_upstream"], job_id, _PER_JOB_LIMIT)
        outputs = await conn.fetch(q["ui_job_outputs"], job_id, _PER_JOB_LIMIT)
        ledger = await conn.fetch(q["ui_job_ledger"], job_id, _PER_JOB_LIMIT)
        event = await conn.fetchrow(q["ui_job_event"], job_id)
    callback = None if event is None or event["url"] is None else callback_row(event)
    return JobTimeline(
        job=_rows.job(row),
        provider=row["provider"],
        admit_epoch=row["admit_epoch"],
        finish_epoch=row["finish_epoch"],
        predictions=tuple(PredictionRow(**_fields(PredictionRow, r)) for r in predictions),
        upstream=tuple(UpstreamRow(**_fields(UpstreamRow, r)) for r in upstream),
        outputs=tuple(OutputRow(**_fields(OutputRow, r)) for r in outputs),
        ledger=tuple(_ledger(r) for r in ledger),
        event_seq=None if event is None else event["seq"],
        callback=callback,
    )


async def user_ledger(pool: Pool, user_id: str, limit: int) -> list[LedgerRow]:
    return [_ledger(row) for row in await pool.fetch(queries()["ui_user_ledger"], user_id, limit)]
