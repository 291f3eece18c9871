"""Two daemons, one database: one leads intake, the other stands by and takes over."""

from __future__ import annotations

import trio

from orchestrator.daemon import Daemon, serve
from orchestrator.db import Database
from orchestrator.lifecycle import JobStatus

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_status, wait_terminal


async def test_a_standby_daemon_runs_nothing_until_the_leader_dies_then_recovers_its_jobs(
    nursery, db: Database, db_url: str
):
    """No job is run by two daemons; a dead leader's in-flight jobs are settled by the next one."""
    provider = await start_simulator(nursery)
    settings = settings_for(db_url, provider, job_deadline_s=3.0, scan_interval_s=0.2)
    crash = trio.CancelScope()

    async def run_leader(*, task_status: trio.TaskStatus[Daemon]) -> None:
        with crash:
            await serve(settings, db_url, handle_signals=False, task_status=task_status)

    leader: Daemon = await nursery.start(run_leader)
    standby = await start_daemon(nursery, settings)
    with trio.fail_after(5):
        while not leader.intake.stats.leader:
            await trio.sleep(0.02)
    assert not standby.intake.stats.leader

    await db.grant("lee", 5, plan="pro")
    hanging = await db.submit_job("lee", "outlives its daemon", params={"simulate": "hang"})
    await wait_status(db, hanging, "processing")
    await trio.sleep(0.5)
    assert len(standby.registry) == 0
    assert leader.registry.running_jobs == 1

    crash.cancel()  # the leader dies: its session, and with it the intake lock, ends
    with trio.fail_after(5):
        while not standby.intake.stats.leader:
            await trio.sleep(0.02)
    (job,) = await wait_terminal(db, [hanging], timeout=10)
    assert job.status is JobStatus.TIMED_OUT

    after = await db.submit_job("lee", "after the takeover")
    (done,) = await wait_terminal(db, [after])
    assert done.status is JobStatus.SUCCEEDED
    debits = await pg.fetch(
        db_url,
        "SELECT count(*) AS n FROM orchestrator.ledger WHERE kind = 'debit' AND user_id = 'lee'",
    )
    assert debits[0]["n"] == 2
    account = await db.account("lee")
    assert account is not None
    assert account.balance == 4
    assert (await db.audit()).ok


async def test_a_daemon_that_lost_leadership_is_fenced_off_from_admitting(db: Database):
    """Admissions carry the leader's epoch; an older epoch admits nothing, charges nothing."""
    await db.grant("fen", 5)
    job_id = await db.submit_job("fen", "fenced")
    old = await db.take_intake_epoch()
    new = await db.take_intake_epoch()
    assert new == old + 1
    stale = await db.admit(job_id, deadline_s=60, epoch=old)
    assert stale.outcome == "not_leader"
    job = await db.job(job_id)
    assert job is not None
    assert job.status is JobStatus.QUEUED
    account = await db.account("fen")
    assert account is not None
    assert account.balance == 5
    current = await db.admit(job_id, deadline_s=60, epoch=new)
    assert current.outcome == "admitted"
    assert (await db.audit()).ok
