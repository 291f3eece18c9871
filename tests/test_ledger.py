"""The ledger's money guarantees, on a real Postgres."""

from __future__ import annotations

import uuid

import pytest
import trio

from orchestrator.core import ErrorCode, JobStatus, StoredOutput
from orchestrator.db import Database, IntegrityViolation, InvalidRequest, UnknownUser

from . import pg

LEDGER_CHECKS = {
    "audit_balance_matches_ledger",
    "audit_no_negative_balance",
    "audit_one_debit_and_refund_per_job",
    "audit_refund_within_debit",
}


async def _assert_ledger_consistent(db: Database) -> None:
    """The ledger-level audit checks pass (job-level ones need the daemon's transitions)."""
    report = await db.audit()
    failing = [c.name for c in report.checks if c.name in LEDGER_CHECKS and not c.ok]
    assert failing == []
    assert {c.name for c in report.checks} >= LEDGER_CHECKS


async def _new_job(db: Database, user_id: str) -> uuid.UUID:
    return await db.submit_job(user_id, "a lighthouse at dusk")


async def _ledger_sum(db_url: str, user_id: str) -> int:
    rows = await pg.fetch(
        db_url,
        "SELECT coalesce(sum(amount), 0) AS s FROM orchestrator.ledger WHERE user_id = $1",
        user_id,
    )
    return int(rows[0]["s"])


async def test_500_concurrent_admissions_against_137_credits_admit_exactly_137(
    db: Database, db_url: str
):
    """The daemon's path (seat, debit, starting in one transaction) never overdraws either."""
    await db.grant("amy", 137, plan=await pg.plan(db_url, max_inflight=1000))
    job_ids = [await _new_job(db, "amy") for _ in range(500)]
    outcomes: list[str] = []

    async def admit(job_id: uuid.UUID) -> None:
        outcomes.append((await db.admit(job_id, deadline_s=60)).outcome)

    async with trio.open_nursery() as nursery:
        for job_id in job_ids:
            nursery.start_soon(admit, job_id)

    assert outcomes.count("admitted") == 137
    assert outcomes.count("insufficient_credits") == 363
    account = await db.account("amy")
    assert account is not None
    assert account.balance == 0
    assert (await db.audit()).ok


async def test_500_concurrent_debits_against_137_credits_succeed_exactly_137(
    db: Database, db_url: str
):
    """Concurrent debits never overdraw: exactly as many succeed as the balance covers."""
    await db.grant("alice", 137)
    job_ids = [await _new_job(db, "alice") for _ in range(500)]
    results: list[int | None] = []

    async def debit(job_id: uuid.UUID) -> None:
        results.append(await db.debit("alice", job_id, 1))

    async with trio.open_nursery() as nursery:
        for job_id in job_ids:
            nursery.start_soon(debit, job_id)

    succeeded = [balance for balance in results if balance is not None]
    assert len(succeeded) == 137
    assert min(succeeded) == 0
    account = await db.account("alice")
    assert account is not None
    assert account.balance == 0
    assert await _ledger_sum(db_url, "alice") == 0
    await _assert_ledger_consistent(db)


async def test_50_users_debiting_in_parallel_each_stop_at_their_own_balance(
    db: Database, db_url: str
):
    """Races of many users at once keep every user's balance equal to their ledger."""
    users = [f"user-{n}" for n in range(50)]
    for n, user in enumerate(users):
        await db.grant(user, 5 + n % 7)
    jobs = {user: [await _new_job(db, user) for _ in range(15)] for user in users}
    successes: dict[str, int] = dict.fromkeys(users, 0)

    async def debit(user: str, job_id: uuid.UUID) -> None:
        if await db.debit(user, job_id, 1) is not None:
            successes[user] += 1

    async with trio.open_nursery() as nursery:
        for user, job_ids in jobs.items():
            for job_id in job_ids:
                nursery.start_soon(debit, user, job_id)

    for n, user in enumerate(users):
        assert successes[user] == 5 + n % 7
        account = await db.account(user)
        assert account is not None
        assert account.balance == 0
        assert await _ledger_sum(db_url, user) == 0
    await _assert_ledger_consistent(db)


async def test_a_refused_debit_changes_nothing_and_says_so(db: Database, db_url: str):
    """Seed 001: a debit the balance cannot cover returns None, and no ledger row appears."""
    await db.grant("bob", 2)
    job_id = await _new_job(db, "bob")
    assert await db.debit("bob", job_id, 3) is None
    account = await db.account("bob")
    assert account is not None
    assert account.balance == 2
    rows = await pg.fetch(
        db_url, "SELECT count(*) AS n FROM orchestrator.ledger WHERE job_id = $1", job_id
    )
    assert rows[0]["n"] == 0


async def test_a_job_cannot_be_debited_twice(db: Database):
    """The unique debit per job holds even when the caller tries twice."""
    await db.grant("carol", 10)
    job_id = await _new_job(db, "carol")
    assert await db.debit("carol", job_id, 2) == 8
    with pytest.raises(IntegrityViolation):
        await db.debit("carol", job_id, 2)
    account = await db.account("carol")
    assert account is not None
    assert account.balance == 8


async def _priced(db: Database, db_url: str, user_id: str, amount: int, cost: int) -> None:
    """Grant `amount` on a plan whose one-output job costs `cost`."""
    await db.grant(user_id, amount, plan=await pg.plan(db_url, cost_per_output=cost))


async def _finished_job(db: Database, user_id: str, status: JobStatus) -> uuid.UUID:
    job_id = await _new_job(db, user_id)
    assert (await db.admit(job_id, deadline_s=60)).outcome == "admitted"
    code = None if status is JobStatus.SUCCEEDED else ErrorCode.UPSTREAM_ERROR
    outputs = (StoredOutput(idx=0, url="https://cdn.test/0.png"),) if code is None else ()
    await db.finish(job_id, status, code=code, message="done", outputs=outputs)
    return job_id


async def test_100_concurrent_refunds_of_one_job_write_one_refund(db: Database, db_url: str):
    """A refund retried from everywhere at once pays back once."""
    await _priced(db, db_url, "dave", 10, 4)
    job_id = await _finished_job(db, "dave", JobStatus.SUCCEEDED)
    refunds = []

    async def refund() -> None:
        refunds.append(await db.refund(job_id))

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(refund)

    paid = [r for r in refunds if r is not None]
    assert len(paid) == 1
    assert paid[0].amount == 4
    assert paid[0].balance == 10
    rows = await pg.fetch(
        db_url,
        "SELECT count(*) AS n FROM orchestrator.ledger WHERE job_id = $1 AND kind = 'refund'",
        job_id,
    )
    assert rows[0]["n"] == 1
    assert (await db.audit()).ok


async def test_100_concurrent_failures_of_one_job_refund_once(db: Database, db_url: str):
    """Finishing a failed job from many places at once refunds it exactly once."""
    await _priced(db, db_url, "dora", 10, 3)
    job_id = await _new_job(db, "dora")
    assert (await db.admit(job_id, deadline_s=60)).outcome == "admitted"
    finishes = []

    async def fail() -> None:
        finishes.append(
            await db.finish(job_id, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR, message="x")
        )

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(fail)

    assert sorted(f.refunded for f in finishes) == [0] * 99 + [3]
    account = await db.account("dora")
    assert account is not None
    assert account.balance == 10
    assert (await db.audit()).ok


async def test_an_in_flight_job_is_refunded_only_by_its_finish(db: Database, db_url: str):
    """An early partial refund could leave a later failure short, so it is refused."""
    await _priced(db, db_url, "dina", 10, 5)
    job_id = await _new_job(db, "dina")
    assert (await db.admit(job_id, deadline_s=60)).outcome == "admitted"
    assert await db.refund(job_id, 2) is None
    finish = await db.finish(job_id, JobStatus.TIMED_OUT, code=ErrorCode.TIMEOUT, message="late")
    assert finish.refunded == 5
    assert finish.balance == 10


async def test_a_job_never_debited_gets_no_refund(db: Database):
    """Refunding what was never taken is a no-op, not free credits."""
    await db.grant("erin", 1)
    job_id = await _new_job(db, "erin")
    assert await db.refund(job_id) is None
    account = await db.account("erin")
    assert account is not None
    assert account.balance == 1


async def test_a_partial_refund_is_allowed_but_never_above_the_debit(db: Database, db_url: str):
    """A goodwill refund of part of a job is fine; the database refuses more than was taken."""
    await _priced(db, db_url, "frank", 30, 30)
    job_id = await _finished_job(db, "frank", JobStatus.SUCCEEDED)
    with pytest.raises(IntegrityViolation, match="exceeds debit"):
        await db.refund(job_id, 31)
    refund = await db.refund(job_id, 6)
    assert refund is not None
    assert refund.balance == 6
    assert await db.refund(job_id, 6) is None
    assert (await db.audit()).ok


async def test_a_grant_with_a_repeated_reference_pays_once(db: Database):
    """Grants are idempotent by reference, so a retried top-up never pays twice."""
    assert await db.grant("gina", 5, ref="stripe:pi_123") == 5
    assert await db.grant("gina", 5, ref="stripe:pi_123") == 5
    assert await db.grant("gina", 5, ref="stripe:pi_124") == 10


async def test_grants_must_be_positive_and_plans_must_exist(db: Database):
    """Bad grants are refused with a clear error and change nothing."""
    with pytest.raises(InvalidRequest, match="positive"):
        await db.grant("hank", -5)
    with pytest.raises(InvalidRequest, match="unknown plan"):
        await db.grant("hank", 5, plan="platinum")
    assert await db.account("hank") is None


async def test_an_adjustment_is_a_ledger_row_and_cannot_overdraw(db: Database, db_url: str):
    """Manual corrections go through the ledger; a negative result is refused."""
    await db.grant("ivy", 3)
    assert await db.adjust("ivy", -2, note="chargeback") == 1
    with pytest.raises(IntegrityViolation):
        await db.adjust("ivy", -2, note="too much")
    with pytest.raises(UnknownUser):
        await db.adjust("nobody", 1, note="x")
    assert await _ledger_sum(db_url, "ivy") == 1


async def test_ledger_references_are_unique_per_job_and_kind(db: Database, db_url: str):
    """Seed 001: references derive from the job id, so rapid requests cannot collide."""
    await db.grant("jack", 100)
    job_ids = [await _new_job(db, "jack") for _ in range(50)]
    async with trio.open_nursery() as nursery:
        for job_id in job_ids:
            nursery.start_soon(db.debit, "jack", job_id, 1)
    rows = await pg.fetch(
        db_url,
        "SELECT count(DISTINCT ref) AS refs, count(*) AS n FROM orchestrator.ledger WHERE kind = 'debit'",
    )
    assert rows[0]["refs"] == rows[0]["n"] == 50


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE orchestrator.ledger SET amount = 1000",
        "DELETE FROM orchestrator.ledger",
        "TRUNCATE orchestrator.ledger CASCADE",
    ],
)
async def test_the_ledger_is_append_only_even_for_the_owner(
    db: Database, db_url: str, statement: str
):
    """No UPDATE, DELETE or TRUNCATE of ledger rows, whoever asks."""
    await db.grant("kate", 7)
    with pytest.raises(Exception, match="append-only"):
        await pg.execute(db_url, statement)
    account = await db.account("kate")
    assert account is not None
    assert account.balance == 7
    assert await _ledger_sum(db_url, "kate") == 7


async def test_two_racing_deliveries_of_one_output_index_keep_one_row(db: Database, db_url: str):
    """Finishing a job twice at once with different bytes for index 0 stores one output."""
    await db.grant("olga", 5)
    job_id = await _new_job(db, "olga")
    assert (await db.admit(job_id, deadline_s=60)).outcome == "admitted"

    async def deliver(url: str) -> None:
        await db.finish(job_id, JobStatus.SUCCEEDED, outputs=(StoredOutput(idx=0, url=url),))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deliver, "https://cdn.test/a.png")
        nursery.start_soon(deliver, "https://cdn.test/b.png")
    rows = await pg.fetch(
        db_url, "SELECT idx, url FROM orchestrator.outputs WHERE job_id = $1", job_id
    )
    assert len(rows) == 1
    assert rows[0]["idx"] == 0
    assert (await db.audit()).ok
