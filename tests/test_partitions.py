"""Several daemons on one database: slots split between them, a lost slot's jobs are
dropped unsettled and resumed by the next owner, and a stop or a crash hands over."""

from __future__ import annotations

import uuid

import httpx
import pytest
import trio

from orchestrator.core import SLOTS, JobStatus
from orchestrator.daemon import Daemon, serve
from orchestrator.db import Database
from orchestrator.settings import SettingsError

from . import pg
from .e2e import settings_for, start_simulator, wait_status, wait_terminal
from .test_webhooks import SECRET, free_port, headers

LEASES = {"lease_ttl_s": 2.0, "lease_renew_s": 0.3, "max_slot_moves": SLOTS}


async def _slot_of(db_url: str, user_id: str) -> int:
    rows = await pg.fetch(db_url, "SELECT orchestrator.slot_of($1) AS s", user_id)
    return int(rows[0]["s"])


async def _until(predicate, timeout: float = 10.0) -> float:
    """Wait for `predicate()` to hold; returns how long it took."""
    started = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
    return trio.current_time() - started


async def _split(first: Daemon, second: Daemon) -> None:
    """Wait until two daemons hold every slot between them, each a fair share."""
    await _until(
        lambda: (
            len(first.keeper.slots) + len(second.keeper.slots) == SLOTS
            and min(len(first.keeper.slots), len(second.keeper.slots)) > SLOTS // 4
        )
    )


async def _user_owned_by(db_url: str, daemon: Daemon, prefix: str) -> str:
    for n in range(10_000):
        user = f"{prefix}-{n}"
        if daemon.keeper.owns(await _slot_of(db_url, user)):
            return user
    raise AssertionError("no user id lands in this daemon's slots")


async def _writers(db_url: str, job_id: uuid.UUID) -> dict[str, set[str]]:
    """Which members made the admission, prediction and finish writes of a job."""
    rows = await pg.fetch(
        db_url,
        "SELECT 'admit' AS write, h.owner FROM orchestrator.jobs j"
        " JOIN orchestrator.lease_history h ON (h.slot, h.epoch) = (j.slot, j.admit_epoch)"
        " WHERE j.id = $1"
        " UNION ALL SELECT 'finish', h.owner FROM orchestrator.jobs j"
        " JOIN orchestrator.lease_history h ON (h.slot, h.epoch) = (j.slot, j.finish_epoch)"
        " WHERE j.id = $1"
        " UNION ALL SELECT 'prediction', h.owner FROM orchestrator.predictions p"
        " JOIN orchestrator.jobs j ON j.id = p.job_id"
        " JOIN orchestrator.lease_history h ON (h.slot, h.epoch) = (j.slot, p.epoch)"
        " WHERE j.id = $1",
        job_id,
    )
    writers: dict[str, set[str]] = {}
    for row in rows:
        writers.setdefault(row["write"], set()).add(row["owner"])
    return writers


async def _start(nursery: trio.Nursery, settings, scope: trio.CancelScope) -> Daemon:
    async def run(*, task_status: trio.TaskStatus[Daemon]) -> None:
        with scope:
            assert settings.database_url is not None
            await serve(
                settings, settings.database_url, handle_signals=False, task_status=task_status
            )

    daemon: Daemon = await nursery.start(run)
    return daemon


async def test_two_daemons_split_the_slots_and_each_admits_only_its_own_users(
    nursery, db: Database, db_url: str
):
    provider = await start_simulator(nursery)
    settings = settings_for(db_url, provider, **LEASES)
    first = await _start(nursery, settings, trio.CancelScope())
    await _until(lambda: len(first.keeper.slots) == SLOTS)
    second = await _start(nursery, settings, trio.CancelScope())
    await _split(first, second)
    assert not set(first.keeper.slots) & set(second.keeper.slots)

    users = [f"split-{n}" for n in range(40)]
    for user in users:
        await db.grant(user, 5)
    ids = [await db.submit_job(user, f"hello {user}") for user in users]
    jobs = await wait_terminal(db, ids)
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    by_member = {first.keeper.member: 0, second.keeper.member: 0}
    for job in jobs:
        writers = await _writers(db_url, job.id)
        owner = first.keeper.member if first.keeper.owns(job.slot) else second.keeper.member
        assert writers == {"admit": {owner}, "prediction": {owner}, "finish": {owner}}
        by_member[owner] += 1
    assert all(count > 0 for count in by_member.values()), by_member
    assert (await db.audit()).ok


async def test_a_stolen_slot_drops_its_job_unsettled_and_the_next_owner_finishes_it(
    nursery, db: Database, db_url: str
):
    """Losing a lease drops the task at once: nothing refunded by the loser, resumed later."""
    provider = await start_simulator(nursery)
    settings = settings_for(db_url, provider, job_deadline_s=4.0, **LEASES)
    daemon = await _start(nursery, settings, trio.CancelScope())
    await db.grant("lee", 5, plan="pro")
    slot = await _slot_of(db_url, "lee")
    job_id = await db.submit_job("lee", "outlives its lease", params={"simulate": "hang"})
    await wait_status(db, job_id, "processing")
    await pg.script(
        db_url,
        "UPDATE orchestrator.partition_leases SET owner = 'thief', epoch = epoch + 1,"
        f" taken_at = now(), expires_at = clock_timestamp() + interval '1.5 s' WHERE slot = {slot};"
        " INSERT INTO orchestrator.lease_history (slot, epoch, owner, taken_at)"
        f" SELECT slot, epoch, owner, taken_at FROM orchestrator.partition_leases WHERE slot = {slot}",
    )
    await _until(lambda: daemon.registry.dropped == 1, timeout=3)
    assert not daemon.keeper.owns(slot)
    job = await db.job(job_id)
    assert job is not None
    assert job.status is JobStatus.PROCESSING  # dropped, not settled
    assert (daemon.metrics.registry.get_sample_value("orchestrator_leases_lost_total") or 0) >= 1

    (done,) = await wait_terminal(db, [job_id], timeout=10)
    assert done.status is JobStatus.TIMED_OUT
    assert daemon.keeper.owns(slot)
    ledger = await pg.fetch(
        db_url, "SELECT kind, amount FROM orchestrator.ledger WHERE job_id = $1 ORDER BY id", job_id
    )
    assert [(r["kind"], r["amount"]) for r in ledger] == [("debit", -1), ("refund", 1)]
    epochs = await pg.fetch(
        db_url,
        "SELECT j.admit_epoch, j.finish_epoch, p.epoch AS recorded FROM orchestrator.jobs j"
        " JOIN orchestrator.predictions p ON p.job_id = j.id WHERE j.id = $1",
        job_id,
    )
    (row,) = epochs
    assert (
        row["admit_epoch"] == row["recorded"] < row["finish_epoch"]
    )  # re-attached, not resubmitted
    assert (await db.audit()).ok


async def test_a_stop_hands_running_jobs_to_the_other_daemon_within_a_second(
    nursery, db: Database, db_url: str
):
    provider = await start_simulator(nursery, latency=(1.5, 2.0))
    settings = settings_for(db_url, provider, job_deadline_s=6.0, **LEASES)
    leaving = await _start(nursery, settings, trio.CancelScope())
    staying = await _start(nursery, settings, trio.CancelScope())
    await _split(leaving, staying)
    user = await _user_owned_by(db_url, leaving, "hand")
    await db.grant(user, 5, plan="pro")
    job_id = await db.submit_job(user, "handed over")
    await wait_status(db, job_id, "processing")

    leaving.stop()
    took = await _until(lambda: len(staying.keeper.slots) == SLOTS, timeout=3)
    assert took < 1.0
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    writers = await _writers(db_url, job_id)
    assert writers == {
        "admit": {leaving.keeper.member},
        "prediction": {leaving.keeper.member},
        "finish": {staying.keeper.member},
    }
    assert leaving.metrics.registry.get_sample_value("orchestrator_handover_seconds_count") == 1
    assert (await db.audit()).ok


async def test_a_crashed_daemons_slots_and_jobs_are_taken_over_after_the_lease_ttl(
    nursery, db: Database, db_url: str
):
    provider = await start_simulator(nursery, latency=(1.0, 1.5))
    settings = settings_for(db_url, provider, job_deadline_s=8.0, **LEASES)
    crash = trio.CancelScope()
    doomed = await _start(nursery, settings, crash)
    survivor = await _start(nursery, settings, trio.CancelScope())
    await _split(doomed, survivor)
    user = await _user_owned_by(db_url, doomed, "crash")
    await db.grant(user, 5, plan="pro")
    job_id = await db.submit_job(user, "outlives its daemon")
    await wait_status(db, job_id, "processing")

    crash.cancel()  # no leave: its leases stay until they expire
    took = await _until(lambda: len(survivor.keeper.slots) == SLOTS, timeout=6)
    assert took <= settings.lease_ttl_s + 2 * settings.lease_renew_s + 0.5
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    writers = await _writers(db_url, job_id)
    assert writers["finish"] == {survivor.keeper.member}
    assert writers["admit"] == {doomed.keeper.member}
    assert (await db.audit()).ok


async def test_a_webhook_that_reaches_another_daemon_wakes_the_owner_at_once(
    nursery, db: Database, db_url: str
):
    """Behind a load balancer a webhook may hit any daemon: it wakes the slot's owner."""
    provider = await start_simulator(
        nursery, latency=(0.2, 0.3), webhook_secret=SECRET, webhook_failure_rate=1.0
    )
    ports = [free_port(), free_port()]
    owner, other = [
        await _start(
            nursery,
            settings_for(
                db_url,
                provider,
                http_port=port,
                public_url=f"http://127.0.0.1:{port}",
                webhook_secret=SECRET,
                webhook_poll_s=30.0,
                job_deadline_s=20.0,
                **LEASES,
            ),
            trio.CancelScope(),
        )
        for port in ports
    ]
    await _split(owner, other)
    user = await _user_owned_by(db_url, owner, "hook")
    await db.grant(user, 5, plan="pro")
    job_id = await db.submit_job(user, "told by a stranger")
    await wait_status(db, job_id, "processing")
    (row,) = await pg.fetch(
        db_url, "SELECT prediction_id FROM orchestrator.predictions WHERE job_id = $1", job_id
    )
    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(5):
            while True:
                body = (
                    await client.get(f"{provider}/v1/predictions/{row['prediction_id']}")
                ).content
                if b'"succeeded"' in body:
                    break
                await trio.sleep(0.1)
        told = trio.current_time()
        reply = await client.post(
            f"{other.http_url}/webhooks/replicate?job_id={job_id}&idx=0",
            content=body,
            headers=headers(body),
        )
    assert reply.status_code == 200
    (job,) = await wait_terminal(db, [job_id], timeout=10)
    assert job.status is JobStatus.SUCCEEDED
    assert trio.current_time() - told < 5  # not the 30 s safety-net poll
    assert other.registry.actor(user) is None  # the stranger ran nothing
    assert (await _writers(db_url, job_id))["finish"] == {owner.keeper.member}


async def test_a_second_daemon_under_a_live_member_id_refuses_to_start(
    nursery, db: Database, db_url: str
):
    """A copied ORCHESTRATOR_MEMBER_ID would make two daemons steal each other's slots."""
    provider = await start_simulator(nursery)
    settings = settings_for(db_url, provider, member_id="host-a:1", **LEASES)
    first = await _start(nursery, settings, trio.CancelScope())
    assert first.keeper.member == "host-a:1"
    with pytest.raises(SettingsError, match="belongs to a daemon that is alive"):
        await serve(settings, db_url, handle_signals=False)
    assert len(first.keeper.slots) == SLOTS  # the first one kept everything


async def test_a_restart_under_the_id_of_a_crashed_daemon_takes_its_slots_back_at_once(
    nursery, db: Database, db_url: str
):
    """Its heartbeat stopped, so it is no twin: the new process re-takes the slots now."""
    provider = await start_simulator(nursery)
    settings = settings_for(
        db_url,
        provider,
        member_id="host-b:1",
        lease_ttl_s=30.0,
        lease_renew_s=0.3,
        max_slot_moves=SLOTS,
    )
    crash = trio.CancelScope()
    await _start(nursery, settings, crash)
    crash.cancel()  # its leases stay for 30 s
    await trio.sleep(1.0)  # past two renewals without a heartbeat
    again = await _start(nursery, settings, trio.CancelScope())
    took = await _until(lambda: len(again.keeper.slots) == SLOTS, timeout=5)
    assert took < 2
