"""`orchestrator audit`: clean on honest data, and every check able to fail.

Each corruption below goes around the schema's guards as a superuser would
(dropping a constraint, disabling triggers), because the audit exists for
exactly the states the schema should have made impossible.
"""

from __future__ import annotations

import uuid

import pytest

from orchestrator.core import ErrorCode, JobStatus, StoredOutput
from orchestrator.db import Database
from orchestrator.db._audit import CHECKS

from . import pg


async def _admitted_job(db: Database, user: str, outputs: int = 1) -> uuid.UUID:
    job_id = await db.submit_job(user, f"prompt {uuid.uuid4()}", num_outputs=outputs)
    admission = await db.admit(job_id, deadline_s=120)
    assert admission.outcome == "admitted"
    return job_id


async def test_the_audit_is_clean_after_every_honest_outcome(db: Database, db_url: str):
    """Success, partial success, failure, timeout, cancel and rejection all keep the books straight."""
    await db.grant("alice", 50, plan=await pg.plan(db_url, cost_per_output=2))
    one = (StoredOutput(idx=0, url="https://cdn.test/0.png"),)
    ok = await _admitted_job(db, "alice")
    await db.finish(ok, JobStatus.SUCCEEDED, outputs=one)
    partial = await _admitted_job(db, "alice", outputs=2)
    assert (await db.finish(partial, JobStatus.SUCCEEDED, outputs=one)).refunded == 2
    for status, code in [
        (JobStatus.FAILED, ErrorCode.UPSTREAM_ERROR),
        (JobStatus.TIMED_OUT, ErrorCode.TIMEOUT),
        (JobStatus.CANCELED, ErrorCode.CANCELED),
    ]:
        job_id = await _admitted_job(db, "alice")
        assert (await db.finish(job_id, status, code=code, message="x")).refunded == 2
    rejected = await db.submit_job("alice", "too much")
    assert await db.reject(rejected, ErrorCode.INSUFFICIENT_CREDITS, "no")
    report = await db.audit()
    assert report.ok, [c for c in report.checks if not c.ok]
    assert report.totals["jobs"] == 6
    account = await db.account("alice")
    assert account is not None
    assert account.balance == 50 - 2 - 2


async def _corrupt_balance(db: Database, url: str) -> None:
    await pg.script(url, "UPDATE orchestrator.accounts SET balance = 99 WHERE user_id = 'alice'")


async def _corrupt_negative(db: Database, url: str) -> None:
    await pg.script(
        url,
        "ALTER TABLE orchestrator.accounts DROP CONSTRAINT accounts_balance_check;"
        "UPDATE orchestrator.accounts SET balance = -1 WHERE user_id = 'alice'",
    )


async def _corrupt_double_debit(db: Database, url: str) -> None:
    job_id = await _admitted_job(db, "alice")
    await pg.script(
        url,
        "DROP INDEX orchestrator.ledger_one_debit_per_job;"
        "INSERT INTO orchestrator.ledger (user_id, job_id, kind, amount, ref)"
        f" VALUES ('alice', '{job_id}', 'debit', -2, 'again')",
    )


async def _corrupt_refund_without_debit(db: Database, url: str) -> None:
    job_id = await db.submit_job("alice", "never admitted")
    await pg.script(
        url,
        "ALTER TABLE orchestrator.ledger DISABLE TRIGGER ledger_check_refund;"
        "INSERT INTO orchestrator.ledger (user_id, job_id, kind, amount, ref)"
        f" VALUES ('alice', '{job_id}', 'refund', 5, 'free money')",
    )


async def _corrupt_charged_rejection(db: Database, url: str) -> None:
    job_id = await db.submit_job("alice", "rejected but charged")
    assert await db.debit("alice", job_id, 1) is not None
    await db.reject(job_id, ErrorCode.DUPLICATE, "dup")


async def _corrupt_free_ride(db: Database, url: str) -> None:
    job_id = await db.submit_job("alice", "ran for free")
    await pg.script(
        url,
        f"UPDATE orchestrator.jobs SET status = 'succeeded', cost = 3 WHERE id = '{job_id}'",
    )


async def _corrupt_lost_refund(db: Database, url: str) -> None:
    job_id = await _admitted_job(db, "alice")
    await pg.script(
        url,
        "UPDATE orchestrator.jobs SET status = 'failed', error_code = 'UPSTREAM_ERROR',"
        f" inflight_seat = NULL WHERE id = '{job_id}'",
    )


async def _corrupt_over_delivery(db: Database, url: str) -> None:
    job_id = await db.submit_job("alice", "one photo")
    await pg.script(
        url,
        "ALTER TABLE orchestrator.outputs DROP CONSTRAINT outputs_idx_in_range;"
        "INSERT INTO orchestrator.outputs (job_id, idx, num_outputs)"
        f" VALUES ('{job_id}', 0, 1), ('{job_id}', 1, 1)",
    )


CORRUPTIONS = {
    "audit_balance_matches_ledger": _corrupt_balance,
    "audit_no_negative_balance": _corrupt_negative,
    "audit_one_debit_and_refund_per_job": _corrupt_double_debit,
    "audit_refund_within_debit": _corrupt_refund_without_debit,
    "audit_rejected_jobs_uncharged": _corrupt_charged_rejection,
    "audit_admitted_jobs_debited": _corrupt_free_ride,
    "audit_failed_jobs_refunded": _corrupt_lost_refund,
    "audit_outputs_within_num_outputs": _corrupt_over_delivery,
}


def test_every_audit_check_has_a_corruption_that_trips_it():
    """No audit check goes untested."""
    assert set(CORRUPTIONS) == set(CHECKS)


@pytest.mark.parametrize("check", sorted(CORRUPTIONS))
async def test_each_audit_check_reports_its_violation(db: Database, db_url: str, check: str):
    """Every invariant the audit claims to check, it does check."""
    await db.grant("alice", 20)
    assert (await db.audit()).ok
    await CORRUPTIONS[check](db, db_url)
    report = await db.audit()
    assert not report.ok
    failing = {c.name: c for c in report.checks if not c.ok}
    assert check in failing
    assert failing[check].violations >= 1
    assert failing[check].samples
