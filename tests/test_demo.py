"""`orchestrator demo` (the README's first command) and `submit --wait`, as users run them."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio

from orchestrator.db import embedded_server_running

from .e2e import settings_for, start_daemon, start_simulator

pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "160", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_demo_on_embedded_postgres_ends_with_a_clean_audit_and_leaves_nothing_running():
    """The main job: a burst through the real daemon, a clean audit, exit 0, nothing left behind."""
    home = Path(tempfile.mkdtemp(prefix="orch-demo-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--home", str(home), "demo", "--deadline", "2"],
        env={**env, "NO_COLOR": "1", "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit clean" in result.stdout
    for shown in ("DUPLICATE", "INSUFFICIENT_CREDITS", "TIMEOUT", "UPSTREAM_ERROR", "CANCELED"):
        assert shown in result.stdout
    assert "Traceback" not in result.stderr
    assert not embedded_server_running(home)
    log = (home / "demo.log").read_text()
    assert '"event": "job.timed_out"' in log


def test_the_demo_runs_against_a_given_database_too(db_url: str, tmp_path: Path):
    """With DATABASE_URL the demo uses that server and still audits clean."""
    result = _cli(
        "demo",
        "--deadline",
        "2",
        env={"DATABASE_URL": db_url, "ORCHESTRATOR_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit clean" in result.stdout


async def test_submit_wait_follows_the_job_and_exits_by_its_outcome(nursery, db, db_url):
    """`submit --wait` exits 0 for a success and 3 for a failure, after showing the job."""
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("wes", 5, plan="pro")
    env = {"DATABASE_URL": db_url}
    ok = await trio.to_thread.run_sync(lambda: _cli("submit", "wes", "a boat", "--wait", env=env))
    assert ok.returncode == 0, ok.stderr
    assert "succeeded" in ok.stdout
    bad = await trio.to_thread.run_sync(
        lambda: _cli("submit", "wes", "x", "--params", '{"simulate": "fail"}', "--wait", env=env)
    )
    assert bad.returncode == 3
    assert "UPSTREAM_ERROR" in bad.stdout
