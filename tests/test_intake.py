"""Intake under backlog: fair across users, never capped by a mailbox, bounded in memory."""

from __future__ import annotations

import httpx
import trio

from orchestrator.core import JobStatus, PredictionRequest
from orchestrator.db import Database
from orchestrator.providers import ReplicateProvider

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal


async def _bulk_queue(db_url: str, count: int, *, user: str | None = None) -> None:
    """Queue `count` jobs by plain INSERT, each of `user` or else of its own unknown user."""
    await pg.execute(
        db_url,
        "INSERT INTO orchestrator.jobs (user_id, prompt, created_at)"
        " SELECT coalesce($1, 'stranger-' || g), 'backlog ' || g,"
        "        clock_timestamp() - interval '5 minutes' + g * interval '1 millisecond'"
        "   FROM generate_series(1, $2) g",
        user,
        count,
    )


async def _count(db_url: str, where: str) -> int:
    rows = await pg.fetch(db_url, f"SELECT count(*) AS n FROM orchestrator.jobs WHERE {where}")
    return int(rows[0]["n"])


async def test_another_users_job_is_admitted_in_the_first_scan_behind_30000_queued_jobs(
    nursery, db: Database, db_url: str
):
    """A backlog of one user's jobs whose notifications were lost hides nobody else's job."""
    provider = await start_simulator(nursery)
    await db.grant("hog", 1, plan="pro")
    await _bulk_queue(db_url, 30_000, user="hog")
    await db.grant("minnow", 5, plan="pro")
    await pg.execute(
        db_url, "INSERT INTO orchestrator.jobs (user_id, prompt) VALUES ('minnow', 'mine')"
    )
    # One scan at start and the next one a minute later: only the first can find it.
    daemon = await start_daemon(nursery, settings_for(db.url, provider, scan_interval_s=60.0))
    with trio.fail_after(10):
        while await _count(db_url, "user_id = 'minnow' AND status = 'queued'"):
            await trio.sleep(0.05)
    assert daemon.intake.stats.notifications == 0  # the scan found it, not a NOTIFY
    (minnow,) = await db.jobs(user_id="minnow")
    assert minnow.status is not JobStatus.REJECTED
    assert (await db.audit()).ok


async def test_every_job_left_in_flight_is_resumed_when_there_are_more_than_a_mailbox_holds(
    nursery, db: Database, db_url: str
):
    """Twenty seats in flight and a mailbox of four: refused resumes are offered again."""
    provider = await start_simulator(nursery)
    seats = await pg.plan(db_url, max_inflight=20)
    await db.grant("wide", 20, plan=seats)
    left = []
    async with httpx.AsyncClient(trust_env=False) as client:
        sim = ReplicateProvider(client, base_url=provider, token="t", model="sim/image")
        for n in range(20):
            job_id = await db.submit_job("wide", f"left behind {n}")
            assert (await db.admit(job_id, deadline_s=30.0)).outcome == "admitted"
            prediction = await sim.submit(PredictionRequest(job_id, f"left behind {n}", {}, 1))
            assert await db.mark_processing(
                job_id, provider="replicate", prediction_id=prediction.id
            )
            left.append(job_id)
    daemon = await start_daemon(nursery, settings_for(db.url, provider, mailbox_size=4))
    jobs = await wait_terminal(db, left, timeout=15)
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    assert daemon.intake.stats.mailbox_full > 0  # the mailbox did refuse some at first
    account = await db.account("wide")
    assert account is not None
    assert account.balance == 0
    assert (await db.audit()).ok


async def test_submissions_a_full_mailbox_refused_are_admitted_by_the_next_scan(
    nursery, db: Database, db_url: str
):
    """A burst past the mailbox is not lost: the refused jobs stay queued and the scan retries."""
    provider = await start_simulator(nursery)
    seats = await pg.plan(db_url, max_inflight=20)
    await db.grant("bursty", 20, plan=seats)
    daemon = await start_daemon(nursery, settings_for(db.url, provider, mailbox_size=2))
    job_ids = [await db.submit_job("bursty", f"burst {n}") for n in range(20)]
    jobs = await wait_terminal(db, job_ids, timeout=15)
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    assert daemon.intake.stats.mailbox_full > 0
    account = await db.account("bursty")
    assert account is not None
    assert account.balance == 0
    assert (await db.audit()).ok


async def test_a_flood_of_distinct_unknown_users_leaves_no_actor_behind(
    nursery, db: Database, db_url: str
):
    """Two thousand users with no account: each job rejected, and no actor kept per stranger."""
    provider = await start_simulator(nursery)
    await _bulk_queue(db_url, 2_000)
    daemon = await start_daemon(nursery, settings_for(db.url, provider, actor_idle_s=60.0))
    with trio.fail_after(30):
        while await _count(db_url, "status = 'queued'"):
            await trio.sleep(0.1)
    rejected = await _count(db_url, "status = 'rejected' AND error_code = 'VALIDATION_ERROR'")
    assert rejected == 2_000
    assert daemon.registry.started >= 2_000
    with trio.fail_after(2):  # far less than the idle time an actor of a real user keeps
        while len(daemon.registry) > 0:
            await trio.sleep(0.05)
