"""Provider money: the predictions reconciliation checks, and what it saw of them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from orchestrator.core import FoundBy, JobStatus, ListedClaim, UpstreamRef

from ._connector import Pool
from ._queries import queries


async def to_check(pool: Pool, window_s: float, limit: int) -> list[UpstreamRef]:
    rows = await pool.fetch(queries()["upstream_to_check"], window_s, limit)
    return [
        UpstreamRef(
            provider=row["provider"],
            prediction_id=row["prediction_id"],
            job_id=row["job_id"],
            idx=row["idx"],
            found_by=row["found_by"],
        )
        for row in rows
    ]


async def claims(
    pool: Pool, provider: str, listed: Sequence[tuple[str, uuid.UUID, int]]
) -> list[ListedClaim]:
    rows = await pool.fetch(
        queries()["listed_claims"],
        provider,
        [prediction_id for prediction_id, _, _ in listed],
        [job_id for _, job_id, _ in listed],
        [idx for _, _, idx in listed],
    )
    return [
        ListedClaim(
            prediction_id=row["prediction_id"],
            job_id=row["job_id"],
            idx=row["idx"],
            job_status=None if row["status"] is None else JobStatus(row["status"]),
            recorded=row["recorded"],
            noted=row["noted"],
        )
        for row in rows
    ]


async def note(
    pool: Pool,
    provider: str,
    prediction_id: str,
    job_id: uuid.UUID,
    idx: int,
    found_by: FoundBy,
    status: str | None,
    cancel_sent: bool,
) -> str | None:
    before: str | None = await pool.fetchval(
        queries()["note_upstream"],
        provider,
        prediction_id,
        job_id,
        idx,
        found_by,
        status,
        cancel_sent,
    )
    return before
