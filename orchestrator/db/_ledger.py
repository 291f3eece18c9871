"""Ledger operations: each one statement or one transaction, on asyncio.

Every balance change writes its ledger row in the same statement, so the
balance always equals the sum of the ledger, whatever fails or races.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import attrs

from orchestrator.core import Account

from . import _rows
from ._connector import Pool
from ._errors import InvalidRequest
from ._queries import queries


@attrs.frozen
class Refund:
    job_id: uuid.UUID
    amount: int
    balance: int


@attrs.frozen
class AccountSummary:
    user_id: str
    balance: int
    plan: str
    debited: int
    refunded: int
    jobs_by_status: Mapping[str, int]
    # Seconds the user's oldest queued job has waited (for capacity, a seat, a scan).
    oldest_queued_s: float | None = None


async def grant(pool: Pool, user_id: str, amount: int, ref: str | None, plan: str | None) -> int:
    q = queries()
    async with pool.acquire() as conn, conn.transaction():
        if plan is not None and not await conn.fetchval(q["plan_exists"], plan):
            raise InvalidRequest(f"unknown plan {plan!r}")
        balance: int = await conn.fetchval(q["grant_credits"], user_id, amount, ref)
        if plan is not None:
            await conn.execute(q["set_plan"], user_id, plan)
    return balance


async def adjust(pool: Pool, user_id: str, amount: int, note: str, ref: str | None) -> int | None:
    """Apply a manual correction; None when `ref` was already applied."""
    balance: int | None = await pool.fetchval(
        queries()["adjust_balance"], user_id, amount, ref or f"adjust:{uuid.uuid4()}", note
    )
    return balance


async def debit(pool: Pool, user_id: str, job_id: uuid.UUID, amount: int) -> int | None:
    """Take `amount` for a job; the new balance, or None when the balance is short."""
    if amount <= 0:
        raise InvalidRequest("a debit must be positive")
    balance: int | None = await pool.fetchval(queries()["debit_account"], user_id, job_id, amount)
    return balance


async def refund(pool: Pool, job_id: uuid.UUID, amount: int | None) -> Refund | None:
    """Refund a debited job once; None when it was never debited or already refunded."""
    row = await pool.fetchrow(queries()["refund_job"], job_id, amount)
    if row is None:
        return None
    return Refund(job_id=job_id, amount=row["amount"], balance=row["balance"])


async def account(pool: Pool, user_id: str) -> Account | None:
    row = await pool.fetchrow(queries()["get_account"], user_id)
    return None if row is None else _rows.account(row)


async def summaries(pool: Pool, user_id: str | None) -> list[AccountSummary]:
    rows = await pool.fetch(queries()["account_summaries"], user_id)
    return [
        AccountSummary(
            user_id=row["user_id"],
            balance=row["balance"],
            plan=row["plan"],
            debited=int(row["debited"]),
            refunded=int(row["refunded"]),
            jobs_by_status=dict(row["jobs_by_status"]),
            oldest_queued_s=row["oldest_queued_s"],
        )
        for row in rows
    ]
