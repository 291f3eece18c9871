"""The sweeper: no job stays non-terminal forever.

A job still in flight the stuck limit (30 minutes by default) past its
deadline, or queued that long, has been lost by something: it is failed as
STUCK and refunded, or rejected as STUCK if it never left the queue, and
every prediction it has is cancelled upstream. (Intake's orphan scan
normally settles lost in-flight jobs long before; this is the backstop.)
Each sweep also forgets webhook deliveries past the providers' retry window
(Standard Webhooks senders retry for about a day, so three days by default) and
events of the feed past their retention (seven days by default; an event whose
callback is still owed stays until it is delivered or given up),
and runs one bounded reconciliation pass (`orchestrator.reconcile`) so that no
prediction keeps billing for a job that ended.

Each daemon sweeps the slots it owns, with their fences. The duties that are
not per slot (pruning, reconciliation) run on the owner of slot 0 alone, so
two daemons never race on one prediction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

import structlog
import trio

from actors import Registry
from orchestrator.core import (
    ErrorCode,
    EverySlot,
    FencedOff,
    JobRef,
    JobStatus,
    Provider,
    Slots,
    Stuck,
    cancel_upstream,
    finish,
)
from orchestrator.db import Database, DbError
from orchestrator.reconcile import Reconciler

log = structlog.get_logger("orchestrator.sweeper")

_MAX_INTERVAL_S: Final = 60.0


class SweepObserver(Protocol):
    """What the sweeper reports for metrics; `orchestrator.metrics.Metrics` counts it."""

    def job_swept(self, status: JobStatus, code: ErrorCode | None, *, refunded: int) -> None: ...

    def job_rejected(self, code: ErrorCode, intake_lag_s: float | None) -> None: ...

    def write_fenced(self, write: str) -> None: ...

    def webhook_events_forgotten(self, count: int) -> None: ...

    def job_events_forgotten(self, count: int) -> None: ...


class NullSweepObserver:
    def job_swept(self, status: JobStatus, code: ErrorCode | None, *, refunded: int) -> None:
        pass

    def job_rejected(self, code: ErrorCode, intake_lag_s: float | None) -> None:
        pass

    def write_fenced(self, write: str) -> None:
        pass

    def webhook_events_forgotten(self, count: int) -> None:
        pass

    def job_events_forgotten(self, count: int) -> None:
        pass


class Sweeper:
    def __init__(
        self,
        db: Database,
        provider: Provider,
        registry: Registry,
        *,
        stuck_after_s: float,
        cancel_timeout_s: float,
        webhook_retention_s: float = 3 * 86400.0,
        event_retention_s: float = 7 * 86400.0,
        observer: SweepObserver | None = None,
        reconciler: Reconciler | None = None,
        slots: Slots | None = None,
        lease_history_s: float = 7 * 86400.0,
        others: Mapping[str, Provider] | None = None,
    ) -> None:
        self._slots: Slots = slots or EverySlot()
        self._lease_history_s = lease_history_s
        self._reconciler = reconciler
        self._webhook_retention_s = webhook_retention_s
        self._event_retention_s = event_retention_s
        self._observer = observer or NullSweepObserver()
        self._db = db
        self._provider = provider
        # Every provider a job may run on, by name: a prediction is cancelled where it runs.
        self._others: Mapping[str, Provider] = others or {}
        self._registry = registry
        self._stuck_after_s = stuck_after_s
        self._cancel_timeout_s = cancel_timeout_s
        self.swept = 0

    @property
    def interval_s(self) -> float:
        return min(self._stuck_after_s / 10, _MAX_INTERVAL_S)

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except DbError as exc:
                log.warning("sweeper.failed", error=str(exc))
            await trio.sleep(self.interval_s)

    async def sweep(self) -> int:
        owned = list(self._slots.slots)
        stuck = await self._db.stuck(older_than_s=self._stuck_after_s, slots=owned) if owned else []
        ended = 0
        for ref in stuck:
            if not self._slots.owns(ref.slot):
                continue
            try:
                await self._end(ref)
            except FencedOff:
                log.warning("sweeper.fenced", job_id=str(ref.id))
                self._observer.write_fenced("sweep")
            except Exception:
                # One job's trouble must not keep the others stuck.
                log.exception("sweeper.job_failed", job_id=str(ref.id))
            else:
                ended += 1
        self.swept += ended
        if not self._slots.owns(0):
            return ended
        await self._db.prune_lease_history(older_than_s=self._lease_history_s)
        pruned = await self._db.prune_webhook_events(older_than_s=self._webhook_retention_s)
        self._observer.webhook_events_forgotten(pruned)
        forgotten = await self._db.prune_job_events(older_than_s=self._event_retention_s)
        self._observer.job_events_forgotten(forgotten)
        if self._reconciler is not None:
            report = await self._reconciler.run_once()
            if report.running or report.undelivered:
                log.info(
                    "reconcile.pass",
                    canceled=report.canceled,
                    cancel_failed=report.cancel_failed,
                    undelivered=report.undelivered,
                )
        return ended

    async def _end(self, ref: JobRef) -> None:
        """End a stuck job as `settle` says a `Stuck` ending ends, after its predictions."""
        minutes = self._stuck_after_s / 60
        fence = self._slots.fence(ref.slot)
        with structlog.contextvars.bound_contextvars(job_id=str(ref.id), user_id=ref.user_id):
            if ref.status is JobStatus.QUEUED:
                await self._db.reject(
                    ref.id, ErrorCode.STUCK, f"queued for {minutes:g} minutes", fence=fence
                )
                self._observer.job_rejected(ErrorCode.STUCK, None)
                return
            job = await self._db.job(ref.id)
            if job is None or not job.status.in_flight:
                return
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as nursery:
                    for name, prediction_id in ref.predictions:
                        nursery.start_soon(
                            cancel_upstream,
                            self._others.get(name, self._provider).cancel,
                            prediction_id,
                            self._cancel_timeout_s,
                        )
            settlement, done = await finish(self._db, job, Stuck(minutes), fence=fence)
            log.warning("job.stuck", credits_refunded=done.refunded)
            self._observer.job_swept(settlement.status, settlement.code, refunded=done.refunded)
            # A task still running it (it should not be) stops: its settle finds it ended.
            self._registry.stop_job(ref.user_id, ref.id)
