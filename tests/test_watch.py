"""Coalesced polling: one listing sweep serves every job waiting on the provider."""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio

from actors import ListingWatch, Registry, Submit
from actors._watch import page_budget
from orchestrator.core import JobStatus, Plan
from orchestrator.db import Database
from orchestrator.db.testing import InMemoryStore

from .e2e import settings_for, start_daemon, start_simulator, wait_terminal
from .test_actors import CONFIG, FakeProvider


@pytest.mark.parametrize(
    ("watched", "cap", "pages"),
    [(0, 50, 0), (1, 50, 3), (100, 50, 3), (101, 50, 5), (10_000, 50, 50)],
)
def test_a_sweep_reads_twice_the_pages_its_predictions_fill_within_its_cap(watched, cap, pages):
    assert page_budget(watched, cap=cap) == pages


async def _watched_rig(nursery: trio.Nursery, **provider: object):
    store = InMemoryStore(plans={"pro": Plan("pro", 100_000, 1000, 0.0, 1)})
    fake = FakeProvider(**provider)  # type: ignore[arg-type]
    watch = ListingWatch(fake, interval_s=2.0)
    config = attrs.evolve(CONFIG, webhook_poll_s=60.0)
    registry = Registry(store=store, provider=fake, config=config, watch=watch)
    await nursery.start(registry.run)
    return store, fake, registry, watch


async def test_three_hundred_jobs_end_through_a_few_listing_pages_and_no_polls(
    autojump_clock, nursery
):
    store, fake, registry, watch = await _watched_rig(nursery, latency=20.0, page_size=100)
    jobs = []
    for n in range(300):
        user = f"u{n % 30}"
        store.grant(user, 100, plan="pro")
        job_id = store.submit(user, f"p{n}")
        registry.deliver(user, Submit(job_id))
        jobs.append(job_id)
    with trio.fail_after(200):
        while not all(store.jobs[j].status.terminal for j in jobs):
            await trio.sleep(1)
    assert {store.jobs[j].status for j in jobs} == {JobStatus.SUCCEEDED}
    assert fake.gets == []
    # About ten sweeps of up to seven pages each, instead of thousands of polls.
    assert watch.pages <= 7 * watch.sweeps
    assert watch.sweeps <= 12
    assert len(watch) == 0


async def test_a_success_listed_without_its_output_is_read_once(autojump_clock, nursery):
    store, fake, registry, _ = await _watched_rig(nursery, latency=5.0, list_without_output=True)
    store.grant("ray", 10, plan="pro")
    job_id = store.submit("ray", "x")
    registry.deliver("ray", Submit(job_id))
    with trio.fail_after(100):
        while not store.jobs[job_id].status.terminal:
            await trio.sleep(0.5)
    assert store.jobs[job_id].status is JobStatus.SUCCEEDED
    assert len(fake.gets) == 1


async def test_without_webhooks_the_daemon_waits_through_the_listing_on_real_postgres(
    nursery, db: Database
):
    """End to end: fifty jobs, each seen ending in a listing page rather than by its own poll."""
    provider = await start_simulator(nursery, latency=(0.5, 0.8))
    settings = settings_for(db.url, provider, list_poll_s=0.2, webhook_poll_s=30.0)
    await start_daemon(nursery, settings)
    ids = []
    for n in range(50):
        await db.grant(f"w{n % 10}", 20, plan="pro")
        ids.append(await db.submit_job(f"w{n % 10}", f"lake {n}"))
    done = await wait_terminal(db, ids, timeout=30)
    assert {job.status for job in done} == {JobStatus.SUCCEEDED}
    async with httpx.AsyncClient(trust_env=False) as client:
        stats = (await client.get(f"{provider}/_sim/stats")).json()
    assert stats["gets"] == 0
    assert 0 < stats["lists"] < 50
    assert (await db.audit()).ok
