"""Reads that tell intake, recovery and the sweeper which jobs need attention."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from orchestrator.core import InFlight, JobRef, JobStatus

from . import _rows
from ._connector import Pool
from ._queries import queries


def _ref(row: asyncpg.Record) -> JobRef:
    return JobRef(
        id=row["id"],
        user_id=row["user_id"],
        status=JobStatus(row["status"]),
        cancel_requested=row["cancel_requested"],
        slot=row["slot"],
        predictions=tuple(
            zip(
                row.get("prediction_providers") or (),
                row.get("prediction_ids") or (),
                strict=True,
            )
        ),
    )


async def route(pool: Pool, job_ids: Sequence[uuid.UUID]) -> list[JobRef]:
    return [_ref(row) for row in await pool.fetch(queries()["route_jobs"], list(job_ids))]


async def queued(pool: Pool, limit: int, per_user: int, slots: Sequence[int]) -> list[JobRef]:
    rows = await pool.fetch(queries()["queued_jobs"], limit, per_user, list(slots))
    return [_ref(row) for row in rows]


async def in_flight(pool: Pool, slots: Sequence[int]) -> list[JobRef]:
    return [_ref(row) for row in await pool.fetch(queries()["in_flight_jobs"], list(slots))]


async def in_flight_job(pool: Pool, job_id: uuid.UUID) -> InFlight | None:
    row = await pool.fetchrow(queries()["in_flight_job"], job_id)
    if row is None:
        return None
    predictions = {int(idx): pid for idx, pid in row["predictions"].items()}
    replaced = {int(idx): int(n) for idx, n in row["replaced"].items()}
    return InFlight(
        _rows.job(row),
        row["remaining_s"],
        predictions,
        replaced,
        provider=row["recorded_provider"],
    )


async def stuck(pool: Pool, older_than_s: float, limit: int, slots: Sequence[int]) -> list[JobRef]:
    rows = await pool.fetch(queries()["stuck_jobs"], older_than_s, limit, list(slots))
    return [_ref(row) for row in rows]


async def orphaned(pool: Pool, grace_s: float, limit: int, slots: Sequence[int]) -> list[JobRef]:
    rows = await pool.fetch(queries()["orphaned_jobs"], grace_s, limit, list(slots))
    return [_ref(row) for row in rows]
