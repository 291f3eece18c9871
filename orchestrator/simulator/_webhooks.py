"""Delivering the simulator's webhooks: the only part of it that makes outgoing requests.

`SimulatorState` decides what is owed and when, with every misbehaviour already drawn; the
`WebhookSender` here sleeps until the next message is due, then POSTs it like a provider
would: signed per Standard Webhooks, retried with backoff, and only ever to loopback, so a
simulator pointed at by mistake can never be made to call out to the internet.
"""

from __future__ import annotations

import ipaddress
import math
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import httpx
import trio
from standardwebhooks import Webhook

from ._state import (
    WEBHOOK_RETRIES,
    SimulatedPrediction,
    SimulatorState,
    WebhookDelivery,
    WebhookKind,
)

BACKOFF: Final = 0.05
_LOOPBACK_NAMES: Final = frozenset({"localhost"})

Render = Callable[[SimulatedPrediction], bytes]


def is_loopback(url: str) -> bool:
    """Whether ``url`` is http(s) to this machine, judged without any DNS lookup."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if parts.scheme not in {"http", "https"} or host is None:
        return False
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookSender:
    """Sends the webhooks a `SimulatorState` owes, as a background task.

    Messages for one prediction go out one after the other (so a stale event really lands
    after the final one); different predictions' messages go out concurrently.

    Args:
        client: Used for every delivery; ``trust_env=False`` so no proxy gets in between.
        wall_clock: Unix seconds, for ``webhook-timestamp``.
        secret: Standard Webhooks secret; ``None`` sends unsigned messages.
        delay: Seconds between an event and its first attempt.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        wall_clock: Callable[[], float],
        secret: str | None,
        delay: float = 0.0,
    ) -> None:
        self._client = client
        self._wall_clock = wall_clock
        self._signer = None if secret is None else Webhook(secret)
        self._delay = delay
        self._changed = trio.Event()

    def wake(self) -> None:
        """Look at the state again: something may now be due sooner than planned."""
        self._changed.set()

    async def run(
        self,
        state: SimulatorState,
        render: Render,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Deliver due webhooks until cancelled.

        Args:
            state: Says what is due; its clock must be Trio's, which this task sleeps on.
            render: Turns a prediction into the body the simulated provider would send.
            task_status: Started once the loop runs.
        """
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self._changed = trio.Event()
                for messages in state.take_due_webhooks():
                    nursery.start_soon(self._deliver_in_order, state, render, messages)
                due = state.next_webhook_at()
                with trio.move_on_at(math.inf if due is None else due):
                    await self._changed.wait()

    async def _deliver_in_order(
        self, state: SimulatorState, render: Render, messages: tuple[WebhookDelivery, ...]
    ) -> None:
        await trio.sleep(self._delay)
        wall_offset = self._wall_clock() - trio.current_time()
        newest: int | None = None
        for message in messages:
            if not is_loopback(message.url):
                state.note_webhook("refused")
                continue
            stamp: int | None = None
            if message.kind is WebhookKind.STALE:
                stamp = math.floor(message.moment + wall_offset)
                if newest is not None:
                    stamp = min(stamp, newest - 1)
            sent_at = await self._deliver(state, render, message, stamp)
            newest = sent_at if newest is None else max(newest, sent_at)

    async def _deliver(
        self,
        state: SimulatorState,
        render: Render,
        message: WebhookDelivery,
        stamp: int | None,
    ) -> int:
        """Attempt a message until it lands or its retries run out; the last timestamp used."""
        body = render(message.prediction)
        sent_at = 0
        for attempt in range(WEBHOOK_RETRIES + 1):
            if attempt:
                await trio.sleep(BACKOFF * 2 ** (attempt - 1))
            sent_at = stamp if stamp is not None else math.floor(self._wall_clock())
            state.note_webhook("attempted")
            if attempt >= message.drops and await self._post(message, body, sent_at):
                state.note_webhook("delivered")
                return sent_at
            state.note_webhook("failed")
        state.note_webhook("abandoned")
        return sent_at

    async def _post(self, message: WebhookDelivery, body: bytes, timestamp: int) -> bool:
        headers = {
            "content-type": "application/json",
            "webhook-id": message.webhook_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._signer is not None:
            moment = datetime.fromtimestamp(timestamp, UTC)
            headers["webhook-signature"] = self._signer.sign(
                message.webhook_id, moment, body.decode()
            )
        try:
            response = await self._client.post(message.url, content=body, headers=headers)
        except httpx.HTTPError:
            return False
        return response.is_success
