"""Garbage NOTIFY payloads on the jobs channel, sent to a running daemon.

Every file in tests/corpus/notify/ is one payload (or a job whose id is the payload:
`"payload_of": "terminal_job" | "unknown_user_job"`), sent `times` times by
`pg_notify`, each in its own transaction so Postgres does not fold repeats into one.
It must be counted as a bad payload (`"bad_payload"`), routed to nothing that runs
(`"routed"`), or refused by Postgres itself (`{"error": SQLSTATE}`). Afterwards the
daemon is ready and runs a good job, nothing was charged, the audit is clean, and no
traceback was logged. Long strings are `{"$repeat": s, "times": n}`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import pytest
import trio

from orchestrator.core import ErrorCode, JobStatus
from orchestrator.db import Database, slot_channel

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal

CORPUS = Path(__file__).parent / "corpus" / "notify"
OUTCOMES = ("bad_payload", "routed")


def _expand(value: Any) -> Any:
    if isinstance(value, dict) and "$repeat" in value:
        return value["$repeat"] * value["times"]
    return value


@attrs.frozen
class Case:
    name: str
    payload: str | None
    payload_of: str | None
    times: int
    expect: str | dict[str, str]


def _case(path: Path) -> Case:
    raw = json.loads(path.read_text())
    assert set(raw) <= {"why", "payload", "payload_of", "times", "expect"}, path.name
    assert raw["why"], path.name
    assert ("payload" in raw) != ("payload_of" in raw), path.name
    assert raw["expect"] in OUTCOMES or set(raw["expect"]) == {"error"}, path.name
    return Case(
        name=path.stem,
        payload=_expand(raw.get("payload")),
        payload_of=raw.get("payload_of"),
        times=raw.get("times", 1),
        expect=raw["expect"],
    )


CASES = [_case(path) for path in sorted(CORPUS.glob("*.json"))]


def test_the_corpus_covers_every_kind_of_bad_notification():
    assert len(CASES) >= 20
    assert {c.expect if isinstance(c.expect, str) else "error" for c in CASES} == {
        *OUTCOMES,
        "error",
    }
    assert {c.payload_of for c in CASES} == {None, "terminal_job", "unknown_user_job"}


async def _notify_many(url: str, payload: str, times: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        for _ in range(times):  # one transaction each: Postgres folds equal ones in one
            await conn.execute("SELECT pg_notify($1, $2)", slot_channel(0), payload)
    finally:
        await conn.close()


async def _notify(url: str, payload: str, times: int) -> asyncpg.PostgresError | None:
    try:
        await trio.to_thread.run_sync(lambda: asyncio.run(_notify_many(url, payload, times)))
    except asyncpg.PostgresError as exc:
        return exc
    return None


async def _books(db_url: str) -> list[asyncpg.Record]:
    return await pg.fetch(
        db_url, "SELECT user_id, balance FROM orchestrator.accounts ORDER BY user_id"
    )


async def test_every_garbage_notification_is_shrugged_off_and_the_daemon_lives(
    nursery, db: Database, db_url: str, capfd: pytest.CaptureFixture[str]
):
    await db.grant("ann", 5, plan="pro")
    cancelled = await db.submit_job("ann", "a lake")
    await db.request_cancel(cancelled)
    provider = await start_simulator(nursery)
    daemon = await start_daemon(nursery, settings_for(db_url, provider))
    rows = await pg.fetch(
        db_url,
        "INSERT INTO orchestrator.jobs (user_id, prompt, params, num_outputs)"
        " VALUES ('nobody-here', 'x', '{}', 1) RETURNING id",
        role="submitter",
    )
    unknown_user_job: uuid.UUID = rows[0]["id"]
    settled = await wait_terminal(db, [cancelled, unknown_user_job])
    ids = {"terminal_job": str(cancelled), "unknown_user_job": str(unknown_user_job)}
    books = await _books(db_url)
    stats = daemon.intake.stats
    bad_before, seen_before = stats.bad_payloads, stats.notifications

    sent = bad = 0
    for case in CASES:
        payload = case.payload if case.payload is not None else ids[str(case.payload_of)]
        refused = await _notify(db_url, payload, case.times)
        if isinstance(case.expect, dict):
            assert refused is not None, f"{case.name} was sent"
            assert refused.sqlstate == case.expect["error"], f"{case.name}: {refused!r}"
            continue
        assert refused is None, f"{case.name}: {refused!r}"
        sent += case.times
        bad += case.times if case.expect == "bad_payload" else 0

    with trio.fail_after(10):  # every payload reached intake and was judged
        while stats.notifications - seen_before < sent:
            await trio.sleep(0.05)
    assert stats.bad_payloads - bad_before == bad
    assert stats.notifications - seen_before == sent
    await trio.sleep(0.5)  # anything wrongly routed has had the time to act

    assert await daemon.readiness() == {
        "database": True,
        "schema": True,
        "listener": True,
        "leases": True,
    }
    assert await wait_terminal(db, [cancelled, unknown_user_job]) == settled  # untouched
    still_canceled, rejected = settled
    assert still_canceled.status is JobStatus.CANCELED
    assert (rejected.status, rejected.error_code) == (
        JobStatus.REJECTED,
        ErrorCode.VALIDATION_ERROR,
    )
    assert rejected.cost is None
    assert await _books(db_url) == books
    assert (await db.audit()).ok

    good = await db.submit_job("ann", "after the garbage", params={"seed": 1})
    (done,) = await wait_terminal(db, [good])
    assert done.status is JobStatus.SUCCEEDED
    assert (await db.audit()).ok
    logged = capfd.readouterr()
    assert "Traceback" not in logged.out + logged.err
