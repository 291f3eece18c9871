"""Capacity: what one daemon carries, decided by pure rules and proven under MockClock.

The end-to-end proof on real Postgres is the last test: a daemon limited to two jobs in
flight runs a dozen, never more than two at once, and refuses none.
"""

from __future__ import annotations

import time as wall_time
import uuid

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from actors import (
    Cancel,
    Capacity,
    InFlightGate,
    LoadMonitor,
    RateBudget,
    Registry,
    ServicePacer,
    Submit,
)
from actors._capacity import next_limit, reserve, sustainable_rate
from orchestrator.core import JobStatus, Plan
from orchestrator.db import Database
from orchestrator.db.testing import InMemoryStore

from .e2e import settings_for, start_daemon, start_simulator, wait_terminal
from .test_actors import CONFIG, FakeProvider


def test_reserve_lets_a_burst_through_then_one_token_per_interval():
    tat, waits = float("-inf"), []
    for _ in range(5):
        wait, tat = reserve(tat, 100.0, interval=0.5, burst=3)
        waits.append(wait)
    assert waits == [0.0, 0.0, 0.0, 0.5, 1.0]


def test_reserve_charges_a_multi_token_request_its_whole_cost():
    wait, tat = reserve(float("-inf"), 0.0, interval=1.0, burst=1, cost=4)
    assert (wait, tat) == (3.0, 4.0)
    wait, _ = reserve(tat, 0.0, interval=1.0, burst=1)
    assert wait == 4.0


def test_a_rate_budget_refuses_a_rate_it_cannot_keep():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive"):
            RateBudget(bad)


async def test_a_rate_budget_spreads_waiters_in_arrival_order(autojump_clock):
    budget = RateBudget(2.0, burst=2)
    done: list[tuple[int, float]] = []

    async def one(n: int) -> None:
        await budget.take()
        done.append((n, trio.current_time()))

    async with trio.open_nursery() as nursery:
        for n in range(6):
            nursery.start_soon(one, n)
            await trio.lowlevel.checkpoint()
    assert [n for n, _ in done] == list(range(6))
    assert [t for _, t in done] == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5, 2.0])


async def test_the_gate_admits_in_arrival_order_and_hands_each_freed_place_over(autojump_clock):
    gate = InFlightGate(2)
    order: list[int] = []

    async def job(n: int) -> None:
        await gate.enter()
        order.append(n)
        assert gate.in_flight <= 2
        await trio.sleep(10)
        gate.leave()

    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(job, n)
            await trio.sleep(0.01)
    assert order == [0, 1, 2, 3, 4]
    assert trio.current_time() == pytest.approx(30.04, abs=0.05)
    assert (gate.in_flight, gate.waiting) == (0, 0)


async def test_a_cancelled_waiter_takes_no_place_with_it(autojump_clock):
    gate = InFlightGate(1)
    await gate.enter()
    with trio.move_on_after(5):
        await gate.enter()
    assert (gate.in_flight, gate.waiting) == (1, 0)
    gate.leave()
    await gate.enter()
    assert gate.in_flight == 1


def test_recovery_enters_at_once_even_past_the_limit():
    gate = InFlightGate(1)
    gate.enter_now()
    gate.enter_now()
    assert gate.in_flight == 2
    gate.leave()
    gate.leave()
    assert gate.in_flight == 0


async def _capped_rig(nursery: trio.Nursery, limit: int, latency: float = 20.0):
    store = InMemoryStore(plans={"pro": Plan("pro", 10_000, 50, 0.0, 1)})
    provider = FakeProvider(latency=latency)
    capacity = Capacity(gate=InFlightGate(limit))
    registry = Registry(store=store, provider=provider, config=CONFIG, capacity=capacity)
    await nursery.start(registry.run)
    return store, registry, capacity


async def test_beyond_capacity_jobs_stay_queued_then_run_with_their_whole_deadline(
    autojump_clock, nursery
):
    """Waiting for a place is our queueing: it never eats into the provider's 120 s."""
    store, registry, capacity = await _capped_rig(nursery, limit=1, latency=100.0)
    store.grant("ann", 10, plan="pro")
    first = store.submit("ann", "one")
    second = store.submit("ann", "two")
    for job_id in (first, second):
        registry.deliver("ann", Submit(job_id))
    await trio.sleep(50)
    assert store.jobs[first].status.in_flight
    assert store.jobs[second].status is JobStatus.QUEUED
    assert capacity.gate.in_flight == 1
    with trio.fail_after(1000):
        while not store.jobs[second].status.terminal:
            await trio.sleep(1)
    # Had the wait for the first job's place counted, 100 s of provider time would not fit.
    assert store.jobs[second].status is JobStatus.SUCCEEDED
    assert store.balance("ann") == 8


async def test_freed_places_go_round_robin_over_users_not_oldest_first(autojump_clock, nursery):
    store, registry, _ = await _capped_rig(nursery, limit=1, latency=5.0)
    admitted: list[str] = []
    original = store.admit

    async def admit(job_id: uuid.UUID, **kw: object):
        admitted.append(store.jobs[job_id].user_id)
        return await original(job_id, **kw)  # type: ignore[arg-type]

    store.admit = admit  # type: ignore[method-assign]
    for user in ("bo", "cy", "di"):
        store.grant(user, 10, plan="pro")
    for job in [store.submit("bo", f"b{n}") for n in range(3)]:
        registry.deliver("bo", Submit(job))
    await trio.sleep(0.1)
    for user in ("cy", "di"):
        for job in [store.submit(user, f"{user}{n}") for n in range(2)]:
            registry.deliver(user, Submit(job))
    with trio.fail_after(1000):
        while len(admitted) < 7:
            await trio.sleep(1)
    # bo's backlog came first; from then on each round serves every user with work once.
    assert admitted[:2] == ["bo", "bo"]
    assert sorted(admitted[2:5]) == ["bo", "cy", "di"]
    assert sorted(admitted[5:]) == ["cy", "di"]


async def test_a_running_job_is_cancelled_at_once_while_its_user_waits_for_capacity(
    autojump_clock, nursery
):
    store, registry, _ = await _capped_rig(nursery, limit=1, latency=1000.0)
    store.grant("eli", 10, plan="pro")
    running, waiting = store.submit("eli", "one"), store.submit("eli", "two")
    for job_id in (running, waiting):
        registry.deliver("eli", Submit(job_id))
    await trio.sleep(5)
    registry.deliver("eli", Cancel(running))
    with trio.fail_after(60):
        while not store.jobs[running].status.terminal:
            await trio.sleep(0.5)
    assert store.jobs[running].status is JobStatus.CANCELED


async def test_a_daemon_capped_at_two_in_flight_runs_a_dozen_two_at_a_time(nursery, db: Database):
    """End to end: the cap holds on real Postgres, and nothing beyond it is refused."""
    provider = await start_simulator(nursery, latency=(0.3, 0.4))
    await db.grant("fay", 50, plan="pro")
    await db.grant("gus", 50, plan="pro")
    settings = attrs.evolve(settings_for(db.url, provider), max_in_flight=2)
    await start_daemon(nursery, settings)
    ids = [await db.submit_job(user, f"{user} {n}") for n in range(6) for user in ("fay", "gus")]
    peak = 0
    with trio.fail_after(30):
        while True:
            jobs = await db.jobs(limit=50)  # one statement: a consistent snapshot
            peak = max(peak, sum(1 for j in jobs if j.status.in_flight))
            if len(jobs) == len(ids) and all(j.status.terminal for j in jobs):
                break
            await trio.sleep(0.02)
    done = await wait_terminal(db, ids)
    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * len(ids)
    assert 1 <= peak <= 2
    assert (await db.audit()).ok


@pytest.mark.parametrize(
    ("limit", "in_flight", "lag", "expected"),
    [
        (1000, 800, 0.5, 720),  # behind: nine tenths of what runs now
        (1000, 1000, 0.2, 1000),  # near the target: hold
        (1000, 600, 0.01, 1050),  # time to spare: a twentieth more
        (9990, 100, 0.0, 10_000),  # never past the ceiling
        (20, 10, 5.0, 16),  # never below the floor
    ],
)
def test_the_limit_backs_off_when_the_loop_lags_and_grows_when_it_has_time(
    limit, in_flight, lag, expected
):
    assert next_limit(limit, in_flight, lag, target_s=0.25, ceiling=10_000) == expected


def test_the_floor_never_lifts_the_limit_past_a_small_ceiling():
    assert next_limit(2, 2, 5.0, target_s=0.25, ceiling=2) == 2


async def test_raising_the_limit_lets_waiters_in_and_lowering_it_drains(autojump_clock):
    gate = InFlightGate(1)
    await gate.enter()
    entered: list[int] = []

    async def waiter(n: int) -> None:
        await gate.enter()
        entered.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(waiter, n)
        await trio.sleep(1)
        assert entered == []
        gate.set_limit(3)
        await trio.sleep(1)
        assert len(entered) == 2
        gate.set_limit(1)
        gate.leave()
        gate.leave()
        await trio.sleep(1)
        assert len(entered) == 2  # one still in flight: at the new limit of one
        gate.leave()
        await trio.sleep(1)
    assert sorted(entered) == [0, 1, 2]


async def test_a_lagging_loop_stops_admissions_until_it_catches_up(autojump_clock, nursery):
    """A loop blocked for a second reads as lag; the limit falls to what runs, then recovers."""
    gate = InFlightGate(1000)
    for _ in range(100):
        gate.enter_now()
    monitor = LoadMonitor(gate, ceiling=1000, target_s=0.25, interval_s=0.25, start=64)
    assert gate.limit == 64  # slow start
    nursery.start_soon(monitor.run)
    await trio.sleep(60)
    assert gate.limit == 1000  # grown while the loop kept up
    # The loop is blocked for two seconds: virtual time moves under the sleeping monitor.
    autojump_clock.jump(2.0)
    await trio.testing.wait_all_tasks_blocked()
    assert monitor.lag_s > 0.25
    assert gate.limit == 90
    await trio.sleep(30)
    assert gate.limit > 90


async def test_a_daemon_whose_loop_stalls_lowers_its_limit_and_still_finishes_every_job(
    nursery, db: Database
):
    """End to end: the loop blocked for a second reads as lag, and admission backs off."""
    provider = await start_simulator(nursery, latency=(0.2, 0.3))
    await db.grant("hal", 50, plan="pro")
    settings = attrs.evolve(settings_for(db.url, provider), max_in_flight=500, lag_target_s=0.1)
    daemon = await start_daemon(nursery, settings)
    ids = [await db.submit_job("hal", f"hal {n}") for n in range(5)]
    await trio.sleep(0.5)
    wall_time.sleep(1.0)  # noqa: ASYNC251 -- a stall of the whole loop, as a CPU burst causes
    await trio.sleep(0.5)
    gate = daemon.registry.capacity.gate
    assert gate.limit is not None
    assert gate.limit < 500
    exported = {
        line.split()[0]: float(line.split()[1])
        for line in daemon.metrics.render().decode().splitlines()
        if line.startswith("orchestrator_capacity_limit ")
    }
    assert exported["orchestrator_capacity_limit"] == gate.limit
    done = await wait_terminal(db, ids)
    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 5


@pytest.mark.parametrize(
    ("cpu_s", "finished", "expected"),
    [
        (1.0, 100, 70.0),  # 10 ms a job: 70 a second at 70% of a core (explicit)
        (5.0, 10, None),  # too few jobs to say
        (0.0, 100, None),
        (100.0, 100, 5.0),  # never below the floor
    ],
)
def test_the_sustainable_rate_follows_the_cpu_each_finished_job_cost(cpu_s, finished, expected):
    assert sustainable_rate(cpu_s, finished, utilisation=0.7, floor=5.0) == expected


async def test_the_pacer_sets_the_admission_rate_from_what_a_window_cost(autojump_clock, nursery):
    budget = RateBudget(50.0)
    cpu = [0.0]
    done = [0]
    pacer = ServicePacer(budget, cpu_clock=lambda: cpu[0], finished=lambda: done[0], window_s=5.0)
    nursery.start_soon(pacer.run)
    await trio.sleep(1)
    cpu[0], done[0] = 2.0, 100  # 20 ms a job
    await trio.sleep(5)
    assert pacer.rate == pytest.approx(42.5)
    cpu[0], done[0] = 2.1, 105  # an idle window: too few jobs, the rate stays
    await trio.sleep(5)
    assert pacer.rate == pytest.approx(42.5)


async def test_an_admission_cancelled_at_the_gate_holds_no_place():
    """A place counted for a caller already cancelled would be lost for good (review F5)."""
    gate = InFlightGate(limit=1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await gate.enter("ann")
    assert scope.cancelled_caught
    assert gate.in_flight == 0
    with trio.fail_after(1):
        await gate.enter("bob")  # the one place is still there
    assert gate.in_flight == 1
