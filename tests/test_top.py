"""`orchestrator top`: its figures over seeded jobs, its frame, and the live view in tmux."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from prometheus_client import generate_latest
from rich.console import Console

from orchestrator.cli import _top as top
from orchestrator.core import ErrorCode, JobStatus, StoredOutput
from orchestrator.db import Database
from orchestrator.metrics import Metrics

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal
from .test_webhooks import free_port

ROOT = Path(__file__).resolve().parent.parent


async def _seed(db: Database, url: str) -> dict[str, uuid.UUID]:
    """Jobs in known states: queued, starting, processing (2 predictions), ended four ways."""
    plan = await pg.plan(url, cost_per_output=2, max_inflight=10)
    await db.grant("alice", 100, plan=plan)
    await db.grant("bob", 100, plan=plan)
    ids = {
        name: await db.submit_job(user, f"prompt {name}", num_outputs=outputs)
        for name, user, outputs in [
            ("queued", "alice", 1),
            ("starting", "alice", 1),
            ("processing", "bob", 2),
            ("succeeded", "alice", 1),
            ("failed", "bob", 1),
            ("old_failed", "bob", 3),
            ("rejected", "alice", 1),
        ]
    }
    for name in ("starting", "processing", "succeeded", "failed", "old_failed"):
        assert (await db.admit(ids[name], deadline_s=120)).outcome == "admitted"
    for idx in (0, 1):
        assert await db.mark_processing(
            ids["processing"], provider="replicate", prediction_id=f"p{idx}", idx=idx
        )
    await db.finish(ids["succeeded"], JobStatus.SUCCEEDED, outputs=(StoredOutput(idx=0, url="u"),))
    await db.finish(ids["failed"], JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR, message="x")
    await db.finish(ids["old_failed"], JobStatus.FAILED, code=ErrorCode.TIMEOUT, message="x")
    assert await db.reject(ids["rejected"], ErrorCode.DUPLICATE, "dup")
    # One failure (and its refund of 6) ended three minutes ago: in the window, not the minute.
    await pg.script(
        url,
        "UPDATE orchestrator.jobs SET finished_at = clock_timestamp() - interval '3 minutes'"
        f" WHERE id = '{ids['old_failed']}';"
        "ALTER TABLE orchestrator.ledger DISABLE TRIGGER ledger_append_only;"
        "UPDATE orchestrator.ledger SET created_at = clock_timestamp() - interval '3 minutes'"
        f" WHERE job_id = '{ids['old_failed']}' AND kind = 'refund';"
        "ALTER TABLE orchestrator.ledger ENABLE TRIGGER ledger_append_only;",
    )
    return ids


async def test_top_figures_count_seeded_jobs(db: Database, db_url: str):
    """Counts now, ended per minute, refunds, in-flight by provider and the slowest are exact."""
    ids = await _seed(db, db_url)
    figures = await db.top_figures(window_minutes=5, slowest=10)
    assert figures.by_status == {"queued": 1, "starting": 1, "processing": 1}
    assert figures.finished_last_minute == {"succeeded": 1, "failed": 1, "rejected": 1}
    assert figures.finished_in_window == {"succeeded": 1, "failed": 2, "rejected": 1}
    # The failure refunds its 2 credits now; the old one refunded 6 three minutes ago.
    assert (figures.refunds_last_minute, figures.refunded_credits_last_minute) == (1, 2)
    assert (figures.refunds_in_window, figures.refunded_credits_in_window) == (2, 8)
    loads = {load.provider: (load.jobs, load.predictions) for load in figures.in_flight_by_provider}
    assert loads == {"replicate": (1, 2), None: (1, 0)}
    assert [job.job_id for job in figures.slowest] == [ids["starting"], ids["processing"]]
    first, second = figures.slowest
    assert (first.status, first.user_id, first.predictions, first.provider) == (
        "starting",
        "alice",
        0,
        None,
    )
    assert (second.status, second.num_outputs, second.predictions, second.provider) == (
        "processing",
        2,
        2,
        "replicate",
    )
    assert 0 <= first.age_s < 60
    assert first.deadline_in_s is not None
    assert 60 < first.deadline_in_s <= 120
    assert not hasattr(first, "prompt")
    # The bounds hold: one slow job asked for, a one-minute window.
    narrow = await db.top_figures(window_minutes=1, slowest=1)
    assert [job.job_id for job in narrow.slowest] == [ids["starting"]]
    assert narrow.finished_in_window == {"succeeded": 1, "failed": 1, "rejected": 1}
    assert narrow.refunds_in_window == 1
    # A ledger scan bounded to the newest row sees only the newest refund, if that.
    assert (await db.top_figures(ledger_rows=0)).refunds_in_window == 0


def _metrics_text(lags: list[float]) -> str:
    metrics = Metrics()
    metrics.process.mailbox_depth.set(7)
    metrics.process.jobs_running.set(3)
    metrics.cluster.slots_owned.set(1024)
    metrics.process.capacity_limit.set(64)
    for lag in lags:
        metrics.jobs.intake_lag.observe(lag)
    return generate_latest(metrics.registry).decode()


def test_metrics_are_parsed_and_admission_lag_is_windowed():
    """Gauges and the lag histogram come out of real /metrics text; lag is taken per window."""
    then = top.parse_metrics("m", _metrics_text([0.004] * 10), at=100.0)
    now = top.parse_metrics("m", _metrics_text([0.004] * 10 + [0.2] * 10), at=130.0)
    assert now.gauges["orchestrator_mailbox_depth"] == 7
    assert now.gauges["orchestrator_partition_slots_owned"] == 1024
    assert now.lag_count == 20
    assert now.version
    since_start = top.daemon_figures(now, None)
    assert since_start.admissions == 20
    assert since_start.lag_p50_s is not None
    assert since_start.lag_p50_s <= 0.005
    windowed = top.daemon_figures(now, then)
    assert (windowed.admissions, windowed.window_s) == (10, 30.0)
    assert windowed.lag_mean_s == pytest.approx(0.2)
    assert windowed.lag_p50_s is not None
    assert 0.2 <= windowed.lag_p50_s <= 0.5
    # A restarted daemon's counters fall: its lag is then taken since its start.
    assert top.daemon_figures(then, now).admissions == 10
    history = top.History(window_s=60)
    history.add(then)
    assert history.add(now).admissions == 10
    assert history.add(top.MetricsReading(url="m", at=140.0, error="ConnectError")).error


async def test_render_shows_the_figures(db: Database, db_url: str):
    """The frame, rendered without a terminal, carries every panel and the seeded figures."""
    ids = await _seed(db, db_url)
    history = top.History()
    history.add(top.parse_metrics("http://a/metrics", _metrics_text([0.004] * 4), at=0.0))
    up = history.add(top.parse_metrics("http://a/metrics", _metrics_text([0.004] * 9), at=20.0))
    down = top.daemon_figures(
        top.MetricsReading(url="http://b/metrics", at=0.0, error="ConnectError"), None
    )
    snapshot = top.Snapshot(
        taken_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        figures=await db.top_figures(),
        members=tuple(await db.cluster_members()),
        owners=tuple(await db.cluster_owners()),
        daemons=(up, down),
    )
    console = Console(record=True, width=160, color_system=None)
    console.print(top.render(snapshot))
    screen = console.export_text()
    for title in (
        "jobs",
        "queue and money",
        "in flight by provider",
        "daemons (/metrics)",
        "slot owners",
        "slowest in flight",
    ):
        assert title in screen
    assert "2026-01-02T03:04:05+00:00" in screen
    assert "1/2 metrics up" in screen
    assert "unreachable: ConnectError" in screen
    assert "5 (20 s)" in screen  # five admissions in the 20 s between the two readings
    assert str(ids["starting"]) in screen
    assert str(ids["processing"]) in screen
    assert str(ids["queued"]) not in screen  # only in-flight jobs are listed
    assert "prompt" not in screen.replace("prompt ", "")  # never a prompt's text
    assert "prompt starting" not in screen
    rows = _rows(screen)
    assert rows["failed"][:2] == ["1", "0.4"]  # ended in the last minute; 2 in 5 min
    assert rows["queued"][:1] == ["1"]
    assert "(nobody)" in screen  # no member holds a slot: every slot's queue is nobody's
    assert "1 (2 credits)" in screen


def _rows(screen: str) -> dict[str, list[str]]:
    """The words after each status on the lines of a screen that start the jobs table's rows."""
    rows = {}
    for line in screen.splitlines():
        words = [word for word in line.split() if word not in {"│", "┃"}]
        if words and words[0] in top._ORDER:
            rows[words[0]] = words[1:]
    return rows


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "COLUMNS": "160", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "top", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_once_prints_one_frame_and_survives_a_dead_metrics_endpoint(
    db: Database, db_url: str
):
    """`top --once` exits 0 with the database figures when /metrics does not answer."""
    await _seed(db, db_url)
    dead = f"127.0.0.1:{free_port()}"
    result = await trio.to_thread.run_sync(_cli, db_url, "--once", "--metrics", dead)
    assert result.returncode == 0, result.stderr
    assert f"http://{dead}/metrics" in result.stdout
    assert "unreachable: ConnectError" in result.stdout
    assert "0/1 metrics up" in result.stdout
    assert "slowest in flight" in result.stdout
    assert "replicate" in result.stdout


async def _tmux(socket: str, *args: str) -> str:
    done = await trio.run_process(
        ["tmux", "-L", socket, *args], capture_stdout=True, capture_stderr=True, check=False
    )
    return bytes(done.stdout).decode()


@pytest.mark.slow
async def test_live_view_in_tmux_against_a_live_daemon(nursery, db: Database, db_url: str):
    """The live view shows a running daemon's figures, refreshes, and exits 0 on Ctrl-C."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: sh ops/install-test-tools.sh (as root, on Debian)")
    provider = await start_simulator(nursery)
    daemon = await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("carol", 20, plan="pro")
    ids = [await db.submit_job("carol", f"a harbour at dawn {n}") for n in range(3)]
    jobs = await wait_terminal(db, ids)
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    with trio.fail_after(10):
        while not (members := await db.cluster_members()) or not members[0].slots:
            await trio.sleep(0.1)
    member = members[0].member_id

    socket = f"orch-top-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="orch-top-"))
    rc = work / "rc"
    command = " ".join(
        [
            # The shell may export the pane's size from before tmux resized it to 160x50;
            # without these, rich asks the terminal itself at every frame.
            "env -u COLUMNS -u LINES",
            shlex.quote(f"DATABASE_URL={db_url}"),
            shlex.quote(sys.executable),
            "-m orchestrator.cli top --metrics",
            shlex.quote(f"{daemon.http_url}/metrics"),
            "--metrics",
            shlex.quote(f"127.0.0.1:{free_port()}"),
        ]
    )
    # The shell only traps SIGINT, so Ctrl-C reaches `top` alone and the shell records its code.
    shell = f"trap true INT; {command}; echo $? > {shlex.quote(str(rc))}; sleep 30"
    try:
        await _tmux(socket, "new-session", "-d", "-x", "160", "-y", "50", "-c", str(ROOT), shell)
        screen = ""
        with trio.move_on_after(30):
            while not (
                _rows(screen).get("succeeded", [""])[0] == "3"
                and member in screen
                and "1/2 metrics up" in screen
            ):
                await trio.sleep(0.25)
                screen = await _tmux(socket, "capture-pane", "-p")
        assert member in screen, screen
        for text in ("jobs", "slot owners", "daemons (/metrics)", "unreachable", "1024 (0-1023)"):
            assert text in screen, screen
        assert _rows(screen)["succeeded"][:1] == ["3"], screen  # ended in the last minute
        stamp = next(line for line in screen.splitlines() if "orchestrator top" in line)
        # It refreshes: the clock in the header moves.
        with trio.fail_after(10):
            while stamp in screen:
                await trio.sleep(0.25)
                screen = await _tmux(socket, "capture-pane", "-p")
        await _tmux(socket, "send-keys", "C-c")
        with trio.fail_after(15):
            while not rc.exists() or not rc.read_text().strip():
                await trio.sleep(0.1)
        assert rc.read_text().strip() == "0"
        after = await _tmux(socket, "capture-pane", "-p")
        assert "slot owners" not in after  # the alternate screen is gone: the terminal is back
    finally:
        await _tmux(socket, "kill-server")
        shutil.rmtree(work, ignore_errors=True)
