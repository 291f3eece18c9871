"""Callbacks: every ending POSTed signed to its job's callback_url, at least once.

The pure rules first (body, backoff, give-up), then end to end: real Postgres, the
simulator, a real daemon and a receiver on loopback, with short windows and backoffs.
The kill-during-delivery case runs daemons as processes (tests/test_callbacks_process.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest
import trio

from orchestrator.core import (
    CallbackDue,
    CallbackOutput,
    CallbackPolicy,
    ErrorCode,
    JobEvent,
    JobStatus,
    callback_body,
)
from orchestrator.db import Database, InvalidRequest

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal
from .receiver import SECRET, Receiver, start_receiver

FINISHED = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)


def _due(**changes: object) -> CallbackDue:
    event = JobEvent(7, uuid.UUID(int=1), "ana", JobStatus.SUCCEEDED, None, FINISHED)
    values: dict[str, object] = {
        "seq": 7,
        "attempt": 1,
        "url": "https://app.test/hook",
        "created_at": FINISHED,
        "event": event,
        "message": "1 outputs delivered",
        "outputs": (CallbackOutput(0, "https://cdn.test/0.png", "ab" * 32, "image/png", 10),),
    }
    return CallbackDue(**(values | changes))  # type: ignore[arg-type]


def test_the_body_is_the_event_and_its_outputs_whatever_the_attempt():
    first, again = callback_body(_due()), callback_body(_due(attempt=5))
    assert first == again  # the attempt number is not part of what the app hears
    envelope = json.loads(first)
    assert envelope["type"] == "job.ended"
    assert envelope["data"] == {
        "seq": 7,
        "job_id": str(uuid.UUID(int=1)),
        "user_id": "ana",
        "status": "succeeded",
        "error_code": None,
        "message": "1 outputs delivered",
        "finished_at": FINISHED.isoformat(),
        "outputs": [
            {
                "idx": 0,
                "public_url": "https://cdn.test/0.png",
                "sha256": "ab" * 32,
                "content_type": "image/png",
                "size_bytes": 10,
            }
        ],
    }
    assert _due().webhook_id == "evt_7"


def test_retries_back_off_exponentially_with_jitter_and_stop_at_the_window():
    policy = CallbackPolicy(initial_s=1.0, max_s=60.0, window_s=600.0)
    assert [policy.retry_in(n, 0.0, 0.999999) for n in (1, 2, 3, 4)] == pytest.approx(
        [1.0, 2.0, 4.0, 8.0], rel=1e-5
    )
    assert policy.retry_in(1, 0.0, 0.0) == pytest.approx(0.5)
    assert policy.retry_in(30, 0.0, 0.99) == pytest.approx(60 * 0.995)
    assert policy.retry_in(2, 598.5, 0.99) is None  # would land past the window: give up
    assert policy.retry_in(2, 590.0, 0.99) == pytest.approx(1.99)


def _callback_settings(db_url: str, provider: str, receiver: Receiver, **overrides: object):
    values: dict[str, object] = {
        "callback_hosts": (receiver.url,),
        "callback_secret": SECRET,
        "callback_backoff_s": 0.05,
        "callback_timeout_s": 1.0,
    }
    return settings_for(db_url, provider, **(values | overrides))


async def _deliveries(db_url: str) -> dict[uuid.UUID, dict[str, object]]:
    rows = await pg.fetch(db_url, "SELECT * FROM orchestrator.callback_deliveries")
    return {row["job_id"]: dict(row) for row in rows}


async def test_every_ending_reaches_the_receiver_signed_with_its_event_id(
    nursery, db: Database, db_url: str
):
    """Success (two outputs), failure, rejection, cancel: each POSTed once, signed, evt_<seq>."""
    provider = await start_simulator(nursery)
    receiver = await start_receiver(nursery)
    daemon = await start_daemon(nursery, _callback_settings(db_url, provider, receiver))
    await db.grant("ana", 4, plan="pro")
    hook = f"{receiver.url}/hooks/generation?app=demo"
    two = await db.submit_job("ana", "two cats", num_outputs=2, callback_url=hook)
    broken = await db.submit_job("ana", "x", params={"simulate": "fail"}, callback_url=hook)
    costly = await db.submit_job("ana", "too many", num_outputs=5, callback_url=hook)
    hung = await db.submit_job("ana", "hang", params={"simulate": "hang"}, callback_url=hook)
    quiet = await db.submit_job("ana", "no callback")
    await db.request_cancel(hung)
    ids = [two, broken, costly, hung, quiet]
    await wait_terminal(db, ids)
    await receiver.wait_for(4)
    with trio.fail_after(10):
        while sum(1 for d in (await _deliveries(db_url)).values() if d["delivered_at"]) < 4:
            await trio.sleep(0.05)
    events = {e.job_id: e for e in await db.job_events_after(0)}
    assert set(events) == set(ids)
    by_job = {uuid.UUID(str(r.data["job_id"])): r for r in receiver.requests}
    assert set(by_job) == {two, broken, costly, hung}
    for job_id, request in by_job.items():
        event = events[job_id]
        assert request.verified
        assert request.webhook_id == f"evt_{event.seq}"
        assert request.path == "/hooks/generation"
        assert request.data["status"] == event.status.value
        assert request.data["error_code"] == (event.error_code and event.error_code.value)
    assert by_job[costly].data["error_code"] == ErrorCode.INSUFFICIENT_CREDITS.value
    outputs = by_job[two].data["outputs"]
    assert [o["idx"] for o in outputs] == [0, 1]  # type: ignore[index]
    assert all(o["public_url"] and o["sha256"] for o in outputs)  # type: ignore[union-attr]
    rows = await _deliveries(db_url)
    assert {job_id: rows[job_id]["attempts"] for job_id in by_job} == dict.fromkeys(by_job, 1)
    assert len(receiver.requests) == 4  # each once: a 2xx ends it
    assert daemon.metrics.sample("orchestrator_callbacks_total", {"outcome": "delivered"}) == 4


async def test_a_failing_receiver_is_retried_then_given_up_visibly_and_redelivered_on_demand(
    nursery, db: Database, db_url: str
):
    provider = await start_simulator(nursery)
    failing = {"on": True}
    receiver = await start_receiver(
        nursery, Receiver(answer=lambda _r: 503 if failing["on"] else 200)
    )
    settings = _callback_settings(db_url, provider, receiver, callback_window_s=2.0)
    daemon = await start_daemon(nursery, settings)
    await db.grant("bo", 5)
    job_id = await db.submit_job("bo", "x", callback_url=f"{receiver.url}/h")
    await wait_terminal(db, [job_id])
    with trio.fail_after(10):
        while (await _deliveries(db_url))[job_id]["failed_at"] is None:
            await trio.sleep(0.05)
    row = (await _deliveries(db_url))[job_id]
    assert row["attempts"] >= 3
    assert (row["last_status"], row["delivered_at"]) == (503, None)
    assert "503" in row["last_error"]
    assert len(receiver.requests) == row["attempts"]
    assert len({r.webhook_id for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1  # every attempt says the same
    assert all(r.verified for r in receiver.requests)
    assert daemon.metrics.sample("orchestrator_callbacks_total", {"outcome": "failed"}) == 1
    assert daemon.metrics.sample("orchestrator_callbacks_total", {"outcome": "retried"}) >= 2

    listed = await _cli(db_url, "callbacks", "--failed", "--json")
    (failed,) = [json.loads(line) for line in listed.stdout.decode().splitlines()]
    assert failed["job_id"] == str(job_id)
    assert failed["last_status"] == 503

    failing["on"] = False
    redeliver = await _cli(db_url, "callbacks", "--redeliver", str(failed["seq"]))
    assert redeliver.returncode == 0, redeliver.stderr
    with trio.fail_after(10):
        while (await _deliveries(db_url))[job_id]["delivered_at"] is None:
            await trio.sleep(0.05)
    assert receiver.requests[-1].status == 200
    assert receiver.requests[-1].webhook_id == receiver.requests[0].webhook_id


async def test_a_callback_whose_host_is_off_the_list_at_delivery_gets_no_request(
    nursery, db: Database, db_url: str
):
    """The allow-list is checked again at delivery: an ending owed to a host off it is given
    up at once as refused (no alert counts those: a submitter can cause them at will)."""
    provider = await start_simulator(nursery)
    receiver = await start_receiver(nursery)
    await db.grant("cy", 5)
    job_id = await db.submit_job("cy", "x", callback_url=f"{receiver.url}/h")
    first = await start_daemon(nursery, _callback_settings(db_url, provider, receiver))
    await wait_terminal(db, [job_id])
    await receiver.wait_for(1)
    other = await db.submit_job("cy", "y", callback_url="http://127.0.0.1:9/h")
    await db.reject(other, ErrorCode.VALIDATION_ERROR, "refused by hand")
    with trio.fail_after(10):
        while (await _deliveries(db_url))[other]["failed_at"] is None:
            await trio.sleep(0.05)
    row = (await _deliveries(db_url))[other]
    assert "is not on ORCHESTRATOR_CALLBACK_HOSTS" in row["last_error"]
    assert row["last_status"] is None
    assert len(receiver.requests) == 1
    assert first.metrics.sample("orchestrator_callbacks_total", {"outcome": "refused"}) == 1
    assert first.metrics.sample("orchestrator_callbacks_total", {"outcome": "failed"}) == 0


async def test_a_receiver_that_never_answers_holds_one_attempt_for_its_timeout_only(
    nursery, db: Database, db_url: str
):
    """A hanging receiver costs one place for the timeout, not every other app's callbacks."""
    provider = await start_simulator(nursery)
    receiver = await start_receiver(
        nursery, Receiver(answer=lambda r: None if r.path == "/slow" else 200)
    )
    await start_daemon(nursery, _callback_settings(db_url, provider, receiver))
    await db.grant("eve", 10, plan="pro")
    slow = await db.submit_job("eve", "slow app", callback_url=f"{receiver.url}/slow")
    await wait_terminal(db, [slow])
    await receiver.wait_for(1)  # the slow one is being held open
    fast = [
        await db.submit_job("eve", f"fast {n}", callback_url=f"{receiver.url}/fast")
        for n in range(5)
    ]
    await wait_terminal(db, fast)
    with trio.fail_after(10):
        while True:
            rows = await _deliveries(db_url)
            if all(rows[j]["delivered_at"] for j in fast):
                break
            await trio.sleep(0.05)
        assert rows[slow]["delivered_at"] is None  # the fast ones did not wait for it
        while (await _deliveries(db_url))[slow]["attempts"] < 2:
            await trio.sleep(0.05)
    held = (await _deliveries(db_url))[slow]
    assert held["delivered_at"] is None
    assert "no answer within 1 s" in held["last_error"]
    receiver.released.set()


async def test_with_callbacks_off_an_owed_callback_is_given_up_not_left_owed(
    nursery, db: Database, db_url: str
):
    """A daemon without ORCHESTRATOR_CALLBACK_HOSTS refuses the job and settles what it owes."""
    provider = await start_simulator(nursery)
    daemon = await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("fox", 5)
    job_id = await db.submit_job("fox", "x", callback_url="https://app.example.com/hook")
    (job,) = await wait_terminal(db, [job_id])
    assert (job.status, job.error_code) == (JobStatus.REJECTED, ErrorCode.VALIDATION_ERROR)
    assert "callbacks are off here" in (job.error_message or "")
    with trio.fail_after(10):
        while (await _deliveries(db_url))[job_id]["failed_at"] is None:
            await trio.sleep(0.05)
    assert "callbacks are off here" in (await _deliveries(db_url))[job_id]["last_error"]
    assert await db.callbacks(failed=False) == []
    assert daemon.metrics.sample("orchestrator_callbacks_total", {"outcome": "refused"}) == 1


@pytest.mark.parametrize(
    "url",
    ["https://app.example.com/cb\x01", "https://app.example.com/a b", "http:///nohost"],
)
async def test_a_callback_url_no_client_could_send_to_is_refused_at_submit(db: Database, url: str):
    await db.grant("gil", 5)
    with pytest.raises(InvalidRequest, match="callback_url"):
        await db.submit_job("gil", "x", callback_url=url)


async def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI as an operator runs it, without blocking the daemon in this process."""
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "orchestrator.cli", *args],
            env={**os.environ, "DATABASE_URL": db_url},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
