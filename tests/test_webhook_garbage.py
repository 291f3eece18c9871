"""Webhook garbage gets a 4xx and one warning line, never a 500, and records nothing.

The corpus in tests/corpus/webhooks/ goes through the daemon's real HTTP
endpoint; Hypothesis then throws arbitrary headers, indices and bodies at the
handler's checks, which must refuse them without raising.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.core import MAX_OUTPUTS
from orchestrator.db import Database, DbUnavailable
from orchestrator.metrics import Metrics
from orchestrator.providers import KieProvider, ReplicateProvider
from orchestrator.webhooks import Reply, WebhookHandler, output_index

from . import pg
from .e2e import start_simulator, wait_terminal
from .test_webhooks import SECRET, headers, start_webhook_daemon

CORPUS = sorted((Path(__file__).parent / "corpus" / "webhooks").glob("*.json"))


def _request(case: dict[str, Any], job_id: uuid.UUID) -> tuple[str, bytes, dict[str, str]]:
    body = base64.b64decode(case["body_b64"]) if "body_b64" in case else str(case["body"]).encode()
    msg_id = "m" * case["msg_id_repeat"] if "msg_id_repeat" in case else None
    sent = headers(body, age_s=case.get("age_s", 0), msg_id=msg_id)
    if "signature" in case:
        sent["webhook-signature"] = case["signature"]
    if "timestamp" in case:
        sent["webhook-timestamp"] = case["timestamp"]
    query = case.get("query", f"job_id={job_id}")
    if "idx" in case:
        query += "&" + httpx.QueryParams({"idx": case["idx"]}).__str__()
    return query, body, sent


def test_the_corpus_covers_every_refusal():
    results = {json.loads(path.read_text())["result"] for path in CORPUS}
    assert results == {
        "bad_signature",
        "body_not_utf8",
        "malformed",
        "no_job_id",
        "bad_output_index",
        "bad_webhook_id",
    }


async def test_every_corpus_webhook_is_refused_with_its_code_and_nothing_recorded(
    nursery, db: Database, db_url: str
):
    await db.grant("ann", 1)
    job_id = await db.submit_job("ann", "a lake")
    await db.request_cancel(job_id)
    provider = await start_simulator(nursery)
    daemon = await start_webhook_daemon(nursery, db_url, provider)
    await wait_terminal(db, [job_id])
    books = await pg.fetch(db_url, "SELECT user_id, balance FROM orchestrator.accounts")

    async with httpx.AsyncClient(trust_env=False) as client:
        for path in CORPUS:
            case = json.loads(path.read_text())
            query, body, sent = _request(case, job_id)
            with structlog.testing.capture_logs() as logged:
                response = await client.post(
                    f"{daemon.http_url}/webhooks/replicate?{query}", content=body, headers=sent
                )
            assert (response.status_code, response.json()["result"]) == (
                case["status"],
                case["result"],
            ), path.name
            assert [line["log_level"] for line in logged] == ["warning"], path.name
            assert "exc_info" not in logged[0], path.name

    events = await pg.fetch(db_url, "SELECT count(*) AS n FROM orchestrator.webhook_events")
    assert events[0]["n"] == 0
    assert await pg.fetch(db_url, "SELECT user_id, balance FROM orchestrator.accounts") == books
    assert (await db.audit()).ok
    async with httpx.AsyncClient(trust_env=False) as client:
        assert (await client.get(f"{daemon.http_url}/healthz")).status_code == 200


_text = st.text(st.characters(codec="utf-8"), max_size=60)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    signature=st.one_of(_text, st.builds(lambda s: "v1," + s, _text)),
    timestamp=st.one_of(_text, st.integers().map(str)),
    msg_id=_text,
    job_param=st.one_of(st.none(), _text, st.uuids().map(str)),
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | _text,
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    ),
    kie=st.booleans(),
    signed=st.booleans(),
)
def test_garbage_never_raises_out_of_the_webhook_checks(
    signature, timestamp, msg_id, job_param, body, kie, signed
):
    client = httpx.AsyncClient()
    provider = (
        KieProvider(client, base_url="http://127.0.0.1:9", token="t", model="m")
        if kie
        else ReplicateProvider(client, base_url="http://127.0.0.1:9", token="t", model="m/m")
    )
    handler = WebhookHandler(None, None, {}, secret=SECRET)  # type: ignore[arg-type]
    sent = (
        headers(body)
        if signed
        else {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
    )
    reply = handler._authentic(provider, sent, job_param, body)
    if isinstance(reply, Reply):
        assert 400 <= reply.status < 500
    else:
        assert signed
        job_id, prediction = reply
        assert str(job_id) == job_param
        assert prediction.id


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=12), st.integers(-10, 10**6).map(str)))
def test_an_output_index_is_a_short_ascii_number_or_refused(raw):
    idx = output_index(raw)
    if idx is not None:
        assert 0 <= idx < MAX_OUTPUTS
        assert raw in (None, "") or (raw.isascii() and int(raw) == idx)


class _DatabaseDown:
    async def webhook_delivery(self, *_args):
        raise DbUnavailable("database unavailable: FileNotFoundError")


async def test_a_webhook_during_a_postgres_restart_gets_503_and_one_warning():
    """The provider retries a 5xx; a traceback per delivery while Postgres restarts did not help."""
    async with httpx.AsyncClient() as client:
        provider = ReplicateProvider(client, base_url="http://127.0.0.1:9", token="t", model="m/m")
        handler = WebhookHandler(
            _DatabaseDown(),  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            {"replicate": provider},
            secret=SECRET,
            observer=Metrics(),
        )
        body = json.dumps({"id": "abcdefghijklmnopqrstuvwxyz", "status": "succeeded"}).encode()
        with structlog.testing.capture_logs() as logged:
            reply = await handler.handle(
                "replicate", headers(body), str(uuid.uuid4()), body, idx_param="0"
            )
    assert (reply.status, reply.result) == (503, "database_unavailable")
    assert [line["log_level"] for line in logged] == ["warning"]
