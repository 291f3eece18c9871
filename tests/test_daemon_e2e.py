"""The daemon end to end: real Postgres, the simulator over HTTP, a 2 s deadline.

Each test here is one of the seeds' failures, shown impossible.
"""

from __future__ import annotations

import collections
import functools
import uuid

import asyncpg
import httpx
import pytest
import trio

from orchestrator.core import ErrorCode, JobStatus
from orchestrator.db import Database
from orchestrator.simulator import SimulatorConfig, serve_simulator

from . import pg
from .e2e import DEADLINE_S, settings_for, start_daemon, start_simulator, wait_status, wait_terminal
from .test_webhooks import free_port


async def _debits(db_url: str, user: str) -> int:
    rows = await pg.fetch(
        db_url,
        "SELECT count(*) AS n FROM orchestrator.ledger WHERE user_id = $1 AND kind = 'debit'",
        user,
    )
    return int(rows[0]["n"])


async def _sim_stats(provider_url: str) -> dict[str, object]:
    async with httpx.AsyncClient(trust_env=False) as client:
        return (await client.get(f"{provider_url}/_sim/stats")).json()  # type: ignore[no-any-return]


async def _submit_concurrently(
    db: Database, user: str, prompts: list[tuple[str, dict[str, object]]]
):
    ids: list[uuid.UUID] = []

    async def submit(prompt: str, params: dict[str, object]) -> None:
        ids.append(await db.submit_job(user, prompt, params=params))

    async with trio.open_nursery() as nursery:
        for prompt, params in prompts:
            nursery.start_soon(submit, prompt, params)
    return ids


async def test_twenty_identical_submissions_run_once_and_charge_once(
    nursery, db: Database, db_url: str
):
    """Seed 000: twenty clicks of the same job: one runs, nineteen are DUPLICATE, one debit."""
    provider = await start_simulator(nursery, latency=(0.4, 0.5))
    await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("alice", 10, plan="pro")
    ids = await _submit_concurrently(db, "alice", [("a red fox", {})] * 20)
    jobs = await wait_terminal(db, ids)
    statuses = collections.Counter((j.status, j.error_code) for j in jobs)
    assert statuses == {
        (JobStatus.SUCCEEDED, None): 1,
        (JobStatus.REJECTED, ErrorCode.DUPLICATE): 19,
    }
    assert await _debits(db_url, "alice") == 1
    account = await db.account("alice")
    assert account is not None
    assert account.balance == 9
    assert (await db.audit()).ok


async def test_rapid_clicks_with_one_credit_run_one_job(nursery, db: Database, db_url: str):
    """Seed 001's test: balance 1, ten rapid clicks: one success, the rest INSUFFICIENT_CREDITS."""
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("bob", 1, plan="pro")
    ids = await _submit_concurrently(db, "bob", [("a cat", {"seed": n}) for n in range(10)])
    jobs = await wait_terminal(db, ids)
    statuses = collections.Counter((j.status, j.error_code) for j in jobs)
    assert statuses == {
        (JobStatus.SUCCEEDED, None): 1,
        (JobStatus.REJECTED, ErrorCode.INSUFFICIENT_CREDITS): 9,
    }
    account = await db.account("bob")
    assert account is not None
    assert account.balance == 0
    assert (await db.audit()).ok


async def test_a_hanging_provider_times_out_at_the_deadline_and_refunds(nursery, db: Database):
    """Seed 000/003: a poll that never ends is cut at the deadline, cancelled upstream, refunded."""
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db.url, provider))
    await db.grant("carol", 3, plan="pro")
    started = trio.current_time()
    job_id = await db.submit_job("carol", "never finishes", params={"simulate": "hang"})
    (job,) = await wait_terminal(db, [job_id])
    elapsed = trio.current_time() - started
    assert job.status is JobStatus.TIMED_OUT
    assert job.error_code is ErrorCode.TIMEOUT
    assert DEADLINE_S <= elapsed < DEADLINE_S + 2
    account = await db.account("carol")
    assert account is not None
    assert account.balance == 3
    stats = await _sim_stats(provider)
    assert stats["cancels"] >= 1
    assert (await db.audit()).ok


async def test_a_failing_provider_fails_the_job_and_refunds(nursery, db: Database):
    """Seed 003: a provider failure refunds in the same transaction that fails the job."""
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db.url, provider))
    await db.grant("dave", 2, plan="pro")
    job_id = await db.submit_job("dave", "doomed", params={"simulate": "fail"})
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.FAILED
    assert job.error_code is ErrorCode.UPSTREAM_ERROR
    assert job.error_message is not None
    assert "sim-secret" not in job.error_message
    assert "refunded" in job.error_message
    account = await db.account("dave")
    assert account is not None
    assert account.balance == 2
    assert (await db.audit()).ok


async def test_cancel_mid_flight_cancels_upstream_and_refunds(nursery, db: Database):
    """Cancelling a running job stops its prediction and gives the credits back."""
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db.url, provider, job_deadline_s=30.0))
    await db.grant("erin", 5, plan="pro")
    job_id = await db.submit_job("erin", "long one", params={"simulate": "hang"})
    await wait_status(db, job_id, "processing")
    assert await db.request_cancel(job_id)
    (job,) = await wait_terminal(db, [job_id], timeout=5)
    assert job.status is JobStatus.CANCELED
    assert job.error_code is ErrorCode.CANCELED
    account = await db.account("erin")
    assert account is not None
    assert account.balance == 5
    assert (await _sim_stats(provider))["cancels"] >= 1
    assert not await db.request_cancel(job_id)
    assert (await db.audit()).ok


async def test_a_queued_job_cancelled_before_admission_is_never_charged(
    nursery, db: Database, db_url: str
):
    """A cancel that arrives first turns the job away as CANCELED without a debit."""
    await db.grant("fay", 5, plan="pro")
    job_id = await db.submit_job("fay", "changed my mind")
    assert await db.request_cancel(job_id)
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider))
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.CANCELED
    assert job.error_code is ErrorCode.CANCELED
    assert job.admitted_at is None
    assert await _debits(db_url, "fay") == 0
    assert (await db.audit()).ok


async def test_admission_refuses_a_job_whose_cancel_committed_after_it_was_read(db: Database):
    """The cancel lands between the admission read and the admit: still nothing is charged."""
    await db.grant("fay", 5, plan="pro")
    job_id = await db.submit_job("fay", "changed my mind late")
    context = await db.admission_context(job_id)
    assert context is not None
    assert context.job.cancel_requested_at is None
    assert await db.request_cancel(job_id)
    admission = await db.admit(job_id, deadline_s=5.0)
    assert admission.outcome == "canceled"
    account = await db.account("fay")
    assert account is not None
    assert account.balance == 5
    assert await db.reject(job_id, ErrorCode.CANCELED, "cancelled before it started")
    job = await db.job(job_id)
    assert job is not None
    assert (job.status, job.cost) == (JobStatus.CANCELED, 0)
    assert (await db.audit()).ok


async def test_jobs_submitted_while_the_daemon_was_down_still_run(nursery, db: Database):
    """A NOTIFY nobody heard is not a lost job: the start-up scan finds it."""
    await db.grant("gus", 5, plan="pro")
    ids = [await db.submit_job("gus", f"while down {n}") for n in range(3)]
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db.url, provider))
    jobs = await wait_terminal(db, ids)
    assert {j.status for j in jobs} == {JobStatus.SUCCEEDED}


async def test_malformed_rows_and_notifications_do_not_stop_the_daemon(
    nursery, db: Database, db_url: str
):
    """Bad submissions are rejected as VALIDATION_ERROR with nothing charged; good ones still run."""
    provider = await start_simulator(nursery)
    daemon = await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("hal", 5, plan="pro")
    await pg.execute(db_url, "SELECT pg_notify('orchestrator_jobs_0', 'not-a-uuid')")
    await pg.execute(db_url, f"SELECT pg_notify('orchestrator_jobs_0', '{uuid.uuid4()}')")
    for refused in ("", "x" * 5000):
        with pytest.raises(asyncpg.PostgresError, match="the prompt has") as caught:
            await pg.execute(
                db_url,
                "INSERT INTO orchestrator.jobs (user_id, prompt) VALUES ('hal', $1)",
                refused,
            )
        assert caught.value.sqlstate == "OR004"
    bad = [
        ("hal", "   ", "{}", 1),
        ("hal", "too many", "{}", 99),
        ("hal", "zero", "{}", 0),
        ("hal", "array params", "[1, 2]", 1),
        ("hal", "reserved", '{"num_outputs": 30}', 1),
        ("nobody", "unknown user", "{}", 1),
    ]
    ids = []
    for user, prompt, params, outputs in bad:
        rows = await pg.fetch(
            db_url,
            "INSERT INTO orchestrator.jobs (user_id, prompt, params, num_outputs)"
            " VALUES ($1, $2, $3::jsonb, $4) RETURNING id",
            user,
            prompt,
            params,
            outputs,
        )
        ids.append(rows[0]["id"])
    good = await db.submit_job("hal", "a fine request")
    jobs = await wait_terminal(db, [*ids, good])
    for job in jobs[:-1]:
        assert job.status is JobStatus.REJECTED
        assert job.error_code is ErrorCode.VALIDATION_ERROR
        assert job.error_message
    assert jobs[-1].status is JobStatus.SUCCEEDED
    assert await _debits(db_url, "hal") == 1
    assert daemon.intake.stats.bad_payloads == 1
    assert (await db.audit()).ok


async def test_the_listener_reconnects_after_losing_its_connection(
    nursery, db: Database, db_url: str
):
    """A dropped LISTEN connection is re-made; jobs submitted meanwhile still run."""
    provider = await start_simulator(nursery)
    daemon = await start_daemon(nursery, settings_for(db_url, provider, scan_interval_s=60.0))
    await db.grant("ida", 5, plan="pro")
    with trio.fail_after(5):
        while not daemon.intake.stats.connected:
            await trio.sleep(0.02)
    await pg.execute(
        db_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND (query LIKE 'LISTEN%' OR query LIKE '%pg_try_advisory_lock%')",
    )
    job_id = await db.submit_job("ida", "after the drop")
    (job,) = await wait_terminal(db, [job_id], timeout=10)
    assert job.status is JobStatus.SUCCEEDED
    assert daemon.intake.stats.reconnects >= 1


async def test_a_succeeded_job_records_exactly_its_outputs(nursery, db: Database, db_url: str):
    """Outputs are stored with the terminal status, one row per index, never more than paid for."""
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("kim", 10, plan="pro")
    job_id = await db.submit_job("kim", "three views", num_outputs=3)
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    assert job.cost == 3
    rows = await pg.fetch(
        db_url, "SELECT idx, url FROM orchestrator.outputs WHERE job_id = $1 ORDER BY idx", job_id
    )
    assert [row["idx"] for row in rows] == [0, 1, 2]
    assert all(row["url"].startswith(provider) for row in rows)
    assert (await db.audit()).ok


async def test_the_daemon_runs_jobs_on_kie_too(nursery, db: Database, db_url: str):
    """Provider selection per daemon: the same lifecycle over KIE's create-task/poll API."""
    provider = await start_simulator(nursery, api="kie")
    settings = settings_for(
        db_url, provider, provider="kie", kie_api_base=provider, kie_model="sim/image"
    )
    await start_daemon(nursery, settings)
    await db.grant("kay", 5, plan="pro")
    ok = await db.submit_job("kay", "on kie", num_outputs=2)
    bad = await db.submit_job("kay", "fails on kie", params={"simulate": "fail"})
    done, failed = await wait_terminal(db, [ok, bad])
    assert done.status is JobStatus.SUCCEEDED
    assert failed.status is JobStatus.FAILED
    account = await db.account("kay")
    assert account is not None
    assert account.balance == 3
    assert (await db.audit()).ok


async def test_a_provider_that_refuses_connections_for_a_while_is_retried_not_failed(
    nursery, db: Database
):
    """Connection refused means nothing was sent: the daemon tries again within the deadline."""
    port = free_port()
    settings = settings_for(db.url, f"http://127.0.0.1:{port}", job_deadline_s=10.0)
    await start_daemon(nursery, settings)
    await db.grant("rhea", 5, plan="pro")
    job_id = await db.submit_job("rhea", "the provider comes back")
    await wait_status(db, job_id, "starting")
    await trio.sleep(1.0)  # every create so far was refused
    await nursery.start(
        functools.partial(serve_simulator, SimulatorConfig(latency=(0.05, 0.1), seed=3), port=port)
    )
    (job,) = await wait_terminal(db, [job_id], timeout=15)
    assert job.status is JobStatus.SUCCEEDED
    account = await db.account("rhea")
    assert account is not None
    assert account.balance == 4


async def test_listen_goes_to_its_own_url_and_the_pools_to_the_database_url(nursery, db: Database):
    """Behind a transaction-pooling PgBouncer only LISTEN needs Postgres itself.

    Here LISTEN goes to another database of the same server, so it hears nothing of
    this one: the job still runs, found by the catch-up scan over the pools.
    """
    provider = await start_simulator(nursery)
    elsewhere = pg.with_database(db.url, "postgres")
    daemon = await start_daemon(nursery, settings_for(db.url, provider, listen_url=elsewhere))
    assert (await daemon.readiness())["listener"]
    await db.grant("lis", 5, plan="pro")
    job_id = await db.submit_job("lis", "found by the scan")
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    assert daemon.intake.stats.notifications == 0  # its NOTIFY went to a database not heard
    assert daemon.intake.stats.scan_finds >= 1
