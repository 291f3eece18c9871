"""Each role may do its job and nothing more, and the daemon acts as its own role.

A statement refused here is refused by Postgres's privileges, not by our code:
every test connects as the role itself (`SET ROLE`, or a LOGIN that is a member)
and checks afterwards that the books did not move.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import trio

from orchestrator.core import ErrorCode, JobStatus, StoredOutput
from orchestrator.daemon import ensure_schema
from orchestrator.db import (
    DAEMON_ROLE,
    OPERATOR_ROLE,
    Database,
    PermissionDenied,
    RoleUnavailable,
    SchemaNotCurrent,
    open_database,
)

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal

_MONEY_WRITES = {
    "raise a balance": "UPDATE orchestrator.accounts SET balance = balance + 100",
    "open an account": "INSERT INTO orchestrator.accounts (user_id, balance) VALUES ('eve', 99)",
    "write the ledger": "INSERT INTO orchestrator.ledger (user_id, kind, amount, ref)"
    " VALUES ('vic', 'grant', 100, 'free')",
    "set a job's status": "UPDATE orchestrator.jobs SET status = 'succeeded'",
    "set a job's cost": "UPDATE orchestrator.jobs SET cost = 0",
    "store an output": "INSERT INTO orchestrator.outputs (job_id, idx, num_outputs, url)"
    " SELECT id, 0, num_outputs, 'x' FROM orchestrator.jobs",
    "delete jobs": "DELETE FROM orchestrator.jobs",
    "delete the ledger": "DELETE FROM orchestrator.ledger",
    "truncate the ledger": "TRUNCATE orchestrator.ledger",
    "disable the ledger's triggers": "ALTER TABLE orchestrator.ledger DISABLE TRIGGER ALL",
    "drop a trigger": "DROP TRIGGER IF EXISTS ledger_append_only ON orchestrator.ledger",
    "create a table": "CREATE TABLE orchestrator.stash (x int)",
    "grant credits": "SELECT orchestrator.grant_credits('vic', 100)",
    "adjust a balance": "SELECT orchestrator.adjust_balance_v1('vic', 100, 'r1', 'n')",
    "refund by hand": "SELECT * FROM orchestrator.refund_job_v1("
    "(SELECT id FROM orchestrator.jobs LIMIT 1), 100)",
}

_JOB_WRITES = {
    "set a job's status": _MONEY_WRITES["set a job's status"],
    "set a job's cost": _MONEY_WRITES["set a job's cost"],
    "raise a balance": _MONEY_WRITES["raise a balance"],
    "write the ledger": _MONEY_WRITES["write the ledger"],
    "delete the ledger": _MONEY_WRITES["delete the ledger"],
    "truncate the ledger": _MONEY_WRITES["truncate the ledger"],
    "disable the ledger's triggers": _MONEY_WRITES["disable the ledger's triggers"],
    "admit a job": "SELECT * FROM orchestrator.admit_job_v3("
    "(SELECT id FROM orchestrator.jobs LIMIT 1), 60, NULL, NULL)",
    "finish a job": "SELECT * FROM orchestrator.finish_job_v4("
    "(SELECT id FROM orchestrator.jobs LIMIT 1), 'failed', 'UPSTREAM_ERROR', 'x', NULL, NULL, NULL)",
    "take a partition slot": "SELECT * FROM orchestrator.lease_round_v1("
    "'intruder', 15, '{}', '{0}', '{}')",
    "read the ledger as a submitter would not": "SELECT * FROM orchestrator.ledger",
    "write upstream money directly": "INSERT INTO orchestrator.upstream_predictions"
    " (provider, prediction_id, job_id, idx, found_by)"
    " SELECT 'replicate', 'p', id, 0, 'listed' FROM orchestrator.jobs LIMIT 1",
}

_SUBMITTER_ONLY = {
    "note upstream money": "SELECT orchestrator.note_upstream_v1('replicate', 'p',"
    " (SELECT id FROM orchestrator.jobs LIMIT 1), 0, 'listed', 'succeeded', false)",
    "record a prediction": "SELECT orchestrator.record_prediction_v2("
    "(SELECT id FROM orchestrator.jobs LIMIT 1), 'replicate', 'p', 0, NULL, NULL)",
    "free every slot of a member": "SELECT orchestrator.leave_cluster_v1('anyone')",
}

_REFUSED = [
    *((DAEMON_ROLE, name, sql) for name, sql in _MONEY_WRITES.items()),
    *(
        (OPERATOR_ROLE, name, sql)
        for name, sql in _JOB_WRITES.items()
        if name != "read the ledger as a submitter would not"
    ),
    *(
        ("submitter", name, sql)
        for name, sql in {**_MONEY_WRITES, **_JOB_WRITES, **_SUBMITTER_ONLY}.items()
    ),
    (DAEMON_ROLE, "write upstream money directly", _JOB_WRITES["write upstream money directly"]),
]


async def _books(url: str) -> list[tuple[object, ...]]:
    rows = await pg.fetch(
        url,
        "SELECT 'account', user_id, balance::text FROM orchestrator.accounts"
        " UNION ALL SELECT 'ledger', ref, amount::text FROM orchestrator.ledger"
        " UNION ALL SELECT 'job', id::text, status || ':' || coalesce(cost::text, '-')"
        "   FROM orchestrator.jobs"
        " UNION ALL SELECT 'output', job_id::text, idx::text FROM orchestrator.outputs"
        " ORDER BY 1, 2, 3",
    )
    return [tuple(row) for row in rows]


@pytest.mark.parametrize(
    ("role", "statement"),
    [pytest.param(role, sql, id=f"{role}-{name}") for role, name, sql in _REFUSED],
)
async def test_each_role_is_refused_what_is_not_its_job(
    db: Database, db_url: str, role: str, statement: str
):
    await db.grant("vic", 10)
    finished = await db.submit_job("vic", "a lake")
    assert (await db.admit(finished, deadline_s=60)).outcome == "admitted"
    await db.finish(finished, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR, message="x")
    await db.submit_job("vic", "a hill")
    before = await _books(db_url)

    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pg.fetch(db_url, statement, role=role)

    assert await _books(db_url) == before


async def test_the_operator_role_grants_adjusts_refunds_and_audits(db: Database, db_url: str):
    await db.grant("vic", 10)
    job_id = await db.submit_job("vic", "a lake")
    await db.admit(job_id, deadline_s=60)
    await db.finish(
        job_id,
        JobStatus.SUCCEEDED,
        outputs=(StoredOutput(idx=0, url="https://example.test/a.png"),),
    )

    async with open_database(db_url, min_size=1, max_size=1, role=OPERATOR_ROLE) as operator:
        assert await operator.grant("vic", 5, ref="topup-1", plan="pro") == 14
        assert await operator.adjust("vic", -2, note="goodwill reversed", ref="adj-1") == 12
        assert await operator.adjust("vic", -2, note="goodwill reversed", ref="adj-1") is None
        refund = await operator.refund(job_id)
        assert refund is not None
        assert (refund.amount, refund.balance) == (1, 13)
        assert await operator.soft_delete_outputs(job_id) == 1
        cancel_me = await operator.submit_job("vic", "a hill")
        assert await operator.request_cancel(cancel_me)
        assert (await operator.audit()).ok
        (summary,) = await operator.account_summaries(user_id="vic")
        assert (summary.balance, summary.plan) == (13, "pro")
        with pytest.raises(PermissionDenied):
            await operator.debit("vic", uuid.uuid4(), 1)  # the old two-step path is closed


@pytest.fixture
async def daemon_login(db_url: str) -> AsyncIterator[str]:
    """A plain LOGIN role that is a member of orchestrator_daemon and nothing else."""
    name = f"daemon_{uuid.uuid4().hex[:10]}"
    await pg.execute(db_url, f"CREATE ROLE {name} LOGIN PASSWORD 'test' IN ROLE {DAEMON_ROLE}")
    try:
        yield pg.as_login(db_url, name, "test")
    finally:
        await pg.execute(
            db_url,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'",
        )
        await pg.execute(db_url, f"DROP ROLE IF EXISTS {name}")


async def test_the_daemon_runs_end_to_end_on_a_login_that_is_only_a_member_of_its_role(
    nursery: trio.Nursery, db: Database, daemon_login: str
):
    await db.grant("vic", 5)
    provider_url = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(daemon_login, provider_url))
    ok = await db.submit_job("vic", "a lake", num_outputs=2)
    failed = await db.submit_job("vic", "a hill", params={"simulate": "fail"})

    jobs = await wait_terminal(db, [ok, failed])

    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED, JobStatus.FAILED]
    account = await db.account("vic")
    assert account is not None
    assert account.balance == 5 - 2
    assert (await db.audit()).ok


async def test_a_superuser_daemon_still_acts_only_as_its_role(
    nursery: trio.Nursery, db: Database, db_url: str
):
    await db.grant("vic", 5)
    provider_url = await start_simulator(nursery)
    daemon = await start_daemon(nursery, settings_for(db_url, provider_url))
    job_id = await db.submit_job("vic", "a lake")
    await wait_terminal(db, [job_id])

    with pytest.raises(PermissionDenied):
        await daemon.db.debit("vic", job_id, 1)
    with pytest.raises(PermissionDenied):
        await daemon.db.grant("vic", 100)
    account = await db.account("vic")
    assert account is not None
    assert account.balance == 4


async def test_a_login_outside_the_role_gets_a_clear_error(db_url: str):
    name = f"stranger_{uuid.uuid4().hex[:10]}"
    await pg.execute(db_url, f"CREATE ROLE {name} LOGIN PASSWORD 'test'")
    url = pg.as_login(db_url, name, "test")
    try:
        with pytest.raises(RoleUnavailable, match=f"cannot act as {DAEMON_ROLE}"):
            async with open_database(url, min_size=1, max_size=1, role=DAEMON_ROLE):
                pass
    finally:
        await pg.execute(db_url, f"DROP ROLE IF EXISTS {name}")


async def test_a_daemon_login_refuses_to_start_on_a_stale_schema_it_cannot_migrate(
    db_url: str, daemon_login: str
):
    await pg.execute(
        db_url, "UPDATE orchestrator.meta SET value = 'older' WHERE key = 'schema_sha256'"
    )
    with pytest.raises(SchemaNotCurrent, match="orchestrator migrate"):
        await ensure_schema(daemon_login)
    await ensure_schema(db_url)  # the owner's login migrates it
    await ensure_schema(daemon_login)
