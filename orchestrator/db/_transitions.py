"""The transitions that move money: admit, reject, finish. Each one transaction.

The SQL functions behind them (`admit_job_v3`, `finish_job_v4` in schema.sql)
keep the debit with the move to `starting`, and the refund with the terminal
status, so no crash can separate a charge from the state that justifies it.
Each write carries the daemon's `Fence` on the job's slot (or none, for tools
and tests) and is refused as a whole when that lease is no longer live.

"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
import attrs

from orchestrator.core import (
    Admission,
    AdmissionContext,
    ErrorCode,
    Fence,
    Finish,
    JobStatus,
    Plan,
    StoredOutput,
    Usage,
    clean_text,
)

from . import _rows
from ._connector import Pool
from ._queries import queries


async def admission_context(pool: Pool, job_id: uuid.UUID) -> AdmissionContext | None:
    row = await pool.fetchrow(queries()["admission_context"], job_id)
    if row is None:
        return None
    plan = None
    if row["plan"] is not None:
        plan = Plan(
            name=row["plan"],
            monthly_generations=row["monthly_generations"],
            max_inflight=row["max_inflight"],
            min_seconds_between=row["min_seconds_between"],
            cost_per_output=row["cost_per_output"],
            priority=row["priority"],
        )
    usage = Usage(
        balance=row["balance"],
        plan=plan,
        in_flight=row["in_flight"],
        month_generations=int(row["month_generations"]),
        last_admitted_at=row["last_admitted_at"],
        duplicate=row["duplicate"],
    )
    return AdmissionContext(job=_rows.job(row), usage=usage, now=row["now"])


def _fence(fence: Fence | None) -> tuple[str | None, int | None]:
    return (None, None) if fence is None else (fence.member, fence.epoch)


async def admit(
    pool: Pool,
    job_id: uuid.UUID,
    deadline_s: float,
    fence: Fence | None,
) -> Admission:
    try:
        row = await pool.fetchrow(queries()["admit_job"], job_id, deadline_s, *_fence(fence))
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "jobs_one_job_per_seat":
            return Admission("no_seat")  # another daemon took the seat first
        raise
    assert row is not None  # noqa: S101  (the function always returns one row)
    return Admission(
        row["outcome"], row["seat"], row["balance"], row["deadline_s"], cost=row["cost"]
    )


async def note_traceparent(
    pool: Pool, job_id: uuid.UUID, traceparent: str, fence: Fence | None
) -> bool:
    query = queries()["note_traceparent"]
    return bool(await pool.fetchval(query, job_id, traceparent, *_fence(fence)))


async def reject(
    pool: Pool, job_id: uuid.UUID, code: ErrorCode, message: str, fence: Fence | None
) -> bool:
    """Reject a queued job; False when it was no longer queued."""
    query = queries()["reject_job"]
    return bool(await pool.fetchval(query, job_id, code.value, message, *_fence(fence)))


async def mark_processing(
    pool: Pool,
    job_id: uuid.UUID,
    provider: str,
    prediction_id: str,
    idx: int,
    fence: Fence | None,
) -> bool:
    query = queries()["mark_processing"]
    return bool(await pool.fetchval(query, job_id, provider, prediction_id, idx, *_fence(fence)))


async def finish(
    pool: Pool,
    job_id: uuid.UUID,
    status: JobStatus,
    code: ErrorCode | None,
    message: str | None,
    outputs: tuple[StoredOutput, ...],
    fence: Fence | None,
) -> Finish:
    """Record outputs and end the job in one statement, so both or neither happen.

    The refund is the database's to compute, from the outputs it stored.
    """
    row = await pool.fetchrow(
        queries()["finish_job"],
        job_id,
        status.value,
        code.value if code else None,
        None if message is None else clean_text(message),
        [attrs.asdict(output) for output in outputs] if outputs else None,
        *_fence(fence),
    )
    assert row is not None  # noqa: S101  (the function always returns one row)
    return Finish(JobStatus(row["status"]), row["refunded"], row["balance"])


FinishItem = tuple[
    uuid.UUID, JobStatus, ErrorCode | None, str | None, tuple[StoredOutput, ...], Fence | None
]


async def finish_many(pool: Pool, items: Sequence[FinishItem]) -> list[Finish]:
    """`finish` for several jobs in one statement, hence one transaction: all or none."""
    payload = [
        {
            "id": str(job_id),
            "status": status.value,
            "code": code.value if code else None,
            "message": None if message is None else clean_text(message),
            "outputs": [attrs.asdict(output) for output in outputs] if outputs else None,
            "member": None if fence is None else fence.member,
            "epoch": None if fence is None else fence.epoch,
        }
        for job_id, status, code, message, outputs, fence in items
    ]
    rows = await pool.fetch(queries()["finish_jobs"], payload)
    return [Finish(JobStatus(row["status"]), row["refunded"], row["balance"]) for row in rows]
