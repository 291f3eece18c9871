"""Reconciliation: predictions billing for ended jobs are cancelled, wasted successes counted.

Real Postgres and the simulator over HTTP. Each test leaves provider money in one of the
ways it happens (a cancel that never reached the provider, a submit whose id was lost, a
resubmission that replaced a recorded id) and checks one pass finds it, acts once, and a
second pass finds nothing new.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from orchestrator.core import ErrorCode, JobStatus, ListedClaim, PredictionRequest, PredictionStatus
from orchestrator.db import Database
from orchestrator.metrics import Metrics
from orchestrator.providers import ReplicateProvider
from orchestrator.reconcile import Reconciler, ReconcileReport, is_stray, verdict

from .e2e import settings_for, start_daemon, start_simulator, wait_terminal
from .test_cli import run

WEBHOOK = "http://127.0.0.1:9/webhooks/replicate"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


def _provider(client: httpx.AsyncClient, url: str) -> ReplicateProvider:
    return ReplicateProvider(client, base_url=url, token="t", model="sim/image")


async def _admitted(db: Database, user: str, num_outputs: int = 1) -> uuid.UUID:
    await db.grant(user, 10, plan="pro")
    job_id = await db.submit_job(user, "a lighthouse", num_outputs=num_outputs)
    assert (await db.admit(job_id, deadline_s=30)).outcome == "admitted"
    return job_id


async def _submit(provider: ReplicateProvider, job_id: uuid.UUID, idx: int = 0) -> str:
    request = PredictionRequest(
        job_id, "a lighthouse", {}, 1, webhook_url=WEBHOOK, output_index=idx
    )
    return (await provider.submit(request)).id


async def _time_out(db: Database, job_id: uuid.UUID) -> None:
    await db.finish(job_id, JobStatus.TIMED_OUT, code=ErrorCode.TIMEOUT, message="test")


async def _status(provider: ReplicateProvider, prediction_id: str) -> PredictionStatus:
    return (await provider.get(prediction_id)).status


def _reconciler(db: Database, provider: ReplicateProvider, **kw: object) -> Reconciler:
    return Reconciler(db, provider, provider_name="replicate", cancel_timeout_s=2.0, **kw)  # type: ignore[arg-type]


async def test_a_recorded_prediction_still_running_for_a_timed_out_job_is_cancelled_once(
    nursery, db: Database, client
):
    """The job task's cancel never got through: the pass cancels it, the next finds it ended."""
    provider = _provider(client, await start_simulator(nursery, latency=(60, 60)))
    job_id = await _admitted(db, "rhea")
    prediction_id = await _submit(provider, job_id)
    await db.mark_processing(job_id, provider="replicate", prediction_id=prediction_id)
    await _time_out(db, job_id)
    metrics = Metrics()
    first = await _reconciler(db, provider, observer=metrics.upkeep).run_once()
    assert (first.checked, first.canceled, first.undelivered) == (1, 1, 0)
    assert await _status(provider, prediction_id) is PredictionStatus.CANCELED
    second = await _reconciler(db, provider, observer=metrics.upkeep).run_once()
    assert (second.checked, second.canceled) == (1, 0)
    third = await _reconciler(db, provider, observer=metrics.upkeep).run_once()
    assert third.checked == 0
    canceled = {"outcome": "canceled"}
    assert metrics.sample("orchestrator_upstream_predictions_total", canceled) == 1
    assert metrics.sample("orchestrator_upstream_running_for_nothing") == 0


async def test_a_prediction_is_asked_about_and_cancelled_on_the_provider_it_ran_on(
    nursery, db: Database, client
):
    """A failed-over job's prediction runs on the fallback: reconciliation goes there.

    The second simulator stands in for the fallback; what counts is the name the
    prediction was recorded under.
    """
    primary = _provider(client, await start_simulator(nursery, latency=(60, 60)))
    fallback = _provider(client, await start_simulator(nursery, latency=(60, 60)))
    job_id = await _admitted(db, "ivo")
    prediction_id = await _submit(fallback, job_id)
    await db.mark_processing(job_id, provider="kie", prediction_id=prediction_id)
    await _time_out(db, job_id)
    report = await _reconciler(db, primary, others={"kie": fallback}).run_once()
    assert (report.checked, report.canceled, report.unreadable) == (1, 1, 0)
    assert await _status(fallback, prediction_id) is PredictionStatus.CANCELED


async def test_a_success_upstream_for_a_failed_job_is_counted_undelivered_exactly_once(
    nursery, db: Database, client
):
    """The provider finished after we gave up: paid for, never delivered, counted once."""
    provider = _provider(client, await start_simulator(nursery, latency=(0.05, 0.1)))
    job_id = await _admitted(db, "sol")
    prediction_id = await _submit(provider, job_id)
    await db.mark_processing(job_id, provider="replicate", prediction_id=prediction_id)
    await _time_out(db, job_id)
    with trio.fail_after(5):
        while await _status(provider, prediction_id) is not PredictionStatus.SUCCEEDED:
            await trio.sleep(0.05)
    first = await _reconciler(db, provider).run_once()
    assert (first.undelivered, first.canceled) == (1, 0)
    second = await _reconciler(db, provider).run_once()
    assert second == ReconcileReport()


async def test_a_delivered_output_is_never_reconciled(nursery, db: Database, client):
    """Only predictions that delivered nothing are provider money lost."""
    url = await start_simulator(nursery)
    await db.grant("una", 5, plan="pro")
    daemon_settings = settings_for(db.url, url)
    await start_daemon(nursery, daemon_settings)
    job_id = await db.submit_job("una", "a lighthouse")
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    report = await _reconciler(db, _provider(client, url)).run_once()
    assert (report.checked, report.canceled, report.undelivered) == (0, 0, 0)


async def test_a_tagged_prediction_nobody_recorded_is_found_in_the_listing_and_cancelled(
    nursery, db: Database, client
):
    """A submit whose id never came back: the listing's tag names the job, which has ended."""
    provider = _provider(client, await start_simulator(nursery, latency=(60, 60)))
    job_id = await _admitted(db, "tia")
    lost = await _submit(provider, job_id)
    await _time_out(db, job_id)
    first = await _reconciler(db, provider).run_once()
    assert (first.listed, first.canceled) == (1, 1)
    assert await _status(provider, lost) is PredictionStatus.CANCELED
    second = await _reconciler(db, provider).run_once()
    assert (second.listed, second.canceled) == (0, 0)


async def test_a_replaced_prediction_is_cancelled_while_its_job_still_runs(
    nursery, db: Database, client
):
    """A resubmission replaced the recorded id; the old prediction runs for nothing."""
    provider = _provider(client, await start_simulator(nursery, latency=(60, 60)))
    job_id = await _admitted(db, "ugo")
    old = await _submit(provider, job_id)
    await db.mark_processing(job_id, provider="replicate", prediction_id=old)
    new = await _submit(provider, job_id)
    await db.mark_processing(job_id, provider="replicate", prediction_id=new)
    report = await _reconciler(db, provider).run_once()
    assert report.canceled == 1
    assert await _status(provider, old) is PredictionStatus.CANCELED
    assert not (await _status(provider, new)).terminal


async def test_predictions_tagged_for_jobs_we_do_not_have_are_never_cancelled(
    nursery, db: Database, client
):
    """Another deployment may share the account: what we cannot attribute, we leave alone."""
    provider = _provider(client, await start_simulator(nursery, latency=(60, 60)))
    foreign = await _submit(provider, uuid.uuid4())
    untagged = (await provider.submit(PredictionRequest(uuid.uuid4(), "x", {}, 1))).id
    report = await _reconciler(db, provider).run_once()
    assert (report.listed, report.canceled) == (0, 0)
    assert not (await _status(provider, foreign)).terminal
    assert not (await _status(provider, untagged)).terminal


async def test_a_dry_run_cancels_and_stores_nothing(nursery, db: Database, client):
    provider = _provider(client, await start_simulator(nursery, latency=(60, 60)))
    job_id = await _admitted(db, "vic")
    prediction_id = await _submit(provider, job_id)
    await db.mark_processing(job_id, provider="replicate", prediction_id=prediction_id)
    await _time_out(db, job_id)
    for _ in range(2):
        report = await _reconciler(db, provider, dry_run=True).run_once()
        assert (report.canceled, report.dry_run) == (1, True)
    assert not (await _status(provider, prediction_id)).terminal


async def test_the_daemon_cancels_a_lost_prediction_of_a_job_it_timed_out_on_restart(
    nursery, db: Database, client
):
    """End to end: a job left in flight past its deadline, its prediction's id lost.

    On restart the job times out at once, and the sweeper's reconciliation pass finds the
    tagged prediction in the listing and cancels it.
    """
    url = await start_simulator(nursery, latency=(60, 60))
    provider = _provider(client, url)
    await db.grant("wes", 5, plan="pro")
    job_id = await db.submit_job("wes", "a lighthouse")
    assert (await db.admit(job_id, deadline_s=0.01)).outcome == "admitted"
    lost = await _submit(provider, job_id)
    settings = settings_for(
        db.url,
        url,
        public_url="http://127.0.0.1:9",
        accept_unsigned_webhooks=True,
        stuck_after_s=5.0,
    )
    await start_daemon(nursery, settings)
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.TIMED_OUT
    with trio.fail_after(10):
        while await _status(provider, lost) is not PredictionStatus.CANCELED:
            await trio.sleep(0.1)
    assert (await db.audit()).ok


async def test_orchestrator_reconcile_cancels_and_prints_what_it_found_as_json(
    nursery, db: Database, client
):
    url = await start_simulator(nursery, latency=(60, 60))
    provider = _provider(client, url)
    job_id = await _admitted(db, "xan")
    lost = await _submit(provider, job_id)
    await _time_out(db, job_id)
    env = {**os.environ, "DATABASE_URL": db.url, "REPLICATE_API_BASE": url}
    env |= {"REPLICATE_API_TOKEN": "t", "REPLICATE_MODEL": "sim/image", "NO_COLOR": "1"}
    command = [sys.executable, "-m", "orchestrator.cli", "reconcile", "--json"]
    with trio.fail_after(60):
        result = await trio.run_process(command, env=env, capture_stdout=True)
    report = json.loads(result.stdout)
    assert (report["listed"], report["canceled"], report["dry_run"]) == (1, 1, False)
    assert await _status(provider, lost) is PredictionStatus.CANCELED


def test_orchestrator_reconcile_refuses_a_bad_window_in_one_line(db_url: str):
    result = run(db_url, "reconcile", "--window-hours", "0", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "hours must be in" in result.stderr


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (PredictionStatus.STARTING, "cancel"),
        (PredictionStatus.PROCESSING, "cancel"),
        (PredictionStatus.SUCCEEDED, "undelivered"),
        (PredictionStatus.FAILED, "ended"),
        (PredictionStatus.CANCELED, "ended"),
        (PredictionStatus.ABORTED, "ended"),
    ],
)
def test_the_verdict_for_each_upstream_status(status, expected):
    assert verdict(status) == expected


def _claim(status: JobStatus | None, recorded: str | None, *, noted: bool = False) -> ListedClaim:
    return ListedClaim("p1", uuid.uuid4(), 0, status, recorded, noted)


@pytest.mark.parametrize(
    ("claim", "stray"),
    [
        (_claim(None, None), False),
        (_claim(JobStatus.SUCCEEDED, "p1"), False),
        (_claim(JobStatus.FAILED, None, noted=True), False),
        (_claim(JobStatus.PROCESSING, None), False),
        (_claim(JobStatus.FAILED, None), True),
        (_claim(JobStatus.TIMED_OUT, "p0"), True),
        (_claim(JobStatus.PROCESSING, "p0"), True),
    ],
    ids=[
        "unknown-job",
        "the-recorded-one",
        "already-tracked",
        "in-flight-id-on-its-way",
        "ended-job-never-recorded",
        "ended-job-other-id",
        "in-flight-replaced",
    ],
)
def test_which_listed_predictions_are_strays(claim, stray):
    assert is_stray(claim) is stray


@pytest.mark.parametrize(
    ("claim", "stray"),
    [
        (_claim(JobStatus.SUCCEEDED, "p1"), True),
        (_claim(JobStatus.FAILED, None, noted=True), True),
        (_claim(JobStatus.PROCESSING, "p1"), False),
        (_claim(None, None), False),
    ],
    ids=["recorded-for-an-ended-job", "tracked-for-an-ended-job", "in-flight", "unknown-job"],
)
def test_a_prediction_still_running_for_an_ended_job_is_always_a_stray(claim, stray):
    """Seen in the soak: a job delivered output 0 from one prediction while another, later
    recorded for the same output, ran on; the database side skips delivered outputs."""
    assert is_stray(claim, running=True) is stray
