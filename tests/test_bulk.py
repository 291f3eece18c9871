"""Bulk submission and manual retry, on real Postgres.

`orchestrator.submit_jobs(jsonb)` submits many jobs in one round trip with
`submit_job`'s own validation and idempotency, one result per item;
`orchestrator.retry_job_v1` submits a failed or timed-out job again as a new
job linked to the old one, once per key.
"""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest
import trio

from orchestrator.core import ErrorCode, JobStatus, StoredOutput
from orchestrator.db import (
    DAEMON_ROLE,
    MAX_BULK_JOBS,
    OPERATOR_ROLE,
    Database,
    IdempotencyConflict,
    InvalidRequest,
    UnknownJob,
    open_database,
    slot_channel,
)

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal


async def _books(url: str) -> list[tuple[object, ...]]:
    rows = await pg.fetch(
        url,
        "SELECT 'account', user_id, balance::text FROM orchestrator.accounts"
        " UNION ALL SELECT 'ledger', ref, amount::text FROM orchestrator.ledger"
        " ORDER BY 1, 2, 3",
    )
    return [tuple(row) for row in rows]


async def _job_count(url: str) -> int:
    rows = await pg.fetch(url, "SELECT count(*) AS n FROM orchestrator.jobs")
    return int(rows[0]["n"])


async def test_a_mixed_bulk_reports_each_item_in_order_and_charges_nothing(
    db: Database, db_url: str
):
    """Good items become queued jobs; each bad one gets submit_job's code; no credit moves."""
    await db.grant("alice", 5)
    await db.submit_job("alice", "a fox", idempotency_key="taken")
    books = await _books(db_url)
    items: list[object] = [
        {"user_id": "alice", "prompt": "a lake"},
        {"user_id": "nobody", "prompt": "a lake"},
        {"user_id": "alice", "prompt": ""},
        {"user_id": "alice", "prompt": "a hill", "num_outputs": 2, "params": {"seed": 3}},
        "not an object",
        {"user_id": "alice", "prompt": "a dog", "idempotency_key": "taken"},
        {"user_id": "alice", "prompt": "a cat", "num_outputs": 1.5},
        {"user_id": 7, "prompt": "a cat"},
        {"user_id": "alice", "prompt": "a fox", "idempotency_key": "taken"},
        {"user_id": "alice", "prompt": "x", "params": {"big": "y" * 20_000}},
    ]

    results = await db.submit_jobs(items)

    assert [r.ordinal for r in results] == list(range(1, len(items) + 1))
    assert [(r.code, r.error) for r in results] == [
        (None, None),
        ("OR001", "UnknownUser"),
        ("OR004", "InvalidRequest"),
        (None, None),
        ("OR004", "InvalidRequest"),
        ("OR003", "IdempotencyConflict"),
        ("OR004", "InvalidRequest"),
        ("OR004", "InvalidRequest"),
        (None, None),
        ("OR004", "InvalidRequest"),
    ]
    assert results[1].message is not None
    assert "unknown user nobody" in results[1].message
    assert results[2].message is not None
    assert "1 to 4000" in results[2].message
    assert results[5].message == "idempotency key taken was used for a different request"
    # The single submit says the same things about the same items.
    with pytest.raises(IdempotencyConflict, match="taken was used for a different request"):
        await db.submit_job("alice", "a dog", idempotency_key="taken")
    same = await db.submit_job("alice", "a fox", idempotency_key="taken")
    assert results[8].job_id == same

    lake, hill = results[0].job_id, results[3].job_id
    assert lake is not None
    assert hill is not None
    job = await db.job(hill)
    assert job is not None
    assert (job.status, job.num_outputs, dict(job.params), job.cost) == (
        JobStatus.QUEUED,
        2,
        {"seed": 3},
        None,
    )
    assert await _job_count(db_url) == 3  # the fox from before, the lake and the hill
    assert await _books(db_url) == books


async def test_a_repeated_bulk_returns_the_same_jobs_and_inserts_nothing(db: Database, db_url: str):
    """Keys hold across calls and within one call: a retried upload makes no second job."""
    await db.grant("bob", 5)
    items = [{"user_id": "bob", "prompt": f"p{n}", "idempotency_key": f"k{n}"} for n in range(20)]
    first = await db.submit_jobs(items)
    again = await db.submit_jobs(items)
    twice_in_one = await db.submit_jobs([items[0], items[0]])

    assert all(r.ok for r in first)
    assert [r.job_id for r in again] == [r.job_id for r in first]
    assert [r.job_id for r in twice_in_one] == [first[0].job_id] * 2
    assert len({r.job_id for r in first}) == 20
    assert await _job_count(db_url) == 20


async def _upload(
    db: Database, batch: list[dict[str, object]], answers: list[list[uuid.UUID | None]]
) -> None:
    results = await db.submit_jobs(batch)
    answers.append(sorted((r.job_id for r in results), key=str))


async def test_bulks_sharing_keys_in_opposite_orders_never_deadlock(db: Database, db_url: str):
    """Items are inserted in key order, so two uploads of one batch, one reversed, both land.

    Inserted in input order, each call would hold the rows the other waits for, and
    Postgres would abort one of them whole (SQLSTATE 40P01): every one of its items lost.
    """
    await db.grant("dan", 5)
    for round_ in range(8):
        items = [
            {"user_id": "dan", "prompt": f"p{n}", "idempotency_key": f"r{round_}-{n:03}"}
            for n in range(300)
        ]
        answers: list[list[uuid.UUID | None]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_upload, db, items, answers)
            nursery.start_soon(_upload, db, items[::-1], answers)
        assert answers[0] == answers[1]
        assert None not in answers[0]
    assert await _job_count(db_url) == 8 * 300


async def test_an_oversized_bulk_is_refused_whole(db: Database, db_url: str):
    """Past 1,000 items or 8 MiB nothing is submitted, and the error says how to fix it."""
    await db.grant("carol", 5)
    many = [{"user_id": "carol", "prompt": f"p{n}"} for n in range(MAX_BULK_JOBS + 1)]
    with pytest.raises(InvalidRequest, match=r"at most 1000 jobs, got 1001.*split"):
        await db.submit_jobs(many)
    heavy = [{"user_id": "carol", "prompt": "p", "params": {"x": "y" * 9_000}}] * 1000
    with pytest.raises(InvalidRequest, match="at most 8 MiB"):
        await db.submit_jobs(heavy)
    with pytest.raises(asyncpg.PostgresError, match="JSON array"):
        await pg.fetch(db_url, "SELECT * FROM orchestrator.submit_jobs('{}')")
    assert await _job_count(db_url) == 0
    full = await db.submit_jobs(many[:MAX_BULK_JOBS])
    assert sum(r.ok for r in full) == MAX_BULK_JOBS


async def test_the_submitter_may_bulk_submit_and_nothing_more(db: Database, db_url: str):
    """The new powers are scoped: submitters bulk-submit; retry is the operator's alone."""
    await db.grant("dan", 5)
    (row,) = await pg.fetch(
        db_url,
        "SELECT job_id, code FROM orchestrator.submit_jobs($1::jsonb)",
        json.dumps([{"user_id": "dan", "prompt": "a boat"}]),
        role="submitter",
    )
    assert row["code"] is None
    failed = row["job_id"]
    await db.admit(failed, deadline_s=60)
    await db.finish(failed, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR, message="x")
    before = await _books(db_url)
    jobs_before = await _job_count(db_url)
    for role in ("submitter", DAEMON_ROLE):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pg.fetch(db_url, "SELECT orchestrator.retry_job_v1($1, NULL)", failed, role=role)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pg.fetch(
                db_url, "SELECT orchestrator.check_submit_v1('dan', 'p', '{}', 1, NULL)", role=role
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pg.fetch(
                db_url,
                "INSERT INTO orchestrator.jobs (user_id, prompt, retry_of) VALUES ('dan', 'p', $1)",
                failed,
                role=role,
            )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pg.fetch(db_url, "SELECT * FROM orchestrator.submit_jobs('[]')", role=DAEMON_ROLE)
    assert await _books(db_url) == before
    assert await _job_count(db_url) == jobs_before


async def test_each_bulk_job_is_notified_on_its_slot(db: Database):
    """Like a single submit, every job of a bulk wakes the daemon that owns its slot."""
    users = [f"user{n}" for n in range(4)]
    for user in users:
        await db.grant(user, 1)
    (row,) = await pg.fetch(
        db.url,
        "SELECT array_agg(orchestrator.slot_of(u) ORDER BY u) AS slots FROM unnest($1::text[]) u",
        users,
    )
    slot = dict(zip(sorted(users), row["slots"], strict=True))
    async with db.listen(*(slot_channel(s) for s in set(slot.values()))) as listener:
        results = await db.submit_jobs([{"user_id": u, "prompt": "a bush"} for u in users])
        expected = {
            (slot_channel(slot[user]), str(result.job_id))
            for user, result in zip(users, results, strict=True)
        }
        seen: set[tuple[str, str]] = set()
        with trio.fail_after(5):
            async for note in listener.notifications:
                seen.add((note.channel, note.payload))
                if seen >= expected:
                    break
    assert all(result.ok for result in results)
    assert seen >= expected


async def test_bulk_submitted_jobs_run_and_settle(nursery, db: Database, db_url: str):
    """End to end: a bulk is admitted, charged once per job and settled by the daemon."""
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("erin", 10, plan="pro")
    results = await db.submit_jobs(
        [{"user_id": "erin", "prompt": f"a star {n}", "num_outputs": 1} for n in range(6)]
        + [{"user_id": "ghost", "prompt": "a star"}]
    )
    ids = [r.job_id for r in results if r.job_id is not None]
    assert len(ids) == 6
    jobs = await wait_terminal(db, ids)
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    account = await db.account("erin")
    assert account is not None
    assert account.balance == 4
    assert (await db.audit()).ok


async def _failed_job(db: Database, user: str, prompt: str, status: JobStatus) -> uuid.UUID:
    job_id = await db.submit_job(user, prompt, num_outputs=2)
    assert (await db.admit(job_id, deadline_s=60)).outcome == "admitted"
    code = ErrorCode.TIMEOUT if status is JobStatus.TIMED_OUT else ErrorCode.UPSTREAM_ERROR
    await db.finish(job_id, status, code=code, message="it broke")
    return job_id


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.TIMED_OUT])
async def test_a_retry_is_one_new_linked_job_however_often_it_is_asked(
    db: Database, db_url: str, status: JobStatus
):
    """A double click makes one retry; a deliberate second one needs another key."""
    await db.grant("fay", 10)
    old = await _failed_job(db, "fay", "a bridge", status)
    async with open_database(db_url, min_size=1, max_size=2, role=OPERATOR_ROLE) as operator:
        async with trio.open_nursery() as racing:
            made: list[uuid.UUID] = []

            async def retry() -> None:
                made.append(await operator.retry_job(old))

            for _ in range(5):
                racing.start_soon(retry)
        second = await operator.retry_job(old, idempotency_key="on purpose")
        assert await operator.retry_job(old, idempotency_key="on purpose") == second

    assert len(set(made)) == 1
    new = await db.job(made[0])
    assert new is not None
    assert (new.retry_of, new.user_id, new.prompt, new.num_outputs, new.status, new.cost) == (
        old,
        "fay",
        "a bridge",
        2,
        JobStatus.QUEUED,
        None,
    )
    assert new.idempotency_key == f"retry:{old}"
    assert second not in made
    again = await db.job(second)
    assert again is not None
    assert again.retry_of == old
    assert await _job_count(db_url) == 3


async def test_only_failed_or_timed_out_jobs_may_be_retried(db: Database, db_url: str):
    """A success, a job still queued or running, a cancel or a rejection is refused clearly."""
    await db.grant("gus", 10, plan="pro")
    succeeded = await db.submit_job("gus", "ok")
    await db.admit(succeeded, deadline_s=60)
    await db.finish(
        succeeded, JobStatus.SUCCEEDED, outputs=(StoredOutput(idx=0, url="https://x/a"),)
    )
    running = await db.submit_job("gus", "running")
    await db.admit(running, deadline_s=60)
    queued = await db.submit_job("gus", "waiting")
    canceled = await db.submit_job("gus", "stop")
    await db.request_cancel(canceled)
    await db.reject(canceled, ErrorCode.CANCELED, "cancelled")
    rejected = await db.submit_job("gus", "no")
    await db.reject(rejected, ErrorCode.RATE_LIMITED, "too soon")
    jobs_before = await _job_count(db_url)

    for job_id, status in [
        (succeeded, "succeeded"),
        (running, "starting"),
        (queued, "queued"),
        (canceled, "canceled"),
        (rejected, "rejected"),
    ]:
        with pytest.raises(
            InvalidRequest, match=f"is {status}: only a failed or timed-out job can be retried"
        ):
            await db.retry_job(job_id)
    with pytest.raises(UnknownJob):
        await db.retry_job(uuid.uuid4())
    assert await _job_count(db_url) == jobs_before


async def test_a_retry_key_used_for_something_else_is_a_conflict(db: Database):
    await db.grant("hal", 10)
    old = await _failed_job(db, "hal", "a tower", JobStatus.FAILED)
    await db.submit_job("hal", "a tower", num_outputs=2, idempotency_key="mine")
    with pytest.raises(IdempotencyConflict, match="mine was used for a different request"):
        await db.retry_job(old, idempotency_key="mine")
    other = await _failed_job(db, "hal", "a wall", JobStatus.FAILED)
    await db.retry_job(other, idempotency_key="shared")
    with pytest.raises(IdempotencyConflict):
        await db.retry_job(old, idempotency_key="shared")


async def test_a_retried_job_runs_and_is_charged_like_any_other(nursery, db: Database, db_url: str):
    """The old job's refund stands; the retry is debited at admission and settles."""
    await db.grant("ivy", 5, plan="pro")
    old = await _failed_job(db, "ivy", "a moon", JobStatus.TIMED_OUT)
    account = await db.account("ivy")
    assert account is not None
    assert account.balance == 5  # charged 2, refunded 2
    new = await db.retry_job(old)
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider))
    (job,) = await wait_terminal(db, [new])
    assert (job.status, job.cost, job.retry_of) == (JobStatus.SUCCEEDED, 2, old)
    account = await db.account("ivy")
    assert account is not None
    assert account.balance == 3
    assert await db.retry_job(old) == new  # still the same retry, not a third charge
    assert (await db.audit()).ok


async def test_a_database_from_before_bulk_and_retry_gains_them_by_migrating(
    db: Database, db_url: str
):
    """The migration is additive and idempotent on a database that predates retry_of."""
    await db.grant("jo", 5)
    kept = await db.submit_job("jo", "from before")
    await pg.script(
        db_url,
        "DROP FUNCTION orchestrator.submit_jobs(jsonb);"
        " DROP FUNCTION orchestrator.retry_job_v1(uuid, text);"
        " ALTER TABLE orchestrator.jobs DROP COLUMN retry_of;",
    )
    await db.migrate()
    await db.migrate()

    foreign_keys = await pg.fetch(
        db_url,
        "SELECT count(*) AS n FROM pg_constraint WHERE conrelid = 'orchestrator.jobs'::regclass"
        " AND contype = 'f' AND conkey = ARRAY[(SELECT attnum FROM pg_attribute"
        "  WHERE attrelid = 'orchestrator.jobs'::regclass AND attname = 'retry_of')]",
    )
    assert foreign_keys[0]["n"] == 1
    assert await db.schema_is_current()
    old = await db.job(kept)
    assert old is not None
    assert old.retry_of is None
    (result,) = await db.submit_jobs([{"user_id": "jo", "prompt": "after"}])
    assert result.ok
