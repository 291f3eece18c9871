"""Partition leases on real Postgres: epochs bump on every take, expiry is the database's
to judge, and every write to a job is fenced by its slot's live lease."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
import trio

from orchestrator.core import ErrorCode, Fence, JobStatus
from orchestrator.db import Database, Fenced
from orchestrator.leases import LeaseKeeper

from . import pg

INFO = {"test": True}


async def _slot_of(db_url: str, user_id: str) -> int:
    rows = await pg.fetch(db_url, "SELECT orchestrator.slot_of($1) AS s", user_id)
    return int(rows[0]["s"])


async def _take(db: Database, member: str, slot: int, *, ttl_s: float = 15.0) -> Fence:
    held = await db.lease_round(member, ttl_s=ttl_s, keep=[], take=[slot], info=INFO)
    (row,) = [row for row in held if row.slot == slot]
    assert row.taken
    return Fence(member, row.epoch)


async def test_taking_a_slot_bumps_its_epoch_and_records_who_held_it(db: Database, db_url: str):
    first = await _take(db, "m1", 5)
    assert await db.leave_cluster("m1") == 1
    second = await _take(db, "m2", 5)
    assert second.epoch == first.epoch + 1
    history = await pg.fetch(
        db_url, "SELECT epoch, owner FROM orchestrator.lease_history WHERE slot = 5 ORDER BY epoch"
    )
    assert [(r["epoch"], r["owner"]) for r in history] == [
        (first.epoch, "m1"),
        (second.epoch, "m2"),
    ]


async def test_a_slot_held_by_a_live_member_is_not_taken(db: Database):
    await _take(db, "m1", 9)
    held = await db.lease_round("m2", ttl_s=15, keep=[], take=[9], info=INFO)
    assert held == []
    members, unowned = await db.live_members()
    assert members == ["m1", "m2"]
    assert unowned == 1023


async def test_expiry_is_judged_on_the_database_clock(db: Database):
    old = await _take(db, "m1", 3, ttl_s=0.3)
    assert await db.lease_round("m2", ttl_s=15, keep=[], take=[3], info=INFO) == []
    await trio.sleep(0.4)
    (row,) = await db.lease_round("m2", ttl_s=15, keep=[], take=[3], info=INFO)
    assert (row.slot, row.epoch, row.taken) == (3, old.epoch + 1, True)
    # The old owner's next round finds it gone, and gets no lease it did not take anew.
    assert await db.lease_round("m1", ttl_s=15, keep=[3], take=[], info=INFO) == []


async def test_one_round_renews_what_is_kept_and_gives_up_the_rest(db: Database):
    held = await db.lease_round("m1", ttl_s=15, keep=[], take=[1, 2, 3], info=INFO)
    assert [row.slot for row in held] == [1, 2, 3]
    again = await db.lease_round("m1", ttl_s=15, keep=[1, 2], take=[], info=INFO)
    assert [(row.slot, row.taken) for row in again] == [(1, False), (2, False)]
    assert all(10 < row.valid_s <= 15 for row in again)
    (row,) = await db.lease_round("m2", ttl_s=15, keep=[], take=[3], info=INFO)
    assert row.slot == 3


async def test_a_write_under_a_stale_epoch_is_refused_whole(db: Database, db_url: str):
    """Admit, record and finish each check the slot's owner and epoch in their transaction."""
    await db.grant("fen", 5, plan="pro")
    slot = await _slot_of(db_url, "fen")
    old = await _take(db, "m1", slot, ttl_s=0.3)
    job_id = await db.submit_job("fen", "fenced", num_outputs=2)
    queued = await db.submit_job("fen", "still queued")
    admitted = await db.admit(job_id, deadline_s=60, fence=old)
    assert admitted.outcome == "admitted"
    assert await db.mark_processing(job_id, provider="replicate", prediction_id="p0", fence=old)

    await trio.sleep(0.4)  # m1's lease expires; m2 takes the slot under a new epoch
    new = await _take(db, "m2", slot)
    with pytest.raises(Fenced):
        await db.mark_processing(job_id, provider="replicate", prediction_id="p1", idx=1, fence=old)
    with pytest.raises(Fenced):
        await db.finish(job_id, JobStatus.FAILED, code=None, message="late", fence=old)
    with pytest.raises(Fenced):
        await db.admit(queued, deadline_s=60, fence=old)
    with pytest.raises(Fenced):
        await db.reject(queued, ErrorCode.DUPLICATE, "stale", fence=old)

    job = await db.job(job_id)
    assert job is not None
    assert job.status is JobStatus.PROCESSING
    account = await db.account("fen")
    assert account is not None
    assert account.balance == 3  # debited once, refunded by nobody yet

    assert await db.mark_processing(
        job_id, provider="replicate", prediction_id="p1", idx=1, fence=new
    )
    done = await db.finish(
        job_id, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR, message="new owner", fence=new
    )
    assert done.refunded == 2
    rows = await pg.fetch(
        db_url,
        "SELECT j.admit_epoch, j.finish_epoch,"
        " array_agg(p.epoch ORDER BY p.idx) AS predictions"
        " FROM orchestrator.jobs j JOIN orchestrator.predictions p ON p.job_id = j.id"
        " WHERE j.id = $1 GROUP BY j.id",
        job_id,
    )
    assert (rows[0]["admit_epoch"], rows[0]["finish_epoch"]) == (old.epoch, new.epoch)
    assert list(rows[0]["predictions"]) == [old.epoch, new.epoch]
    assert (await db.audit()).ok


async def test_jobs_carry_their_users_slot_and_are_notified_on_its_channel(
    db: Database, db_url: str
):
    await db.grant("ann", 5)
    slot = await _slot_of(db_url, "ann")
    async with db.listen(f"orchestrator_jobs_{slot}") as listener:
        job_id = await db.submit_job("ann", "hello")
        with trio.fail_after(5):
            note = await listener.notifications.receive()
    assert (note.channel, note.payload) == (f"orchestrator_jobs_{slot}", str(job_id))
    job = await db.job(job_id)
    assert job is not None
    assert job.slot == slot
    (ref,) = await db.queued(slots=[slot])
    assert ref.id == job_id
    assert await db.queued(slots=[(slot + 1) % 1024]) == []


def test_orchestrator_cluster_shows_members_their_slots_and_the_unowned(db_url: str):
    """`orchestrator cluster` reads members and leases; JSON lines for scripts, a table else."""
    from .test_cli import run  # noqa: PLC0415

    pg.fetch_sync(
        db_url,
        "SELECT * FROM orchestrator.lease_round_v1('host-a:1:aa', 15, '{}', '{0,1,2,3,9}',"
        ' \'{"http_url": "http://127.0.0.1:9"}\')',
    )
    pg.fetch_sync(
        db_url, "SELECT * FROM orchestrator.lease_round_v1('host-b:2:bb', 15, '{}', '{4}', '{}')"
    )
    pg.fetch_sync(db_url, "SELECT orchestrator.grant_credits('ann', 5)")
    pg.fetch_sync(
        db_url,
        "INSERT INTO orchestrator.jobs (user_id, prompt) VALUES ('ann', 'waiting')",
    )
    lines = [json.loads(line) for line in run(db_url, "cluster", "--json").stdout.splitlines()]
    by_member = {line["member"]: line for line in lines}
    assert by_member["host-a:1:aa"]["slots"] == [0, 1, 2, 3, 9]
    assert by_member["host-a:1:aa"]["alive"] is True
    assert by_member["host-a:1:aa"]["info"] == {"http_url": "http://127.0.0.1:9"}
    assert by_member["host-b:2:bb"]["slots"] == [4]
    assert by_member[None]["slots_unowned"] == 1024 - 6
    queued = sum(line.get("queued", 0) for line in lines)
    assert queued == 1
    table = run(db_url, "cluster").stdout
    assert "host-a:1:aa" in table
    assert "0-3, 9" in table
    assert "(nobody)" in table


async def test_a_keeper_that_cannot_renew_drops_its_slots_before_they_can_expire(
    db: Database, db_url: str
):
    """Trust ends at renewal start + TTL - margin, whatever the rounds do; then a new epoch."""
    lost: list[frozenset[int]] = []
    keeper = LeaseKeeper(
        db, member="k1", ttl_s=2.0, renew_s=0.4, max_moves=1024, on_lost=lost.append
    )

    async def hold_the_leases(seconds: float) -> None:
        async def hold() -> None:
            conn = await asyncpg.connect(db_url)
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE orchestrator.partition_leases")
                    await asyncio.sleep(seconds)
            finally:
                await conn.close()

        await trio.to_thread.run_sync(lambda: asyncio.run(hold()))

    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        assert len(keeper.slots) == 1024
        before = keeper.fence(7)
        assert before is not None
        nursery.start_soon(hold_the_leases, 3.0)
        with trio.fail_after(2.5):  # 2 s TTL - 0.4 s margin, from the last renewal's start
            while keeper.owns(7):
                await trio.sleep(0.02)
        with trio.fail_after(1):  # `owns` turns False at once; `on_lost` runs on the loop next
            while not lost:
                await trio.sleep(0.01)
        assert 7 in lost[0]
        rows = await pg.fetch(
            db_url, "SELECT epoch FROM orchestrator.partition_leases WHERE slot = 7"
        )
        assert rows[0]["epoch"] == before.epoch  # nobody could take it meanwhile
        with trio.fail_after(6):
            while not keeper.owns(7):
                await trio.sleep(0.05)
        after = keeper.fence(7)
        assert after is not None
        assert after.epoch == before.epoch + 1  # taken anew, never the old epoch again
        nursery.cancel_scope.cancel()
