"""Webhooks: verified against an independent signer, processed once, and only a wake-up."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
import uuid

import httpx
import trio

from orchestrator.core import JobStatus, PredictionRequest
from orchestrator.db import Database
from orchestrator.providers import ReplicateProvider

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal

SECRET = "whsec_" + base64.b64encode(b"orchestrator-test-secret-0123456").decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks, written from the spec rather than with the library the daemon uses."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(
    body: bytes, *, secret: str = SECRET, msg_id: str | None = None, age_s: int = 0
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) - age_s
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,bm90LXRoaXMtb25l {sign(secret, msg_id, timestamp, body)}",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_webhook_daemon(nursery, db_url: str, provider: str, **overrides):
    port = free_port()
    settings = settings_for(
        db_url,
        provider,
        http_port=port,
        public_url=f"http://127.0.0.1:{port}",
        webhook_secret=SECRET,
        **overrides,
    )
    return await start_daemon(nursery, settings)


def prediction_body(prediction_id: str, status: str = "succeeded") -> bytes:
    return json.dumps(
        {
            "id": prediction_id,
            "status": status,
            "output": ["http://127.0.0.1:1/x.png"],
            "error": None,
        }
    ).encode()


async def test_signatures_from_an_independent_signer_verify_and_forgeries_are_refused(
    nursery, db: Database, db_url: str
):
    """Tampered body, wrong secret, stale timestamp, missing headers: 401 each, nothing recorded."""
    provider = await start_simulator(nursery)
    daemon = await start_webhook_daemon(nursery, db_url, provider)
    url = f"{daemon.http_url}/webhooks/replicate?job_id={uuid.uuid4()}"
    body = prediction_body("abcdefghijklmnopqrstuvwxyz")
    good = headers(body)
    cases = {
        "tampered body": (body.replace(b"succeeded", b"failed"), good),
        "wrong secret": (
            body,
            headers(body, secret="whsec_" + base64.b64encode(b"x" * 32).decode()),
        ),
        "stale timestamp": (body, headers(body, age_s=3600)),
        "missing headers": (body, {}),
    }
    async with httpx.AsyncClient(trust_env=False) as client:
        for name, (payload, sent) in cases.items():
            response = await client.post(url, content=payload, headers=sent)
            assert response.status_code == 401, name
        assert await pg.fetch(db_url, "SELECT * FROM orchestrator.webhook_events") == []
        accepted = await client.post(url, content=body, headers=good)
    assert accepted.status_code == 200
    assert accepted.json() == {"result": "unknown_job"}


async def test_a_hundred_concurrent_deliveries_of_one_webhook_are_processed_once(
    nursery, db: Database, db_url: str
):
    """Retries and duplicate deliveries of one webhook id count once."""
    provider = await start_simulator(nursery)
    await db.grant("ann", 1)
    job_id = await db.submit_job("ann", "a lake")
    await db.request_cancel(job_id)
    daemon = await start_webhook_daemon(nursery, db_url, provider)
    await wait_terminal(db, [job_id])
    body = prediction_body("abcdefghijklmnopqrstuvwxyz")
    sent = headers(body, msg_id="msg_once")
    url = f"{daemon.http_url}/webhooks/replicate?job_id={job_id}"
    results: list[str] = []
    async with httpx.AsyncClient(
        trust_env=False, limits=httpx.Limits(max_connections=100)
    ) as client:

        async def deliver() -> None:
            response = await client.post(url, content=body, headers=sent)
            assert response.status_code == 200
            results.append(response.json()["result"])

        async with trio.open_nursery() as deliveries:
            for _ in range(100):
                deliveries.start_soon(deliver)
    assert sorted(set(results)) == ["duplicate", "ignored"]
    assert results.count("ignored") == 1
    rows = await pg.fetch(db_url, "SELECT count(*) AS n FROM orchestrator.webhook_events")
    assert rows[0]["n"] == 1


async def test_signed_webhooks_finish_jobs_long_before_the_next_poll(
    nursery, db: Database, db_url: str
):
    """With webhooks on, completion arrives at once, with no poll at all.

    Duplicates and stale events change nothing.
    """
    provider = await start_simulator(
        nursery,
        latency=(0.2, 0.3),
        webhook_secret=SECRET,
        webhook_duplicate_rate=1.0,
        webhook_reorder_rate=1.0,
    )
    daemon = await start_webhook_daemon(
        nursery, db_url, provider, webhook_poll_s=30.0, job_deadline_s=20.0
    )
    await db.grant("wendy", 5, plan="pro")
    started = trio.current_time()
    job_id = await db.submit_job("wendy", "driven by webhooks")
    (job,) = await wait_terminal(db, [job_id], timeout=10)
    assert job.status is JobStatus.SUCCEEDED
    assert trio.current_time() - started < 5
    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(5):
            while True:
                text = (await client.get(f"{daemon.http_url}/metrics")).text
                if 'orchestrator_webhooks_total{provider="replicate",result="duplicate"}' in text:
                    break
                await trio.sleep(0.1)
        stats = (await client.get(f"{provider}/_sim/stats")).json()
    assert stats["gets"] == 0
    account = await db.account("wendy")
    assert account is not None
    assert account.balance == 4
    assert (await db.audit()).ok


async def test_a_webhook_for_a_prediction_whose_id_was_never_stored_settles_the_job(
    nursery, db: Database, db_url: str
):
    """Crash between submit and store: the webhook names the job, the id is recorded, it settles."""
    provider = await start_simulator(nursery, latency=(0.5, 0.6), webhook_secret=SECRET)
    daemon = await start_webhook_daemon(nursery, db_url, provider, job_deadline_s=20.0)
    await db.grant("lost", 5, plan="pro")
    rows = await pg.fetch(
        db_url,
        "INSERT INTO orchestrator.jobs (user_id, prompt, status, cost, inflight_seat, admitted_at,"
        " deadline_at) VALUES ('lost', 'crashed mid-submit', 'starting', 1, 1, now(),"
        " now() + interval '20 seconds') RETURNING id",
    )
    lost_id = rows[0]["id"]
    assert await db.debit("lost", lost_id, 1) == 4
    async with httpx.AsyncClient(trust_env=False) as client:
        replicate = ReplicateProvider(client, base_url=provider, token="t", model="sim/image")
        prediction = await replicate.submit(
            PredictionRequest(
                lost_id,
                "crashed mid-submit",
                {},
                1,
                webhook_url=f"{daemon.http_url}/webhooks/replicate?idx=0",
            )
        )
    (job,) = await wait_terminal(db, [lost_id], timeout=10)
    assert job.status is JobStatus.SUCCEEDED
    assert job.prediction_id == prediction.id
    account = await db.account("lost")
    assert account is not None
    assert account.balance == 4
    assert (await db.audit()).ok
