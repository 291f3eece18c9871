"""Submissions and reads of jobs, on asyncio."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Final

import attrs

from orchestrator.core import Job

from . import _rows
from ._connector import Pool
from ._errors import error_name
from ._queries import queries

MAX_BULK_JOBS: Final = 1000  # `orchestrator.submit_jobs` refuses a longer array


@attrs.frozen
class SubmitResult:
    """One item of a bulk submission: its job's id, or why it was refused.

    `ordinal` counts items from 1, in the order given. `code` is the SQLSTATE
    the single `submit_job` raises for the same item (OR001, OR003, OR004) and
    `error` the name of the `DbError` it maps to (`UnknownUser`, ...).
    """

    ordinal: int
    job_id: uuid.UUID | None
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.job_id is not None

    @property
    def error(self) -> str | None:
        return None if self.code is None else error_name(self.code)


async def submit(
    pool: Pool,
    user_id: str,
    prompt: str,
    params: Mapping[str, object],
    num_outputs: int,
    idempotency_key: str | None,
    traceparent: str | None = None,
    callback_url: str | None = None,
) -> uuid.UUID:
    job_id: uuid.UUID = await pool.fetchval(
        queries()["submit_job"],
        user_id,
        prompt,
        dict(params),
        num_outputs,
        idempotency_key,
        traceparent,
        callback_url,
    )
    return job_id


async def submit_many(pool: Pool, items: Sequence[object]) -> list[SubmitResult]:
    rows = await pool.fetch(queries()["submit_jobs"], list(items))
    return [
        SubmitResult(
            ordinal=row["ordinal"], job_id=row["job_id"], code=row["code"], message=row["message"]
        )
        for row in rows
    ]


async def retry(pool: Pool, job_id: uuid.UUID, idempotency_key: str | None) -> uuid.UUID:
    new_id: uuid.UUID = await pool.fetchval(queries()["retry_job"], job_id, idempotency_key)
    return new_id


async def request_cancel(pool: Pool, job_id: uuid.UUID) -> bool:
    recorded: bool = await pool.fetchval(queries()["request_cancel"], job_id)
    return recorded


async def get(pool: Pool, job_id: uuid.UUID) -> Job | None:
    row = await pool.fetchrow(queries()["get_job"], job_id)
    return None if row is None else _rows.job(row)


async def listing(pool: Pool, user_id: str | None, limit: int) -> list[Job]:
    rows = await pool.fetch(queries()["list_jobs"], user_id, limit)
    return [_rows.job(row) for row in rows]


async def ping(pool: Pool) -> bool:
    return bool(await pool.fetchval(queries()["ping"]) == 1)


async def record_webhook_event(pool: Pool, provider: str, event_id: str) -> bool:
    """True the first time a delivery is seen, False for every repeat."""
    return await pool.fetchval(queries()["record_webhook_event"], provider, event_id) is not None


async def webhook_delivery(
    pool: Pool, job_id: uuid.UUID, provider: str, event_id: str, idx: int
) -> tuple[Job, bool] | None:
    row = await pool.fetchrow(queries()["webhook_delivery"], job_id, provider, event_id, idx)
    return None if row is None else (_rows.job(row), row["fresh"])


async def prune_webhook_events(pool: Pool, older_than_s: float, limit: int) -> int:
    return int(await pool.fetchval(queries()["prune_webhook_events"], older_than_s, limit))


async def stored_outputs(pool: Pool, job_id: uuid.UUID) -> list[str]:
    return [row["path"] for row in await pool.fetch(queries()["stored_outputs"], job_id)]


async def soft_delete_outputs(pool: Pool, job_id: uuid.UUID) -> int:
    return len(await pool.fetch(queries()["soft_delete_outputs"], job_id))
