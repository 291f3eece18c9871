"""The submitter examples, run end to end as an app developer would run them.

Each example (examples/node, TypeScript on node-postgres; examples/python, asyncpg on
asyncio) runs as a child process on a login granted only `submitter`, against a real
daemon and the simulator in this process, with outputs in files or in a bucket. Its
summary line says what it saw; the database says what happened; they must agree: every
ending heard once, in seq order, across a dropped LISTEN connection, and every output's
bytes matching its row.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from orchestrator.db import Database

from . import pg
from .e2e import settings_for, start_daemon, start_simulator

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NODE_DIR = EXAMPLES / "node"
# Written into node_modules after a successful `npm ci`: the digest of the manifest and
# lockfile it installed, so a later session skips the install while they are unchanged.
INSTALL_STAMP = NODE_DIR / "node_modules" / ".installed-from.sha256"

USERS = ("app-ana", "app-bo", "app-cy")
BROKE = "app-broke"
JOBS = 30
RUN_TIMEOUT_S = 60


def _npm(npm: str, *args: str, timeout: float) -> None:
    done = subprocess.run(
        [npm, *args], cwd=NODE_DIR, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"npm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="session")
def node_submitter() -> list[str]:
    """`npm ci` once (skipped while node_modules is what the lockfile says), then a build."""
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm is not None, "npm (with Node.js 20) is needed to run the node example"
    assert node is not None, "Node.js 20 is needed to run the node example"
    digest = hashlib.sha256(
        (NODE_DIR / "package.json").read_bytes() + (NODE_DIR / "package-lock.json").read_bytes()
    ).hexdigest()
    if not INSTALL_STAMP.is_file() or INSTALL_STAMP.read_text() != digest:
        _npm(npm, "ci", "--no-audit", "--no-fund", timeout=300)
        INSTALL_STAMP.write_text(digest)
    _npm(npm, "run", "build", timeout=120)
    return [node, str(NODE_DIR / "dist" / "submitter.js")]


@pytest.fixture(params=["node", "python"])
def example(request: pytest.FixtureRequest) -> list[str]:
    """The command that runs one example."""
    if request.param == "node":
        command: list[str] = request.getfixturevalue("node_submitter")
        return command
    return [sys.executable, str(EXAMPLES / "python" / "submitter.py")]


@asynccontextmanager
async def submitter_login(db_url: str) -> AsyncIterator[str]:
    """A LOGIN role that is a member of `submitter` and nothing else, with a fresh password.

    Roles are cluster-wide: the name is unique to this test, and it is dropped at the end.
    """
    name = f"app_{uuid.uuid4().hex[:12]}"
    password = secrets.token_hex(16)
    await pg.execute(db_url, f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE submitter")
    try:
        yield pg.as_login(db_url, name, password)
    finally:
        await pg.execute(
            db_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            name,
        )
        await pg.execute(db_url, f"DROP ROLE IF EXISTS {name}")


async def _run_example(
    command: list[str], url: str, *, timeout_s: float = RUN_TIMEOUT_S
) -> tuple[int, dict[str, object], str]:
    """Run an example to its end (bounded); its exit status, summary line and stderr."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "EXAMPLE_JOBS": str(JOBS),
        "EXAMPLE_USERS": ",".join(USERS),
        "EXAMPLE_BROKE_USER": BROKE,
        "EXAMPLE_TIMEOUT_S": str(timeout_s),
    }
    with trio.fail_after(timeout_s + 30):
        done = await trio.run_process(
            command, env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    lines = stdout.strip().splitlines()
    assert lines, f"no summary line; exit {done.returncode}; stderr:\n{stderr}"
    summary: dict[str, object] = json.loads(lines[-1])
    return done.returncode, summary, stderr


async def _grant_credits(db: Database, db_url: str) -> None:
    roomy = await pg.plan(db_url, max_inflight=JOBS)
    for user in USERS:
        await db.grant(user, 100, plan=roomy)
    await db.grant(BROKE, 1)  # the free plan: its job of 5 outputs costs 5


async def test_an_app_hears_every_ending_once_in_order_across_a_reconnect_and_gets_its_outputs(
    nursery: trio.Nursery,
    db: Database,
    db_url: str,
    storage: dict[str, object],
    example: list[str],
):
    """An example app sees each of its jobs end once, in seq order, and every output verifies."""
    provider = await start_simulator(nursery, latency=(0.2, 1.6))
    settings = settings_for(db_url, provider, job_deadline_s=10.0, **storage)
    daemon = await start_daemon(nursery, settings)
    await _grant_credits(db, db_url)

    async with submitter_login(db_url) as url:
        status, summary, stderr = await _run_example(example, url)

    assert status == 0, f"exit {status}: {summary['problems']}\n{stderr}"
    assert summary["ok"] is True
    assert (summary["problems"], summary["mismatches"]) == ([], [])
    jobs = {row["id"]: row for row in await pg.fetch(db_url, "SELECT * FROM orchestrator.jobs")}
    assert (summary["items"], summary["submitted"], len(jobs)) == (JOBS + 1, JOBS, JOBS)

    # The unknown user was refused by submit_jobs itself, and nothing was inserted for it.
    (refused,) = summary["refused_at_submit"]  # type: ignore[misc]
    assert refused["code"] == "OR001"
    assert refused["user_id"] not in {job["user_id"] for job in jobs.values()}

    # Every job's ending is in the feed, and the app handled exactly the feed, in its order.
    feed = await pg.fetch(
        db_url, "SELECT seq, job_id, status, error_code FROM orchestrator.job_events ORDER BY seq"
    )
    assert {event["job_id"] for event in feed} == set(jobs)
    handled = [
        (seq, uuid.UUID(job_id), status, code)
        for seq, job_id, status, code in summary["events"]  # type: ignore[attr-defined]
    ]
    assert handled == [tuple(event.values()) for event in feed]
    assert [seq for seq, *_ in handled] == sorted({seq for seq, *_ in handled})
    assert (summary["endings"], summary["duplicates"], summary["seqs_in_order"]) == (JOBS, 0, True)

    # Half heard live, then the LISTEN connection dropped; the catch-up read the rest.
    assert summary["reconnects"] == 1
    assert summary["caught_up"] >= 1
    assert summary["ended_while_away"] >= 1  # endings committed while nobody listened
    assert summary["heard_live"] + summary["caught_up"] == JOBS  # type: ignore[operator]
    assert summary["notifications"] >= 1

    # Exactly the one job past its user's balance was refused by the daemon, uncharged.
    (broke,) = [job for job in jobs.values() if job["user_id"] == BROKE]
    assert (broke["status"], broke["error_code"], broke["cost"]) == (
        "rejected",
        "INSUFFICIENT_CREDITS",
        None,
    )
    assert summary["refused_by_daemon"] == [
        {"job_id": str(broke["id"]), "user_id": BROKE, "code": "INSUFFICIENT_CREDITS"}
    ]
    ordinary = [job for job in jobs.values() if job["user_id"] != BROKE]
    assert {job["status"] for job in ordinary} == {"succeeded"}
    assert summary["statuses"] == {"rejected": 1, "succeeded": JOBS - 1}
    assert max(job["num_outputs"] for job in ordinary) > 1

    # Every output was fetched by its public URL, and its bytes hash to the row's sha256.
    outputs = await pg.fetch(
        db_url,
        "SELECT job_id, idx, size_bytes, sha256, public_url FROM orchestrator.outputs"
        " WHERE deleted_at IS NULL",
    )
    assert len(outputs) == sum(job["num_outputs"] for job in ordinary)
    fetched = {
        (uuid.UUID(job_id), idx): (size, sha256)
        for job_id, idx, size, sha256 in summary["outputs"]  # type: ignore[attr-defined]
    }
    assert fetched == {(o["job_id"], o["idx"]): (o["size_bytes"], o["sha256"]) for o in outputs}
    assert (summary["outputs_fetched"], summary["outputs_short"]) == (len(outputs), 0)
    if "storage_url" in storage:
        bucket = str(storage["storage_url"]).removeprefix("s3://")
        served_from = f"{storage['aws_endpoint_url']}/{bucket}/"
    else:
        served_from = f"{daemon.http_url}/renders/"
    assert all(o["public_url"].startswith(served_from) for o in outputs)

    assert (await db.audit()).ok


async def test_an_example_gives_up_within_its_timeout_when_its_jobs_never_end(
    db: Database, db_url: str, example: list[str]
):
    """No daemon runs: the example exits non-zero after its timeout, saying so, and never hangs."""
    await _grant_credits(db, db_url)
    async with submitter_login(db_url) as url:
        started = trio.current_time()
        status, summary, stderr = await _run_example(example, url, timeout_s=3)
        took = trio.current_time() - started

    assert status == 1
    assert summary["ok"] is False
    assert (summary["submitted"], summary["endings"]) == (JOBS, 0)
    (problem,) = summary["problems"]  # type: ignore[misc]
    assert re.fullmatch(rf"gave up after 3\.\d s: 0 of {JOBS} endings seen", problem), problem
    assert "gave up" in stderr
    assert took < 3 + 10
    queued = await pg.fetch(
        db_url, "SELECT count(*) AS n FROM orchestrator.jobs WHERE status = 'queued'"
    )
    assert queued[0]["n"] == JOBS


def _readme_snippet() -> str:
    """The Python block of the top-level README's "For submitters" section."""
    text = (EXAMPLES.parent / "README.md").read_text()
    section = text.split("## For submitters", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README's submitter section has no Python block"
    return match.group(1)


async def test_the_readme_snippet_follows_its_job_to_the_end_and_checks_its_outputs(
    nursery: trio.Nursery, db: Database, db_url: str, tmp_path: Path
):
    """The snippet the main README quotes runs as it stands, on a submitter login."""
    script = tmp_path / "snippet.py"
    script.write_text(_readme_snippet())
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("alice", 2)
    async with submitter_login(db_url) as url:
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, str(script)],
                env={**os.environ, "DATABASE_URL": url},
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert done.returncode == 0, done.stderr.decode()
    status, *outputs = done.stdout.decode().splitlines()
    assert status == "succeeded None"
    rows = await pg.fetch(db_url, "SELECT public_url FROM orchestrator.outputs ORDER BY idx")
    assert outputs == [f"{row['public_url']} True" for row in rows]
    assert len(outputs) == 2
    assert (await db.audit()).ok
