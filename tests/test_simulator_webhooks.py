"""The simulator's webhooks: what falls due when (fake clock), then real signed deliveries."""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import attrs
import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio
from standardwebhooks import Webhook

from orchestrator.core import PredictionRequest, PredictionStatus
from orchestrator.providers import KieProvider, ReplicateProvider
from orchestrator.simulator import (
    SimulatorConfig,
    SimulatorState,
    WebhookKind,
    serve_simulator,
)

from .test_simulator import FakeClock

SECRET = "whsec_" + base64.b64encode(b"simulator-webhook-secret-32bytes").decode()
HOOK = "http://127.0.0.1:9/hook"


# --- what falls due when, under a fake clock ---------------------------------------------


def state_with(clock: FakeClock, **config: Any) -> SimulatorState:
    return SimulatorState(SimulatorConfig(**config), clock=clock)


def test_a_completed_webhook_falls_due_exactly_when_the_prediction_finishes():
    """Nothing is handed out early; at the finish the completed event is, once."""
    clock = FakeClock()
    state = state_with(clock, latency=(1.0, 1.0))
    created = state.create({"prompt": "x"}, webhook=HOOK, webhook_events_filter=("completed",))

    assert state.next_webhook_at() == pytest.approx(1001.0)
    clock.advance(0.99)
    assert state.take_due_webhooks() == []
    clock.advance(0.01)
    ((message,),) = state.take_due_webhooks()
    assert message.kind is WebhookKind.COMPLETED
    assert message.url == HOOK
    assert message.prediction.id == created.id
    assert message.prediction.status == PredictionStatus.SUCCEEDED
    assert state.take_due_webhooks() == []
    assert state.next_webhook_at() is None


def test_without_a_filter_replicate_sends_start_then_completed():
    """Replicate's default is every event; the simulator emits start and completed in order."""
    clock = FakeClock()
    state = state_with(clock, latency=(1.0, 1.0))
    state.create({"prompt": "x"}, webhook=HOOK)
    clock.advance(5.0)

    ((start, completed),) = state.take_due_webhooks()
    assert (start.kind, completed.kind) == (WebhookKind.START, WebhookKind.COMPLETED)
    assert start.prediction.status == PredictionStatus.PROCESSING
    assert start.webhook_id != completed.webhook_id


def test_a_hung_prediction_owes_nothing_until_cancelled_then_is_due_at_once():
    """A hang has no known end; cancelling it makes the completed event due immediately."""
    clock = FakeClock()
    changes: list[None] = []
    state = SimulatorState(SimulatorConfig(), clock=clock, on_change=lambda: changes.append(None))
    created = state.create(
        {"prompt": "x", "simulate": "hang"}, webhook=HOOK, webhook_events_filter=("completed",)
    )
    clock.advance(1e6)
    assert state.next_webhook_at() is None

    state.cancel(created.id)
    assert state.next_webhook_at() == clock.now
    ((message,),) = state.take_due_webhooks()
    assert message.prediction.status == PredictionStatus.CANCELED
    assert len(changes) == 2


def test_duplicates_and_stale_events_are_drawn_after_the_final_one():
    """With both rates at 1 a final event is followed by its twin, then by a stale one."""
    clock = FakeClock()
    state = state_with(
        clock, latency=(1.0, 1.0), webhook_duplicate_rate=1.0, webhook_reorder_rate=1.0
    )
    state.create({"prompt": "x"}, webhook=HOOK, webhook_events_filter=("completed",))
    clock.advance(1.0)

    ((final, twin, stale),) = state.take_due_webhooks()
    assert twin.kind is WebhookKind.DUPLICATE
    assert twin.webhook_id == final.webhook_id
    assert twin.prediction == final.prediction
    assert stale.kind is WebhookKind.STALE
    assert stale.webhook_id != final.webhook_id
    assert stale.prediction.status == PredictionStatus.PROCESSING
    assert stale.moment < final.moment
    webhooks = state.stats()["webhooks"]
    assert isinstance(webhooks, dict)
    assert (webhooks["duplicated"], webhooks["reordered"]) == (1, 1)


def test_webhook_draws_never_shift_the_api_draws():
    """Webhook misbehaviour has its own random stream: prediction ids stay the same."""
    quiet = state_with(FakeClock(), seed=7)
    noisy = state_with(FakeClock(), seed=7, webhook_failure_rate=0.9, webhook_duplicate_rate=0.9)
    for state in (quiet, noisy):
        for _ in range(3):
            state.create({"prompt": "x", "simulate": "succeed"}, webhook=HOOK)
            state.take_due_webhooks()
    assert [p.id for p in quiet.list_page()[0]] == [p.id for p in noisy.list_page()[0]]


@pytest.mark.parametrize("secret", ["not-a-secret", "whsec_", "whsec_!!!"])
def test_a_malformed_webhook_secret_is_refused_at_construction(secret: str):
    """A simulator never starts with a secret it could not sign with."""
    with pytest.raises(ValueError, match="webhook_secret"):
        SimulatorConfig(webhook_secret=secret)


def test_the_webhook_secret_never_appears_in_the_configs_repr():
    """Logging the configuration must not leak the signing secret."""
    assert SECRET not in repr(SimulatorConfig(webhook_secret=SECRET))


# --- real deliveries over loopback HTTP --------------------------------------------------


@attrs.frozen
class Delivery:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An ASGI app recording every POST; answers ``statuses`` in turn, then 204."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self._statuses = list(statuses)
        self.sender, self.deliveries = trio.open_memory_channel[Delivery](100)

    async def __call__(self, scope: Any, receive: Callable[..., Any], send: Callable[..., Any]):
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body", False):
                break
        status = self._statuses.pop(0) if self._statuses else 204
        if status < 300:
            self.sender.send_nowait(
                Delivery(
                    path=scope["path"],
                    query=urllib.parse.parse_qs(scope["query_string"].decode()),
                    headers={k.decode(): v.decode() for k, v in scope["headers"]},
                    body=body,
                )
            )
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def next(self) -> Delivery:
        return await self.deliveries.receive()


@contextlib.asynccontextmanager
async def world(
    receiver: Receiver, **config: Any
) -> AsyncIterator[tuple[str, str, httpx.AsyncClient]]:
    """A receiver and a simulator on loopback; yields (simulator URL, receiver URL, client)."""
    server_config = hypercorn.config.Config()
    server_config.bind = ["127.0.0.1:0"]
    server_config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn.trio.serve, receiver, server_config))
        sim_config = SimulatorConfig(**({"latency": (0.01, 0.02)} | config))
        base: str = await nursery.start(serve_simulator, sim_config)
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
            yield base, binds[0], client
        nursery.cancel_scope.cancel()


def job(webhook_url: str | None) -> PredictionRequest:
    return PredictionRequest(
        job_id=uuid.uuid4(),
        prompt="a lighthouse",
        params={},
        num_outputs=1,
        webhook_url=webhook_url,
    )


async def webhook_stats(client: httpx.AsyncClient, base: str) -> dict[str, int]:
    stats: dict[str, int] = (await client.get(f"{base}/_sim/stats")).json()["webhooks"]
    return stats


async def stats_when(
    client: httpx.AsyncClient, base: str, done: Callable[[dict[str, int]], bool]
) -> dict[str, int]:
    while not done(stats := await webhook_stats(client, base)):
        await trio.sleep(0.01)
    return stats


async def test_a_completed_replicate_event_arrives_signed_and_verifiable():
    """The receiver gets the finished prediction, and Standard Webhooks verifies its signature."""
    receiver = Receiver()
    with trio.fail_after(5):
        async with world(receiver, webhook_secret=SECRET) as (base, hook, client):
            provider = ReplicateProvider(client, base_url=base, token="t", model="sim/image")
            request = job(f"{hook}/webhooks/replicate")
            submitted = await provider.submit(request)
            delivery = await receiver.next()
            stats = await stats_when(client, base, lambda s: s["delivered"] == 1)

    payload = Webhook(SECRET).verify(delivery.body, delivery.headers)
    assert payload["id"] == submitted.id
    assert payload["status"] == "succeeded"
    assert delivery.path == "/webhooks/replicate"
    assert delivery.query["job_id"] == [str(request.job_id)]
    assert delivery.headers["webhook-id"].startswith("msg_")
    parsed = provider.parse_webhook(delivery.body)
    assert parsed.status == PredictionStatus.SUCCEEDED
    assert len(parsed.output) == 1
    assert stats["attempted"] == 1
    assert stats["failed"] == 0
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(delivery.body.replace(b"succeeded", b"failed"), delivery.headers)


async def test_a_duplicated_event_arrives_twice_with_the_same_webhook_id():
    """With ``webhook_duplicate_rate=1`` the same message lands twice, byte for byte."""
    receiver = Receiver()
    with trio.fail_after(5):
        async with world(receiver, webhook_secret=SECRET, webhook_duplicate_rate=1.0) as (
            base,
            hook,
            client,
        ):
            provider = ReplicateProvider(client, base_url=base, token="t", model="sim/image")
            await provider.submit(job(f"{hook}/hook"))
            first = await receiver.next()
            second = await receiver.next()
            stats = await stats_when(client, base, lambda s: s["delivered"] == 2)

    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    Webhook(SECRET).verify(second.body, second.headers)
    assert stats["duplicated"] == 1


async def test_a_stale_processing_event_arrives_after_the_final_one():
    """With ``webhook_reorder_rate=1`` a processing event with a new id and older time trails."""
    receiver = Receiver()
    with trio.fail_after(5):
        async with world(receiver, webhook_secret=SECRET, webhook_reorder_rate=1.0) as (
            base,
            hook,
            client,
        ):
            provider = ReplicateProvider(client, base_url=base, token="t", model="sim/image")
            await provider.submit(job(f"{hook}/hook"))
            final = await receiver.next()
            stale = await receiver.next()
            stats = await stats_when(client, base, lambda s: s["delivered"] == 2)

    assert Webhook(SECRET).verify(final.body, final.headers)["status"] == "succeeded"
    assert Webhook(SECRET).verify(stale.body, stale.headers)["status"] == "processing"
    assert stale.headers["webhook-id"] != final.headers["webhook-id"]
    assert int(stale.headers["webhook-timestamp"]) < int(final.headers["webhook-timestamp"])
    assert stats["reordered"] == 1


async def test_dropped_attempts_are_retried_until_every_event_arrives():
    """With most attempts dropped (seeded), retries still deliver each event exactly once."""
    receiver = Receiver()
    with trio.fail_after(5):
        # Seed 1 draws 2, 3, 0 and 3 leading drops for the four messages: within the retries.
        async with world(receiver, webhook_failure_rate=0.6, seed=1) as (base, hook, client):
            provider = ReplicateProvider(client, base_url=base, token="t", model="sim/image")
            submitted = {(await provider.submit(job(f"{hook}/hook"))).id for _ in range(4)}
            received = {(await receiver.next()).json()["id"] for _ in range(4)}
            stats = await stats_when(client, base, lambda s: s["delivered"] == 4)

    assert received == submitted
    assert stats["failed"] == 8
    assert stats["attempted"] == stats["delivered"] + stats["failed"]
    assert stats["abandoned"] == 0


async def test_a_message_dropped_on_every_attempt_is_abandoned_after_three_retries():
    """Retries are bounded: one try plus three retries, then the message is given up."""
    receiver = Receiver()
    with trio.fail_after(5):
        async with world(receiver, webhook_failure_rate=1.0) as (base, hook, client):
            provider = ReplicateProvider(client, base_url=base, token="t", model="sim/image")
            await provider.submit(job(f"{hook}/hook"))
            stats = await stats_when(client, base, lambda s: s["abandoned"] == 1)
    assert (stats["attempted"], stats["failed"], stats["delivered"]) == (4, 4, 0)
    assert receiver.deliveries.statistics().current_buffer_used == 0


async def test_receiver_errors_are_retried_like_dropped_attempts():
    """A receiver answering 500 twice gets the message on the third attempt."""
    receiver = Receiver(statuses=(500, 503))
    with trio.fail_after(5):
        async with world(receiver) as (base, hook, client):
            provider = ReplicateProvider(client, base_url=base, token="t", model="sim/image")
            await provider.submit(job(f"{hook}/hook"))
            await receiver.next()
            stats = await stats_when(client, base, lambda s: s["delivered"] == 1)
    assert (stats["attempted"], stats["failed"]) == (3, 2)


async def test_kie_mode_delivers_the_callback_envelope_to_the_callback_url():
    """KIE's callback is the recordInfo envelope, unsigned without a secret, job id in the URL."""
    receiver = Receiver()
    with trio.fail_after(5):
        async with world(receiver, api="kie") as (base, hook, client):
            provider = KieProvider(client, base_url=base, token="t", model="sim/image")
            request = job(f"{hook}/webhooks/kie")
            submitted = await provider.submit(request)
            delivery = await receiver.next()

    body = delivery.json()
    assert body["code"] == 200
    assert body["data"]["taskId"] == submitted.id
    assert body["data"]["state"] == "success"
    assert delivery.query["job_id"] == [str(request.job_id)]
    assert "webhook-signature" not in delivery.headers
    parsed = provider.parse_webhook(delivery.body)
    assert parsed.status == PredictionStatus.SUCCEEDED
    assert parsed.webhook == submitted.webhook


async def test_webhooks_to_anything_but_loopback_are_refused_and_counted():
    """A webhook URL off this machine is never contacted; the refusal shows in the stats."""
    receiver = Receiver()
    with trio.fail_after(5):
        async with world(receiver) as (base, _hook, client):
            provider = ReplicateProvider(client, base_url=base, token="t", model="sim/image")
            await provider.submit(job("http://192.0.2.1/hook"))
            await provider.submit(job("http://example.invalid/hook"))
            stats = await stats_when(client, base, lambda s: s["refused"] == 2)
    assert stats["attempted"] == 0
    assert stats["delivered"] == 0
