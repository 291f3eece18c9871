"""The daemon as a real process: SIGKILL at any moment loses nothing; SIGTERM drains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import pytest
import trio

from orchestrator.core import JobStatus
from orchestrator.db import Database

from . import pg
from .e2e import start_simulator, wait_terminal

pytestmark = pytest.mark.slow


def _env(db_url: str, provider_url: str, **extra: str) -> dict[str, str]:
    return {
        "ORCHESTRATOR_STORAGE_ROOT": tempfile.mkdtemp(prefix="orch-renders-"),
        **os.environ,
        "DATABASE_URL": db_url,
        "REPLICATE_API_BASE": provider_url,
        "ORCHESTRATOR_MODEL": "sim/image",
        "ORCHESTRATOR_JOB_DEADLINE": "2",
        "ORCHESTRATOR_POLL_INITIAL": "0.05",
        "ORCHESTRATOR_POLL_MAX": "0.2",
        "ORCHESTRATOR_SCAN_INTERVAL": "0.5",
        "ORCHESTRATOR_GRACE": "1",
        "ORCHESTRATOR_LOG_FORMAT": "json",
        "ORCHESTRATOR_HTTP_PORT": "0",
        **extra,
    }


async def _start(env: dict[str, str], log_path) -> trio.Process:
    log = log_path.open("ab")
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", "orchestrator.cli", "run"], env=env, stdout=log, stderr=log
    )


async def _in_flight(db_url: str) -> int:
    rows = await pg.fetch(
        db_url,
        "SELECT count(*) AS n FROM orchestrator.jobs WHERE status IN ('starting', 'processing')",
    )
    return int(rows[0]["n"])


async def test_sigkill_mid_run_then_restart_settles_every_job_exactly_once(
    nursery, db: Database, db_url: str, tmp_path
):
    """Kill -9 with jobs in flight; after a restart every job is terminal and the audit is clean."""
    provider = await start_simulator(nursery, latency=(0.5, 1.5), seed=11)
    users = [f"user-{n}" for n in range(5)]
    for user in users:
        await db.grant(user, 20, plan="pro")
    kinds = [{}, {}, {}, {"simulate": "hang"}, {"simulate": "fail"}]
    ids = [
        await db.submit_job(users[n % 5], f"job {n}", params={**kinds[n % 5], "seed": n})
        for n in range(30)
    ]
    env = _env(db_url, provider)
    daemon = await _start(env, tmp_path / "daemon.log")
    try:
        with trio.fail_after(15):
            while await _in_flight(db_url) < 5:
                await trio.sleep(0.02)
    finally:
        daemon.kill()
        await daemon.wait()
    assert daemon.returncode == -signal.SIGKILL
    assert await _in_flight(db_url) >= 1

    restarted = await _start(env, tmp_path / "daemon.log")
    try:
        jobs = await wait_terminal(db, ids, timeout=30)
    finally:
        restarted.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await restarted.wait()
    assert restarted.returncode == 0
    assert all(job.status.terminal for job in jobs)
    debits = await pg.fetch(
        db_url,
        "SELECT job_id, count(*) AS n FROM orchestrator.ledger WHERE kind = 'debit' GROUP BY job_id",
    )
    assert all(row["n"] == 1 for row in debits)
    audit = subprocess.run(  # noqa: ASYNC221  (a short CLI call, after the daemons are gone)
        [sys.executable, "-m", "orchestrator.cli", "audit"],
        env={**os.environ, "DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "audit clean" in audit.stdout


async def test_sigterm_stops_intake_and_leaves_running_jobs_to_recovery(
    nursery, db: Database, db_url: str, tmp_path
):
    """A graceful stop waits the grace period, exits 0, and loses nothing it leaves behind."""
    provider = await start_simulator(nursery)
    await db.grant("alice", 5, plan="pro")
    job_id = await db.submit_job("alice", "slow", params={"simulate": "hang"})
    env = _env(db_url, provider, ORCHESTRATOR_JOB_DEADLINE="30")
    daemon = await _start(env, tmp_path / "daemon.log")
    with trio.fail_after(15):
        while await _in_flight(db_url) < 1:
            await trio.sleep(0.02)
    stopping = trio.current_time()
    daemon.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        await daemon.wait()
    assert daemon.returncode == 0
    assert trio.current_time() - stopping < 5
    job = await db.job(job_id)
    assert job is not None
    assert job.status is JobStatus.PROCESSING
    log = (tmp_path / "daemon.log").read_text()
    assert '"jobs_left_for_recovery": 1' in log
