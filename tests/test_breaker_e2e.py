"""Failover end to end: real Postgres, two simulators over loopback, the real daemon.

One simulator speaks Replicate's API and answers every request with a 5xx; the other
speaks KIE's and is healthy. The first jobs meet the outage (failed, refunded whole) and
open the Replicate breaker; after that, new jobs run on KIE, or, with no fallback,
wait `queued` and uncharged until the failing simulator is healed.
"""

from __future__ import annotations

import uuid

import trio

from orchestrator.core import BreakerState, JobStatus
from orchestrator.daemon import Daemon
from orchestrator.db import Database
from orchestrator.simulator import SimulatorConfig, serve_simulator

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal
from .test_webhooks import SECRET, free_port

THRESHOLD = 3


async def _charged(db_url: str, job_ids: list[uuid.UUID]) -> int:
    rows = await pg.fetch(
        db_url, "SELECT count(*) AS n FROM orchestrator.ledger WHERE job_id = ANY($1)", job_ids
    )
    return int(rows[0]["n"])


async def _recorded_provider(db_url: str, job_id: uuid.UUID) -> str:
    rows = await pg.fetch(db_url, "SELECT provider FROM orchestrator.jobs WHERE id = $1", job_id)
    return str(rows[0]["provider"])


def _state(daemon: Daemon, provider: str) -> float:
    return daemon.metrics.sample("orchestrator_provider_breaker_state", {"provider": provider})


async def _trip(db: Database, daemon: Daemon, user: str) -> list[uuid.UUID]:
    """Submit one job at a time until the Replicate breaker opens; return the jobs spent."""
    spent = []
    with trio.fail_after(30):
        while _state(daemon, "replicate") != BreakerState.OPEN:
            job_id = await db.submit_job(user, f"meets the outage {len(spent)}")
            spent.append(job_id)
            await wait_terminal(db, [job_id])
    # The sweeper's reconciliation reads the listing through the breaker too.
    assert 1 <= len(spent) <= THRESHOLD
    return spent


async def _start_replicate_sim(
    nursery: trio.Nursery, port: int, **config: object
) -> trio.CancelScope:
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[str]) -> None:
        with scope:
            sim = SimulatorConfig(**{"latency": (0.05, 0.1), "seed": 7, **config})  # type: ignore[arg-type]
            await serve_simulator(sim, port=port, task_status=task_status)

    await nursery.start(run)
    return scope


async def test_jobs_fail_over_to_the_healthy_provider_and_succeed(nursery, db: Database):
    failing = await start_simulator(nursery, server_error_rate=1.0)
    healthy = await start_simulator(nursery, api="kie")
    daemon = await start_daemon(
        nursery,
        settings_for(
            db.url,
            failing,
            providers=("replicate", "kie"),
            fallback_provider="kie",
            kie_api_base=healthy,
            kie_model="sim/image",
            breaker_threshold=THRESHOLD,
            breaker_cooldown_s=60.0,
        ),
    )
    await db.grant("fern", 20, plan="pro")
    # A job may pick its provider; the routing key is not an input of either model.
    (chosen,) = await wait_terminal(
        db, [await db.submit_job("fern", "picked kie", params={"provider": "kie"})]
    )
    assert chosen.status is JobStatus.SUCCEEDED
    assert await _recorded_provider(db.url, chosen.id) == "kie"
    spent = await _trip(db, daemon, "fern")
    assert {job.status for job in await wait_terminal(db, spent)} == {JobStatus.FAILED}
    jobs = [await db.submit_job("fern", f"a harbour at dawn {n}") for n in range(5)]
    done = await wait_terminal(db, jobs)
    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 5
    assert {await _recorded_provider(db.url, job_id) for job_id in jobs} == {"kie"}
    account = await db.account("fern")
    assert account is not None
    assert account.balance == 20 - 6  # the jobs that met the outage were refunded whole
    assert (
        daemon.metrics.sample(
            "orchestrator_jobs_failed_over_total", {"provider": "replicate", "fallback": "kie"}
        )
        == 5
    )
    assert _state(daemon, "kie") == BreakerState.CLOSED
    assert (await db.audit()).ok


async def test_without_a_fallback_jobs_wait_queued_uncharged_then_run_once_healed(
    nursery, db: Database
):
    port = free_port()
    sim = await _start_replicate_sim(nursery, port, server_error_rate=1.0)
    daemon = await start_daemon(
        nursery,
        settings_for(
            db.url,
            f"http://127.0.0.1:{port}",
            breaker_threshold=THRESHOLD,
            breaker_cooldown_s=1.0,
            breaker_max_cooldown_s=2.0,
        ),
    )
    await db.grant("gus", 20, plan="pro")
    await _trip(db, daemon, "gus")
    waiting = [await db.submit_job("gus", f"a quiet street {n}") for n in range(4)]
    await trio.sleep(5.0)  # ten scans, several failed probes
    for job_id in waiting:
        job = await db.job(job_id)
        assert job is not None
        assert job.status is JobStatus.QUEUED
    assert await _charged(db.url, waiting) == 0
    assert daemon.metrics.sample("orchestrator_jobs_held_total", {"provider": "replicate"}) > 0
    assert (
        daemon.metrics.sample(
            "orchestrator_provider_breaker_transitions_total",
            {"provider": "replicate", "state": "half_open"},
        )
        >= 2
    )
    # Healed: the same address answers again; the next probe closes the breaker.
    sim.cancel()
    await trio.sleep(0.2)
    await _start_replicate_sim(nursery, port)
    done = await wait_terminal(db, waiting, timeout=20)
    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 4
    assert _state(daemon, "replicate") == BreakerState.CLOSED
    account = await db.account("gus")
    assert account is not None
    assert account.balance == 20 - 4
    assert (await db.audit()).ok


async def test_a_failed_over_job_is_called_back_on_the_fallbacks_own_webhook_route(
    nursery, db: Database
):
    failing = await start_simulator(nursery, server_error_rate=1.0)
    healthy = await start_simulator(nursery, api="kie", webhook_secret=SECRET, latency=(0.3, 0.4))
    port = free_port()
    daemon = await start_daemon(
        nursery,
        settings_for(
            db.url,
            failing,
            providers=("replicate", "kie"),
            fallback_provider="kie",
            kie_api_base=healthy,
            kie_model="sim/image",
            breaker_threshold=THRESHOLD,
            breaker_cooldown_s=60.0,
            http_port=port,
            public_url=f"http://127.0.0.1:{port}",
            webhook_secret=SECRET,
            webhook_poll_s=30.0,  # only a webhook can end the wait within the test
        ),
    )
    await db.grant("hal", 20, plan="pro")
    await _trip(db, daemon, "hal")
    jobs = [await db.submit_job("hal", f"called back {n}") for n in range(3)]
    done = await wait_terminal(db, jobs, timeout=15)
    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 3
    assert {await _recorded_provider(db.url, job_id) for job_id in jobs} == {"kie"}
    assert (
        daemon.metrics.sample(
            "orchestrator_webhooks_total", {"provider": "kie", "result": "accepted"}
        )
        >= 3
    )
    assert (await db.audit()).ok
