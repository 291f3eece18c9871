"""Recovery and the sweeper: nothing an earlier run left behind stays unsettled."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
import trio

from actors import ActorConfig, Registry
from orchestrator.core import ErrorCode, JobStatus, PredictionRequest, TaggedPrediction
from orchestrator.db import Database
from orchestrator.metrics import Metrics
from orchestrator.providers import ReplicateProvider
from orchestrator.sweeper import Sweeper

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal


async def _left_in_flight(db: Database, user: str, *, deadline_s: float = 30.0, params=None):
    job_id = await db.submit_job(user, "left behind", params=params or {})
    admission = await db.admit(job_id, deadline_s=deadline_s)
    assert admission.outcome == "admitted"
    return job_id


async def _create_prediction(provider_url: str, job_id, params, webhook_url=None) -> str:
    async with httpx.AsyncClient(trust_env=False) as client:
        provider = ReplicateProvider(client, base_url=provider_url, token="t", model="sim/image")
        request = PredictionRequest(job_id, "left behind", params, 1, webhook_url=webhook_url)
        prediction = await provider.submit(request)
    return prediction.id


async def _listed(provider_url: str) -> tuple[TaggedPrediction, ...]:
    async with httpx.AsyncClient(trust_env=False) as client:
        provider = ReplicateProvider(client, base_url=provider_url, token="t", model="sim/image")
        return await provider.recent()


# Webhook URLs tag predictions with their job; nothing listens there in these tests.
_TAGGED = {"public_url": "http://127.0.0.1:9", "accept_unsigned_webhooks": True}


async def test_a_job_left_processing_is_resumed_and_finishes(nursery, db: Database):
    """After a crash, the daemon re-attaches to the stored prediction instead of paying again."""
    provider = await start_simulator(nursery, latency=(0.3, 0.4))
    await db.grant("alice", 5, plan="pro")
    job_id = await _left_in_flight(db, "alice")
    prediction_id = await _create_prediction(provider, job_id, {})
    assert await db.mark_processing(job_id, provider="replicate", prediction_id=prediction_id)
    await start_daemon(nursery, settings_for(db.url, provider))
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    assert job.prediction_id == prediction_id
    account = await db.account("alice")
    assert account is not None
    assert account.balance == 4  # the pro plan's price of one output
    assert (await db.audit()).ok


async def test_a_job_caught_between_submit_and_its_prediction_id_reattaches_and_pays_once(
    nursery, db: Database
):
    """Brandur's phase gap: the restarted daemon finds the tagged prediction, never a second."""
    provider = await start_simulator(nursery, latency=(0.3, 0.4))
    await db.grant("bob", 5, plan="pro")
    job_id = await _left_in_flight(db, "bob")
    lost = await _create_prediction(provider, job_id, {}, webhook_url="http://127.0.0.1:9/w")
    await start_daemon(nursery, settings_for(db.url, provider, **_TAGGED))
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    assert job.prediction_id == lost
    assert [t.prediction.id for t in await _listed(provider) if t.job_id == job_id] == [lost]
    account = await db.account("bob")
    assert account is not None
    assert account.balance == 4
    assert (await db.audit()).ok


async def test_a_job_admitted_but_never_submitted_before_a_crash_is_submitted_on_restart(
    nursery, db: Database
):
    """Nothing upstream to re-attach to: the job is submitted within its remaining deadline."""
    provider = await start_simulator(nursery)
    await db.grant("bea", 5, plan="pro")
    job_id = await _left_in_flight(db, "bea")
    await start_daemon(nursery, settings_for(db.url, provider, **_TAGGED))
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    assert len([t for t in await _listed(provider) if t.job_id == job_id]) == 1
    account = await db.account("bea")
    assert account is not None
    assert account.balance == 4
    assert (await db.audit()).ok


async def test_a_job_whose_deadline_passed_while_down_times_out_and_refunds(nursery, db: Database):
    """Deadlines are stored on the row, so a restart honours them instead of starting over."""
    provider = await start_simulator(nursery)
    await db.grant("carol", 5, plan="pro")
    job_id = await _left_in_flight(db, "carol", deadline_s=0.2, params={"simulate": "hang"})
    prediction_id = await _create_prediction(provider, job_id, {"simulate": "hang"})
    assert await db.mark_processing(job_id, provider="replicate", prediction_id=prediction_id)
    await trio.sleep(0.3)
    await start_daemon(nursery, settings_for(db.url, provider))
    (job,) = await wait_terminal(db, [job_id], timeout=5)
    assert job.status is JobStatus.TIMED_OUT
    account = await db.account("carol")
    assert account is not None
    assert account.balance == 5
    async with httpx.AsyncClient(trust_env=False) as client:
        stats = (await client.get(f"{provider}/_sim/stats")).json()
    assert stats["cancels"] >= 1


async def test_the_sweeper_cancels_a_stuck_jobs_prediction_on_the_provider_it_runs_on(
    nursery, db: Database, db_url: str
):
    """A failed-over job's prediction runs on the fallback: the sweeper cancels it there."""
    await db.grant("uma", 10, plan="pro")
    job_id = await _left_in_flight(db, "uma")
    primary_url = await start_simulator(nursery)
    fallback_url = await start_simulator(nursery, latency=(60, 60))
    prediction_id = await _create_prediction(fallback_url, job_id, {})
    await db.mark_processing(job_id, provider="kie", prediction_id=prediction_id)
    await pg.execute(
        db_url,
        "UPDATE orchestrator.jobs SET deadline_at = now() - interval '2 hours' WHERE id = $1",
        job_id,
    )
    async with httpx.AsyncClient(trust_env=False) as client:
        primary = ReplicateProvider(client, base_url=primary_url, token="t", model="sim/image")
        fallback = ReplicateProvider(client, base_url=fallback_url, token="t", model="sim/image")
        registry = Registry(store=db, provider=primary, config=ActorConfig())
        sweeper = Sweeper(
            db,
            primary,
            registry,
            stuck_after_s=1800,
            cancel_timeout_s=2,
            others={"kie": fallback},
        )
        assert await sweeper.sweep() == 1
        assert (await fallback.get(prediction_id)).status.value == "canceled"
    job = await db.job(job_id)
    assert job is not None
    assert (job.status, job.error_code) == (JobStatus.FAILED, ErrorCode.STUCK)


async def test_the_sweeper_fails_and_refunds_jobs_stuck_past_the_limit(
    nursery, db: Database, db_url: str
):
    """Seed 003's 'scheduled job': anything non-terminal past the stuck limit is ended and refunded."""
    await db.grant("dave", 10, plan="pro")
    stuck_flight = await _left_in_flight(db, "dave")
    stuck_queue = await db.submit_job("dave", "never picked up")
    fresh = await db.submit_job("dave", "just arrived")
    await pg.execute(
        db_url,
        "UPDATE orchestrator.jobs SET created_at = now() - interval '2 hours',"
        " deadline_at = now() - interval '2 hours' + interval '2 minutes' WHERE id = ANY($1)",
        [stuck_flight, stuck_queue],
    )
    recent = await _left_in_flight(db, "dave")
    await pg.execute(
        db_url,
        "UPDATE orchestrator.jobs SET created_at = now() - interval '2 hours' WHERE id = $1",
        recent,
    )
    provider_url = await start_simulator(nursery)
    async with httpx.AsyncClient(trust_env=False) as client:
        provider = ReplicateProvider(client, base_url=provider_url, token="t", model="sim/image")
        registry = Registry(store=db, provider=provider, config=ActorConfig())
        metrics = Metrics()
        sweeper = Sweeper(
            db, provider, registry, stuck_after_s=1800, cancel_timeout_s=1, observer=metrics
        )
        assert await sweeper.sweep() == 2
    sample = metrics.registry.get_sample_value
    assert sample("orchestrator_credits_refunded_total") == 1  # the sweeper's refunds count
    assert sample("orchestrator_jobs_finished_total", {"status": "failed", "code": "STUCK"}) == 1
    assert sample("orchestrator_jobs_rejected_total", {"code": "STUCK"}) == 1
    flight, queued, young, backlog = [
        await db.job(j) for j in (stuck_flight, stuck_queue, fresh, recent)
    ]
    assert backlog is not None
    assert backlog.status is JobStatus.STARTING  # submitted long ago, admitted just now
    assert flight is not None
    assert (flight.status, flight.error_code) == (JobStatus.FAILED, ErrorCode.STUCK)
    assert queued is not None
    assert (queued.status, queued.error_code) == (JobStatus.REJECTED, ErrorCode.STUCK)
    assert young is not None
    assert young.status is JobStatus.QUEUED
    account = await db.account("dave")
    assert account is not None
    assert account.balance == 9  # only the backlog job's one output is charged
    assert (await db.audit()).ok


async def test_a_job_whose_task_was_lost_is_settled_by_the_orphan_scan(
    nursery, db: Database, db_url: str
):
    """A charged job nobody runs any more is found while the daemon runs, not 30 minutes later."""
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db.url, provider, orphan_grace_s=1.0))
    await db.grant("ode", 5, plan="pro")
    job_id = await _left_in_flight(db, "ode", params={"simulate": "hang"})
    prediction_id = await _create_prediction(provider, job_id, {"simulate": "hang"})
    assert await db.mark_processing(job_id, provider="replicate", prediction_id=prediction_id)
    await pg.execute(
        db_url,
        "UPDATE orchestrator.jobs SET deadline_at = now() - interval '5 seconds' WHERE id = $1",
        job_id,
    )
    (job,) = await wait_terminal(db, [job_id], timeout=10)
    assert job.status is JobStatus.TIMED_OUT
    account = await db.account("ode")
    assert account is not None
    assert account.balance == 5
    assert (await db.audit()).ok


async def test_the_sweeper_forgets_webhook_deliveries_past_the_retry_window(
    db: Database, db_url: str
):
    """Old deliveries go, recent ones stay, and the daemon's role prunes through the function only."""
    for event in ("old-1", "old-2", "recent"):
        assert await db.record_webhook_event("replicate", event)
    await pg.execute(
        db_url,
        "UPDATE orchestrator.webhook_events SET received_at = now() - interval '4 days'"
        " WHERE event_id LIKE 'old-%'",
    )
    metrics = Metrics()
    async with httpx.AsyncClient(trust_env=False) as client:
        provider = ReplicateProvider(client, base_url="http://127.0.0.1:9", token="t", model="m/x")
        registry = Registry(store=db, provider=provider, config=ActorConfig())
        sweeper = Sweeper(
            db,
            provider,
            registry,
            stuck_after_s=1800,
            cancel_timeout_s=1,
            webhook_retention_s=3 * 86400,
            observer=metrics,
        )
        await sweeper.sweep()
    kept = await pg.fetch(db_url, "SELECT event_id FROM orchestrator.webhook_events")
    assert [row["event_id"] for row in kept] == ["recent"]
    assert metrics.sample("orchestrator_webhook_events_pruned_total") == 2
    # A delivery forgotten and repeated is new again: it only wakes a task.
    assert await db.record_webhook_event("replicate", "old-1")
    pruned = await pg.fetch(
        db_url,
        "SELECT orchestrator.prune_webhook_events_v1(1, 10) AS n",
        role="orchestrator_daemon",
    )
    assert pruned[0]["n"] == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pg.execute(
            db_url, "DELETE FROM orchestrator.webhook_events", role="orchestrator_daemon"
        )
