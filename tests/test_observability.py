"""What operators see: metrics that move with jobs, health endpoints, and clean logs."""

from __future__ import annotations

import re
import uuid

import httpx
import structlog
import trio
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.core import ErrorCode, JobStatus
from orchestrator.db import Database
from orchestrator.metrics import Metrics

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal
from .test_actors import make_rig

PRIVATE_PROMPT = "a portrait of my neighbour Trudy at 12 Elm Street"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_metrics_move_as_jobs_finish_and_never_carry_ids(nursery, db: Database):
    """A refunded job raises the refund counter by its cost; no label holds a user or job id."""
    provider = await start_simulator(nursery)
    daemon = await start_daemon(nursery, settings_for(db.url, provider))
    await db.grant("metrics-user", 10, plan="pro")
    before = samples(await scrape(daemon.http_url))
    failed = await db.submit_job("metrics-user", "x", params={"simulate": "fail"}, num_outputs=3)
    ok = await db.submit_job("metrics-user", PRIVATE_PROMPT)
    dup = await db.submit_job("metrics-user", PRIVATE_PROMPT)
    jobs = await wait_terminal(db, [failed, ok, dup])
    assert [j.status for j in jobs] == [JobStatus.FAILED, JobStatus.SUCCEEDED, JobStatus.REJECTED]
    text = await scrape(daemon.http_url)
    after = samples(text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("orchestrator_credits_refunded_total") == 3
    assert delta("orchestrator_credits_debited_total") == 4
    assert delta("orchestrator_jobs_admitted_total") == 2
    assert delta("orchestrator_jobs_finished_total", status="failed", code="UPSTREAM_ERROR") == 1
    assert delta("orchestrator_jobs_finished_total", status="succeeded", code="") == 1
    assert delta("orchestrator_jobs_rejected_total", code="DUPLICATE") == 1
    assert "orchestrator_duplicates_dropped_total" not in text  # derived: rejected{DUPLICATE}
    assert delta("orchestrator_provider_requests_total", operation="submit", outcome="ok") == 4
    assert delta("orchestrator_intake_lag_seconds_count") == 3
    assert after[("orchestrator_build_info", (("version", "0.1.0"),))] == 1
    for job_id in (failed, ok, dup):
        assert str(job_id) not in text
    assert "metrics-user" not in text
    assert "Trudy" not in text


async def test_health_and_readiness_report_what_they_check(nursery, db: Database):
    """/healthz says the process lives; /readyz checks database, schema and listener."""
    provider = await start_simulator(nursery)
    daemon = await start_daemon(nursery, settings_for(db.url, provider))
    async with httpx.AsyncClient(trust_env=False) as client:
        health = await client.get(f"{daemon.http_url}/healthz")
        with trio.fail_after(5):
            while not daemon.intake.stats.connected:
                await trio.sleep(0.02)
        ready = await client.get(f"{daemon.http_url}/readyz")
        missing = await client.get(f"{daemon.http_url}/nope")
    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "checks": {"database": True, "schema": True, "listener": True, "leases": True},
    }
    assert missing.status_code == 404


async def test_readiness_fails_when_the_schema_is_stale(nursery, db: Database, db_url: str):
    """A daemon in front of a database it does not match is alive but not ready."""
    provider = await start_simulator(nursery)
    daemon = await start_daemon(nursery, settings_for(db_url, provider))
    await pg.execute(
        db_url, "UPDATE orchestrator.meta SET value = 'stale' WHERE key = 'schema_sha256'"
    )
    async with httpx.AsyncClient(trust_env=False) as client:
        ready = await client.get(f"{daemon.http_url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["schema"] is False


async def test_a_jobs_log_lines_name_each_transition_with_ids_and_never_the_prompt(
    autojump_clock, nursery
):
    """One event per transition, with user and job ids bound, and the prompt nowhere."""
    rig = await make_rig(nursery, latency=1.0)
    rig.store.grant("logger", 5, plan="pro")
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        job_id = rig.submit("logger", PRIVATE_PROMPT, params={"simulate": "fail"})
        await rig.settled(job_id)
    events = [entry["event"] for entry in logs]
    assert events == ["job.admitted", "job.processing", "job.finished", "job.refunded"]
    for entry in logs:
        assert entry["user_id"] == "logger"
        assert entry["job_id"] == str(job_id)
    assert logs[1]["prediction_id"] == "p0"
    finished = logs[2]
    assert finished["status"] == "failed"
    assert finished["credits_refunded"] == 1
    assert "duration_s" in finished
    assert "Trudy" not in repr(logs)
    assert not re.search(r"Elm Street", repr(logs))
    assert uuid.UUID(logs[0]["job_id"]) == job_id


async def test_the_periodic_audit_exports_violations_for_the_alert(
    nursery, db: Database, db_url: str
):
    """A broken invariant shows up in orchestrator_audit_violations without anyone running audit."""
    provider = await start_simulator(nursery)
    daemon = await start_daemon(nursery, settings_for(db_url, provider, audit_interval_s=0.2))
    await db.grant("audited", 5)
    with trio.fail_after(5):
        while (
            samples(await scrape(daemon.http_url)).get(
                ("orchestrator_audit_last_run_timestamp_seconds", ()), 0
            )
            == 0
        ):
            await trio.sleep(0.05)
    assert samples(await scrape(daemon.http_url))[("orchestrator_audit_violations", ())] == 0
    await pg.execute(
        db_url, "UPDATE orchestrator.accounts SET balance = 500 WHERE user_id = 'audited'"
    )
    with trio.fail_after(5):
        while samples(await scrape(daemon.http_url))[("orchestrator_audit_violations", ())] == 0:
            await trio.sleep(0.05)


def test_the_finished_count_the_pacer_reads_is_the_sum_of_the_finished_counter():
    metrics = Metrics()
    for status, code in ((JobStatus.SUCCEEDED, None), (JobStatus.FAILED, ErrorCode.TIMEOUT)):
        metrics.jobs.job_finished(status, code, refunded=0, provider_s=1.0, total_s=1.0, polls=1)
    assert metrics.jobs.finished_count() == 2
