"""The figures `orchestrator top` shows: bounded reads, one read-only transaction."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import attrs

from orchestrator.core import JobStatus

from ._connector import Pool
from ._queries import queries


@attrs.frozen
class ProviderLoad:
    """In-flight jobs of one provider (None: no prediction recorded yet) and their predictions."""

    provider: str | None
    jobs: int
    predictions: int


@attrs.frozen
class SlowJob:
    """One in-flight job, by how long ago it was admitted; never its prompt."""

    job_id: uuid.UUID
    user_id: str
    status: str
    num_outputs: int
    slot: int
    provider: str | None
    age_s: float
    deadline_in_s: float | None
    predictions: int
    cancel_requested: bool


@attrs.frozen
class TopFigures:
    """Jobs now and per minute, refunds, in-flight load: one consistent read."""

    window_minutes: int
    # Jobs not ended yet (queued or in flight), by status.
    by_status: Mapping[str, int]
    # Jobs that ended in the last minute, and in the last `window_minutes`, by status.
    finished_last_minute: Mapping[str, int]
    finished_in_window: Mapping[str, int]
    refunds_last_minute: int
    refunded_credits_last_minute: int
    refunds_in_window: int
    refunded_credits_in_window: int
    in_flight_by_provider: tuple[ProviderLoad, ...]
    slowest: tuple[SlowJob, ...]


async def figures(pool: Pool, window_minutes: int, slowest: int, ledger_rows: int) -> TopFigures:
    q = queries()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        statuses = await conn.fetch(q["top_jobs_by_status"])
        finished = await conn.fetch(q["top_finished_by_status"], window_minutes)
        refunds = await conn.fetchrow(q["top_refunds"], window_minutes, ledger_rows)
        providers = await conn.fetch(q["top_in_flight_by_provider"])
        slow = await conn.fetch(q["top_slowest_in_flight"], slowest)
    assert refunds is not None  # noqa: S101  (an aggregate always returns a row)
    return TopFigures(
        window_minutes=window_minutes,
        by_status={
            **{status.value: 0 for status in JobStatus if not status.terminal},
            **{r["status"]: r["n"] for r in statuses},
        },
        finished_last_minute={r["status"]: r["last_minute"] for r in finished},
        finished_in_window={r["status"]: r["in_window"] for r in finished},
        refunds_last_minute=refunds["last_minute"],
        refunded_credits_last_minute=refunds["credits_last_minute"],
        refunds_in_window=refunds["in_window"],
        refunded_credits_in_window=refunds["credits_in_window"],
        in_flight_by_provider=tuple(
            ProviderLoad(r["provider"], r["jobs"], r["predictions"]) for r in providers
        ),
        slowest=tuple(
            SlowJob(
                job_id=r["id"],
                user_id=r["user_id"],
                status=r["status"],
                num_outputs=r["num_outputs"],
                slot=r["slot"],
                provider=r["provider"],
                age_s=r["age_s"],
                deadline_in_s=r["deadline_in_s"],
                predictions=r["predictions"],
                cancel_requested=r["cancel_requested"],
            )
            for r in slow
        ),
    )
