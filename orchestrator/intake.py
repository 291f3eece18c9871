"""Intake: LISTEN for submissions, scan for what a notification missed, route to actors.

One daemon at a time leads intake (see `Intake.run`); the rest stand by.

A notification is only a wake-up hint (procrastinate's rule): the catch-up
scan at start, after every reconnect and at a short interval finds every
queued job whatever happened to its NOTIFY. The scan and the notifications
may name the same job; the actor's mailbox takes it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Final

import attrs
import structlog
import trio

from actors import Cancel, Offer, Registry, Resume, Submit
from orchestrator.db import Database, DbError
from orchestrator.lifecycle import JobRef, JobStatus
from orchestrator.metrics import Metrics

log = structlog.get_logger("orchestrator.intake")

_BATCH: Final = 1000
_RECONNECT_INITIAL_S: Final = 0.1
_RECONNECT_MAX_S: Final = 10.0


@attrs.define
class IntakeStats:
    notifications: int = 0
    bad_payloads: int = 0
    scan_finds: int = 0
    delivered: int = 0
    mailbox_full: int = 0
    reconnects: int = 0
    connected: bool = False
    leader: bool = False
    orphans: int = 0


class Intake:
    def __init__(
        self,
        db: Database,
        registry: Registry,
        *,
        scan_interval_s: float,
        orphan_grace_s: float = 60.0,
        per_user: int = 256,
        metrics: Metrics | None = None,
    ) -> None:
        self._orphan_grace_s = orphan_grace_s
        self._per_user = per_user
        self._unresumed: list[JobRef] = []
        self._metrics = metrics or Metrics()
        self._db = db
        self._registry = registry
        self._scan_interval_s = scan_interval_s
        self.stats = IntakeStats()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, lead or stand by, scan, route; reconnect with backoff when lost.

        Only the daemon holding the intake lock (a session advisory lock on
        its LISTEN connection) admits and recovers; the others stand by and
        take over the moment its session ends. Until then they run nothing,
        so no job is ever resumed by two daemons at once.
        """
        ready = False
        backoff = _RECONNECT_INITIAL_S
        while True:
            try:
                async with self._db.listen() as listener:
                    self.stats.connected = True
                    backoff = _RECONNECT_INITIAL_S
                    while not await listener.try_lead():
                        if not ready:
                            log.info("intake.standby")
                            task_status.started()
                            ready = True
                        await trio.sleep(self._scan_interval_s)
                    self._registry.epoch = await self._db.take_intake_epoch()
                    self.stats.leader = True
                    log.info("intake.leading", epoch=self._registry.epoch)
                    await self._recover()
                    await self._scan()  # whatever was submitted while nobody listened
                    if not ready:
                        task_status.started()
                        ready = True
                    await self._pump(listener.notifications)
            except DbError as exc:
                log.warning("intake.listener_lost", error=str(exc))
            finally:
                self.stats.connected = False
                self.stats.leader = False
            self.stats.reconnects += 1
            await trio.sleep(backoff)
            backoff = min(backoff * 2, _RECONNECT_MAX_S)

    async def _pump(self, notifications: trio.MemoryReceiveChannel[str]) -> None:
        next_scan = trio.current_time() + self._scan_interval_s
        while True:
            batch: list[str] = []
            with trio.move_on_at(next_scan):
                try:
                    batch.append(await notifications.receive())
                except trio.EndOfChannel:
                    log.warning("intake.listener_lost", error="connection closed")
                    return
                while len(batch) < _BATCH:
                    try:
                        batch.append(notifications.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
            if batch:
                self.stats.notifications += len(batch)
                self._metrics.notifications.inc(len(batch))
                job_ids = _job_ids(batch, self.stats)
                self._metrics.bad_notifications.inc(len(batch) - len(job_ids))
                await self._route(job_ids)
            if trio.current_time() >= next_scan:
                await self._scan()
                next_scan = trio.current_time() + self._scan_interval_s

    async def _route(self, job_ids: list[uuid.UUID]) -> None:
        if job_ids:
            self._deliver(await self._db.route(job_ids))

    async def _scan(self) -> None:
        self._unresumed = [ref for ref in self._unresumed if not self._resume(ref)]
        found = await self._db.queued(per_user=self._per_user)
        accepted = self._deliver(found)
        self.stats.scan_finds += accepted
        self._metrics.scan_finds.inc(accepted)
        for ref in await self._db.orphaned(grace_s=self._orphan_grace_s):
            # A task lost after admission (a crash, a settle that gave up): settle it now.
            self.stats.orphans += self._offer(ref.user_id, Resume(ref.id))

    async def _recover(self) -> None:
        """At start: every job a previous run left in flight goes back to its actor."""
        left = await self._db.in_flight()
        # A plan may hold more seats than a mailbox: what it refuses, each scan offers again.
        self._unresumed = [ref for ref in left if not self._resume(ref)]
        if left:
            log.info("daemon.recovering", jobs=len(left))

    def _resume(self, ref: JobRef) -> bool:
        return self._offer(ref.user_id, Resume(ref.id))

    def _deliver(self, refs: Iterable[JobRef]) -> int:
        accepted = 0
        for ref in refs:
            if ref.status is JobStatus.QUEUED:
                accepted += self._offer(ref.user_id, Submit(ref.id))
            elif ref.status.in_flight and ref.cancel_requested:
                accepted += self._offer(ref.user_id, Cancel(ref.id))
        return accepted

    def _offer(self, user_id: str, message: Submit | Cancel | Resume) -> bool:
        offer = self._registry.deliver(user_id, message)
        if offer is Offer.FULL:
            self.stats.mailbox_full += 1  # still queued in the database: the next scan retries
            self._metrics.mailbox_full.inc()
        accepted = offer is Offer.ACCEPTED
        self.stats.delivered += accepted
        return accepted


def _job_ids(payloads: list[str], stats: IntakeStats) -> list[uuid.UUID]:
    ids = []
    for payload in payloads:
        try:
            ids.append(uuid.UUID(payload))
        except ValueError:
            stats.bad_payloads += 1
            log.warning("intake.bad_notification", length=len(payload))
    return ids
