"""Group commit of finishes: one statement for the finishes that queue behind a batch."""

from __future__ import annotations

import uuid

import trio

from orchestrator.core import ErrorCode, JobStatus
from orchestrator.db import Database, UnknownJob
from orchestrator.db._group import GroupCommit


async def test_calls_arriving_during_a_batch_go_together_as_the_next(autojump_clock):
    batches: list[list[int]] = []

    async def batch(items):
        batches.append(list(items))
        await trio.sleep(1)
        return [item * 10 for item in items]

    async def single(item):
        batches.append([item])
        await trio.sleep(1)
        return item * 10

    group: GroupCommit[int, int] = GroupCommit(batch, single)
    results: dict[int, int] = {}

    async def call(n: int) -> None:
        results[n] = await group.submit(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 0)
        await trio.sleep(0.1)
        for n in range(1, 6):
            nursery.start_soon(call, n)
    assert results == {n: n * 10 for n in range(6)}
    assert [sorted(b) for b in batches] == [[0], [1, 2, 3, 4, 5]]
    assert trio.current_time() < 2.2  # the first alone at once, then the rest in one go


async def test_a_failing_batch_is_retried_item_by_item_so_one_bad_item_fails_alone(autojump_clock):
    async def batch(items):
        raise ValueError("one item spoils the statement")

    async def single(item):
        if item == 3:
            raise KeyError(item)
        return item

    group: GroupCommit[int, int] = GroupCommit(batch, single)
    outcomes: dict[int, object] = {}

    async def call(n: int) -> None:
        try:
            outcomes[n] = await group.submit(n)
        except KeyError as exc:
            outcomes[n] = exc

    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(call, n)
    assert {n: v for n, v in outcomes.items() if not isinstance(v, KeyError)} == {
        0: 0,
        1: 1,
        2: 2,
        4: 4,
    }
    assert isinstance(outcomes[3], KeyError)


async def test_a_cancelled_caller_never_strands_the_callers_queued_behind_it(autojump_clock):
    async def batch(items):
        await trio.sleep(1)
        return list(items)

    async def single(item):
        await trio.sleep(1)
        return item

    group: GroupCommit[int, int] = GroupCommit(batch, single)
    done: list[int] = []

    async def call(n: int) -> None:
        done.append(await group.submit(n))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 0)
        await trio.sleep(0.1)
        with trio.move_on_after(0.2):
            await group.submit(99)  # queued first, so it leads the next batch
        for n in range(1, 4):
            nursery.start_soon(call, n)
    assert sorted(done) == [0, 1, 2, 3]


async def test_concurrent_finishes_on_real_postgres_refund_each_job_exactly_once(
    db: Database,
):
    """Forty finishes at once: batched into few statements, each job settled once."""
    users = [f"gwen{n}" for n in range(4)]
    for user in users:
        await db.grant(user, 25, plan="pro")
    ids = [await db.submit_job(users[n % 4], f"g{n}") for n in range(40)]
    for job_id in ids:
        assert (await db.admit(job_id, deadline_s=60)).outcome == "admitted"
    results = {}

    async def finish(job_id) -> None:
        results[job_id] = await db.finish(
            job_id, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR, message="x"
        )

    async with trio.open_nursery() as nursery:
        for job_id in ids:
            nursery.start_soon(finish, job_id)
    assert [results[j].refunded for j in ids] == [1] * 40
    assert db._finishes.batches < 40
    for user in users:
        account = await db.account(user)
        assert account is not None
        assert account.balance == 25
    assert (await db.audit()).ok


async def test_an_unknown_job_in_a_batch_fails_only_its_own_finish(db: Database):
    await db.grant("hugo", 10, plan="pro")
    good = await db.submit_job("hugo", "h")
    assert (await db.admit(good, deadline_s=60)).outcome == "admitted"
    outcomes: dict[str, object] = {}

    async def finish(name: str, job_id) -> None:
        try:
            outcomes[name] = await db.finish(
                job_id, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR, message="x"
            )
        except UnknownJob as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish, "first", good)
        nursery.start_soon(finish, "bad", uuid.uuid4())
        nursery.start_soon(finish, "again", good)
    assert isinstance(outcomes["bad"], UnknownJob)
    refunds = sorted(o.refunded for k, o in outcomes.items() if k != "bad")  # type: ignore[union-attr]
    assert refunds == [0, 1]
