"""Submission through Postgres: idempotency, validation and the NOTIFY wake-up."""

from __future__ import annotations

import uuid

import pytest
import trio

from orchestrator.core import ErrorCode, JobStatus
from orchestrator.db import (
    Database,
    IdempotencyConflict,
    InvalidRequest,
    UnknownJob,
    UnknownUser,
    open_database,
    slot_channel,
)

from . import pg


async def test_fifty_concurrent_submissions_with_one_key_make_one_job(db: Database, db_url: str):
    """The same idempotency key from 50 racing submitters returns one id and stores one row."""
    await db.grant("alice", 5)
    ids: list[uuid.UUID] = []

    async def submit() -> None:
        ids.append(await db.submit_job("alice", "a red fox", idempotency_key="click-1"))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(submit)

    assert len(ids) == 50
    assert len(set(ids)) == 1
    rows = await pg.fetch(
        db_url, "SELECT count(*) AS n FROM orchestrator.jobs WHERE user_id = 'alice'"
    )
    assert rows[0]["n"] == 1


async def test_a_key_reused_for_another_request_is_refused(db: Database):
    """An idempotency key names one request; reusing it for another is an error, not a wrong answer."""
    await db.grant("bob", 5)
    await db.submit_job("bob", "a cat", idempotency_key="k")
    with pytest.raises(IdempotencyConflict):
        await db.submit_job("bob", "a dog", idempotency_key="k")
    other_user = await db.grant("carol", 1)
    assert other_user == 1
    assert await db.submit_job("carol", "a dog", idempotency_key="k")


async def test_submitting_for_an_unknown_user_is_refused(db: Database):
    """submit_job tells the submitter at once instead of queueing a job no one pays for."""
    with pytest.raises(UnknownUser, match="unknown user"):
        await db.submit_job("ghost", "boo")


async def test_a_submitted_job_reads_back_queued(db: Database):
    """A submission is stored as given and waits, uncharged, for the daemon."""
    await db.grant("dave", 5)
    job_id = await db.submit_job("dave", "a boat", params={"seed": 7}, num_outputs=3)
    job = await db.job(job_id)
    assert job is not None
    assert job.status is JobStatus.QUEUED
    assert job.params == {"seed": 7}
    assert job.num_outputs == 3
    assert job.cost is None
    assert "a boat" not in repr(job)
    assert [j.id for j in await db.jobs(user_id="dave")] == [job_id]


async def test_a_listener_receives_the_notify_for_a_submitted_job(db: Database):
    """Every submission wakes its slot's owner: NOTIFY orchestrator_jobs_<slot> with the id."""
    await db.grant("erin", 5)
    async with db.listen(*(slot_channel(slot) for slot in range(1024))) as listener:
        job_id = await db.submit_job("erin", "a tree")
        with trio.fail_after(5):
            note = await listener.notifications.receive()
    job = await db.job(job_id)
    assert job is not None
    assert (note.channel, note.payload) == (slot_channel(job.slot), str(job_id))


async def test_cancel_is_recorded_for_live_jobs_only(db: Database, db_url: str):
    """A finished job cannot be cancelled; an unknown one is an error."""
    await db.grant("frank", 5)
    job_id = await db.submit_job("frank", "a hill")
    queued = await db.job(job_id)
    assert queued is not None
    async with db.listen(slot_channel(queued.slot)) as listener:
        assert await db.request_cancel(job_id)
        with trio.fail_after(5):
            assert (await listener.notifications.receive()).payload == str(job_id)
    job = await db.job(job_id)
    assert job is not None
    assert job.cancel_requested_at is not None
    await pg.execute(
        db_url,
        "UPDATE orchestrator.jobs SET status = 'rejected', error_code = 'CANCELED' WHERE id = $1",
        job_id,
    )
    assert not await db.request_cancel(job_id)
    with pytest.raises(UnknownJob):
        await db.request_cancel(uuid.uuid4())


async def test_bad_arguments_become_invalid_request(db: Database):
    """Database refusals of malformed input surface as one clear error type."""
    await db.grant("gina", 5)
    with pytest.raises(InvalidRequest):
        await db.submit_job("gina", "x", idempotency_key="")


async def _hold_connection(pool, seconds: float) -> None:
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_sleep($1)", seconds)


async def test_a_finish_never_waits_behind_admissions_holding_every_pooled_connection(
    db_url: str,
):
    """Settles have their own connections: a saturated main pool cannot delay them."""
    async with open_database(db_url, min_size=1, max_size=2, reserved_size=1) as db:
        await db.grant("nia", 5, plan="pro")
        job_id = await db.submit_job("nia", "a reef")
        assert (await db.admit(job_id, deadline_s=30)).outcome == "admitted"
        async with trio.open_nursery() as nursery:
            for _ in range(3):  # two hold the main pool, the third waits for one
                nursery.start_soon(db._connector.run, _hold_connection, 3.0)
            await trio.sleep(0.3)
            started = trio.current_time()
            finish = await db.finish(
                job_id, JobStatus.FAILED, code=ErrorCode.TIMEOUT, message="timed out"
            )
            assert trio.current_time() - started < 1.0
            assert finish.refunded == 1
            nursery.cancel_scope.cancel()
