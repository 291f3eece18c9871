"""Callbacks: each ending POSTed, signed, to the job's `callback_url`, at least once.

An app that cannot LISTEN (a serverless backend holds no connection between
requests) names a `callback_url`; the ending's transaction records the callback
owed beside its event (schema.sql, `callback_deliveries`), so nothing is lost
between the ending and the POST. The owner of the job's partition slot delivers
it: a NOTIFY on `orchestrator_job_events` wakes this loop, a scan every second
finds what is due (retries, and callbacks of slots just taken over from a daemon
that died mid-send), and each claim is one attempt of one daemon, started at once
and bounded by `ORCHESTRATOR_CALLBACK_TIMEOUT` as a whole, so a slow or trickling
receiver holds one place of the sender's concurrency, never the others.

Each POST is a Standard Webhooks message signed with `ORCHESTRATOR_CALLBACK_SECRET`;
its `webhook-id` is `evt_<seq>`, the same on every attempt and every daemon, so a
receiver deduplicates on it. A 2xx ends it; anything else (a non-2xx, a timeout, a
refused connection) is retried with jittered exponential backoff until the retry
window (24 h) has passed, then given up visibly (`failed`): `failed_at`, a metric,
`orchestrator callbacks --failed` and the web view. Redirects are never followed and
only hosts on `ORCHESTRATOR_CALLBACK_HOSTS` are ever called, at admission and again
here (the list may have changed since): a callback whose host is not on it, or owed
in a slot of a daemon with callbacks off, is given up at once without a request
(`refused`, which no alert counts: a submitter can cause it at will).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Protocol

import httpx
import structlog
import trio
from standardwebhooks import Webhook

from orchestrator.core import (
    EVENTS_CHANNEL,
    CallbackDue,
    CallbackPolicy,
    HostList,
    callback_body,
    callback_problem,
    origin,
)
from orchestrator.db import Database, DbError

log = structlog.get_logger("orchestrator.callbacks")

_BATCH: Final = 64
_CLAIM_MARGIN_S: Final = 5.0
_RECONNECT_MAX_S: Final = 10.0
_COUNTS_EVERY_S: Final = 10.0
_ERROR_CHARS: Final = 200


class CallbackObserver(Protocol):
    """What delivery reports for metrics; `orchestrator.metrics.CallbackMetrics` counts it.

    `outcome` is delivered, retried, failed (given up after the window) or refused
    (given up without a request: a host off the list, callbacks off here).
    """

    def callback_attempted(self, outcome: str, *, latency_s: float | None = None) -> None: ...

    def callbacks_owed(self, pending: int, failed: int) -> None: ...


class NullCallbackObserver:
    def callback_attempted(self, outcome: str, *, latency_s: float | None = None) -> None:
        pass

    def callbacks_owed(self, pending: int, failed: int) -> None:
        pass


class CallbackSender:
    """Delivers the callbacks due in this daemon's slots, as long as it runs.

    Without a `client` (callbacks off here: no hosts, no secret) it still claims what
    is owed in its slots, and gives each up at once as refused, so nothing waits for a
    sender that never comes.
    """

    def __init__(
        self,
        db: Database,
        client: httpx.AsyncClient | None,
        *,
        member: str,
        secret: str | None,
        hosts: HostList,
        policy: CallbackPolicy,
        scan_interval_s: float = 1.0,
        concurrency: int = 16,
        observer: CallbackObserver | None = None,
        jitter: Callable[[], float] = random.random,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._client = client
        self._member = member
        self._signer = None if client is None or secret is None else Webhook(secret)
        self._hosts = hosts if self._signer is not None else HostList()
        self._policy = policy
        self._scan_interval_s = scan_interval_s
        self._places = trio.Semaphore(concurrency)
        self._observer = observer or NullCallbackObserver()
        self._jitter = jitter
        self._now = wall_clock
        self._wake = trio.Event()
        # The earliest retry this daemon scheduled (Trio time): the loop wakes for it.
        self._soonest = math.inf
        self.attempts = 0

    @property
    def _claim_s(self) -> float:
        """How long a claim keeps others off: longer than an attempt can last."""
        return self._policy.timeout_s + _CLAIM_MARGIN_S

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen for endings and deliver what is due, until cancelled."""
        async with trio.open_nursery() as nursery:
            if self._signer is not None:
                await nursery.start(self._listen)
            task_status.started()
            next_counts = 0.0
            while True:
                with trio.move_on_at(
                    min(self._soonest, trio.current_time() + self._scan_interval_s)
                ):
                    await self._wake.wait()
                self._wake = trio.Event()
                self._soonest = math.inf
                try:
                    while await self._start_due(nursery):
                        await self._place_freed()
                    if trio.current_time() >= next_counts:
                        self._observer.callbacks_owed(*await self._db.callback_counts())
                        next_counts = trio.current_time() + _COUNTS_EVERY_S
                except DbError as exc:
                    log.warning("callback.scan_failed", error=str(exc))

    async def deliver_due(self) -> int:
        """Claim and send everything due now, waiting for the sends; how many were tried."""
        tried = 0
        async with trio.open_nursery() as nursery:
            while started := await self._start_due(nursery):
                tried += started
                await self._place_freed()
        return tried

    async def _place_freed(self) -> None:
        """Return once an attempt has ended and its place is free again."""
        await self._places.acquire()
        self._places.release()

    async def _start_due(self, nursery: trio.Nursery) -> int:
        """Claim as many due callbacks as can start now and start them; how many.

        Only the free places are claimed, so every claimed attempt starts at once and
        ends within its timeout, well inside its claim.
        """
        free = min(self._places.value, _BATCH)
        if free == 0:
            return 0
        due = await self._db.claim_callbacks(self._member, limit=free, claim_s=self._claim_s)
        for callback in due:
            self._places.acquire_nowait()  # free places were counted: none waits
            nursery.start_soon(self._attempt, callback)
        return len(due) if len(due) == free else 0

    async def _listen(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Wake the loop on every ending; reconnect with backoff, scanning meanwhile."""
        started = False
        backoff = 0.1
        while True:
            try:
                async with self._db.listen(EVENTS_CHANNEL) as listener:
                    backoff = 0.1
                    if not started:
                        task_status.started()
                        started = True
                    async for _note in listener.notifications:
                        self._wake.set()
            except DbError as exc:
                log.warning("callback.listener_lost", error=str(exc))
            if not started:
                task_status.started()  # the scan still delivers without the listener
                started = True
            await trio.sleep(backoff)
            backoff = min(backoff * 2, _RECONNECT_MAX_S)

    async def _attempt(self, due: CallbackDue) -> None:
        """One attempt and its outcome recorded; holds one of the sender's places till done.

        Whatever goes wrong stays this attempt's: a bug is logged with its traceback
        and counted as a failed attempt (retried with backoff), never the sender's end.
        """
        try:
            self.attempts += 1
            with structlog.contextvars.bound_contextvars(
                job_id=str(due.event.job_id), seq=due.seq, attempt=due.attempt
            ):
                refused = callback_problem(due.url, self._hosts)
                if refused is not None:
                    await self._record(due, status=None, error=refused, refused=True)
                    return
                try:
                    status, error = await self._post(due)
                except Exception as exc:  # a bug here must not end every other callback
                    log.exception("callback.attempt_crashed")
                    status, error = None, f"internal error: {type(exc).__name__}"
                if status is not None and 200 <= status < 300:  # noqa: PLR2004
                    await self._delivered(due, status)
                else:
                    await self._record(due, status=status, error=error, refused=False)
        finally:
            self._places.release()

    async def _post(self, due: CallbackDue) -> tuple[int | None, str | None]:
        """POST the signed ending within the timeout, reading no body back.

        The HTTP status, or None and why no answer came in time.
        """
        assert self._client is not None  # noqa: S101  (no client: every host is refused)
        assert self._signer is not None  # noqa: S101
        body = callback_body(due)
        sent_at = self._now()
        headers = {
            "content-type": "application/json",
            "user-agent": "generation-orchestrator-callbacks",
            "webhook-id": due.webhook_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._signer.sign(due.webhook_id, sent_at, body.decode()),
        }
        request = self._client.build_request("POST", due.url, content=body, headers=headers)
        with trio.move_on_after(self._policy.timeout_s):
            try:
                response = await self._client.send(request, stream=True)
            except httpx.TimeoutException:
                return None, "timed out"
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                return None, type(exc).__name__
            await response.aclose()
            return response.status_code, None if response.is_success else _reason(response)
        return None, f"no answer within {self._policy.timeout_s:g} s"

    async def _delivered(self, due: CallbackDue, status: int) -> None:
        latency = (self._now() - due.created_at).total_seconds()
        try:
            await self._db.record_callback(
                due.seq, due.attempt, delivered=True, status=status, error=None, retry_in_s=None
            )
        except DbError as exc:
            # The claim expires and another attempt is sent: at least once, never lost.
            log.warning("callback.not_recorded", error=str(exc))
        log.info("callback.delivered", status=status, receiver=origin(due.url))
        self._observer.callback_attempted("delivered", latency_s=latency)

    async def _record(
        self, due: CallbackDue, *, status: int | None, error: str | None, refused: bool
    ) -> None:
        age_s = (self._now() - due.created_at).total_seconds()
        retry_in = None if refused else self._policy.retry_in(due.attempt, age_s, self._jitter())
        why = error or (f"HTTP {status}" if status is not None else "no answer")
        try:
            await self._db.record_callback(
                due.seq,
                due.attempt,
                delivered=False,
                status=status,
                error=why,
                retry_in_s=retry_in,
            )
        except DbError as exc:
            log.warning("callback.not_recorded", error=str(exc))
            return
        if retry_in is None:
            outcome = "refused" if refused else "failed"
            log.warning("callback.failed", receiver=origin(due.url), status=status, error=why)
            self._observer.callback_attempted(outcome)
        else:
            self._soonest = min(self._soonest, trio.current_time() + retry_in)
            log.info(
                "callback.retrying",
                receiver=origin(due.url),
                status=status,
                error=why,
                retry_in_s=round(retry_in, 3),
            )
            self._observer.callback_attempted("retried")


def _reason(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()[:_ERROR_CHARS]
