"""Intake: LISTEN for submissions, scan for what a notification missed, route to actors.

Every daemon runs intake for the partition slots it holds (`LeaseKeeper`).
It LISTENs on a slot's channel before it scans the slot, so nothing
submitted in between is missed, and when it takes a slot it first resumes
the jobs the slot's previous owner left in flight, then admits its queue.

A notification is only a wake-up hint (procrastinate's rule): the catch-up
scan at start, after every reconnect and at a short interval finds every
queued job whatever happened to its NOTIFY. The scan and the notifications
may name the same job; the actor's mailbox takes it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Final, Protocol

import attrs
import structlog
import trio

from actors import Cancel, Offer, Registry, Resume, Submit
from orchestrator.core import JobRef, JobStatus
from orchestrator.db import (
    MEMBERS_CHANNEL,
    Database,
    DbError,
    Listener,
    Notification,
    slot_channel,
)
from orchestrator.leases import LeaseKeeper, SlotChange

log = structlog.get_logger("orchestrator.intake")

_BATCH: Final = 1000
_WAKE: Final = "wake:"
_RECONNECT_INITIAL_S: Final = 0.1
_RECONNECT_MAX_S: Final = 10.0


class IntakeObserver(Protocol):
    """What intake reports for metrics; `orchestrator.metrics.IntakeMetrics` counts it."""

    def notified(self, count: int, *, unreadable: int) -> None: ...

    def scan_found(self, count: int) -> None: ...

    def mailbox_refused(self) -> None: ...


class NullIntakeObserver:
    def notified(self, count: int, *, unreadable: int) -> None:
        pass

    def scan_found(self, count: int) -> None:
        pass

    def mailbox_refused(self) -> None:
        pass


@attrs.define
class IntakeStats:
    notifications: int = 0
    bad_payloads: int = 0
    scan_finds: int = 0
    delivered: int = 0
    mailbox_full: int = 0
    reconnects: int = 0
    connected: bool = False
    orphans: int = 0
    resumed: int = 0


class Intake:
    def __init__(
        self,
        db: Database,
        registry: Registry,
        keeper: LeaseKeeper,
        *,
        scan_interval_s: float,
        orphan_grace_s: float = 60.0,
        per_user: int = 256,
        observer: IntakeObserver | None = None,
    ) -> None:
        self._orphan_grace_s = orphan_grace_s
        self._per_user = per_user
        self._unresumed: list[JobRef] = []
        self._observer = observer or NullIntakeObserver()
        self._db = db
        self._registry = registry
        self._keeper = keeper
        self._scan_interval_s = scan_interval_s
        self.stats = IntakeStats()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, take up the slots held, scan, route; reconnect with backoff when lost."""
        ready = False
        backoff = _RECONNECT_INITIAL_S
        while True:
            try:
                async with self._db.listen(MEMBERS_CHANNEL) as listener:
                    self.stats.connected = True
                    backoff = _RECONNECT_INITIAL_S
                    async with trio.open_nursery() as nursery:
                        await self._take_up(listener, self._keeper.slots)
                        if not ready:
                            task_status.started()
                            ready = True
                        nursery.start_soon(self._follow_leases, listener)
                        await self._pump(listener)
                        nursery.cancel_scope.cancel()
            except DbError as exc:
                log.warning("intake.listener_lost", error=str(exc))
            finally:
                self.stats.connected = False
            self.stats.reconnects += 1
            await trio.sleep(backoff)
            backoff = min(backoff * 2, _RECONNECT_MAX_S)

    async def _follow_leases(self, listener: Listener) -> None:
        """Listen on slots as they are taken and stop listening on those lost."""
        async for change in self._keeper.changes:
            await self._apply(listener, change)

    async def _apply(self, listener: Listener, change: SlotChange) -> None:
        if change.lost:
            self._unresumed = [ref for ref in self._unresumed if ref.slot not in change.lost]
            await listener.remove(slot_channel(slot) for slot in change.lost)
        taken = [slot for slot in change.taken if self._keeper.owns(slot)]
        if taken:
            await self._take_up(listener, taken)

    async def _take_up(self, listener: Listener, slots: Sequence[int]) -> None:
        """Listen on `slots`, then resume what their last owner left and admit their queue."""
        if not slots:
            return
        await listener.add(slot_channel(slot) for slot in slots)
        left = await self._db.in_flight(slots=slots)
        # A plan may hold more seats than a mailbox: what it refuses, each scan offers again.
        self._unresumed.extend(ref for ref in left if not self._resume(ref))
        self.stats.resumed += len(left)
        if left:
            log.info("daemon.recovering", jobs=len(left), slots=len(slots))
        await self._scan(slots)

    async def _pump(self, listener: Listener) -> None:
        notifications = listener.notifications
        next_scan = trio.current_time() + self._scan_interval_s
        while True:
            batch: list[Notification] = []
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
            jobs = [note for note in batch if note.channel != MEMBERS_CHANNEL]
            if len(jobs) < len(batch):
                self._keeper.wake()  # a member joined or left: rebalance now
            if jobs:
                self.stats.notifications += len(jobs)
                woken = [
                    note.payload.removeprefix(_WAKE)
                    for note in jobs
                    if note.payload.startswith(_WAKE)
                ]
                job_ids = _job_ids(
                    [note.payload for note in jobs if not note.payload.startswith(_WAKE)],
                    self.stats,
                )
                wake_ids = _job_ids(woken, self.stats)
                self._observer.notified(
                    len(jobs), unreadable=len(jobs) - len(job_ids) - len(wake_ids)
                )
                await self._route(job_ids, wake_ids)
            if trio.current_time() >= next_scan:
                await self._scan(self._keeper.slots)
                next_scan = trio.current_time() + self._scan_interval_s

    async def _route(self, job_ids: list[uuid.UUID], wake_ids: list[uuid.UUID]) -> None:
        """One read for the whole batch, submissions and webhook wake-ups alike."""
        if job_ids or wake_ids:
            refs = await self._db.route([*job_ids, *wake_ids])
            self._deliver(refs, woken=frozenset(wake_ids))

    async def _scan(self, slots: Sequence[int]) -> None:
        if not slots:
            return
        self._unresumed = [ref for ref in self._unresumed if not self._resume(ref)]
        found = await self._db.queued(per_user=self._per_user, slots=slots)
        accepted = self._deliver(found)
        self.stats.scan_finds += accepted
        self._observer.scan_found(accepted)
        for ref in await self._db.orphaned(grace_s=self._orphan_grace_s, slots=slots):
            # A task lost after admission (a crash, a settle that gave up): settle it now.
            self.stats.orphans += self._resume(ref)

    def _resume(self, ref: JobRef) -> bool:
        return self._offer(ref, Resume(ref.id))

    def _deliver(self, refs: Iterable[JobRef], *, woken: frozenset[uuid.UUID] = frozenset()) -> int:
        """Route each job to its actor; `woken` jobs in flight were named by a webhook."""
        accepted = 0
        for ref in refs:
            if ref.status is JobStatus.QUEUED:
                accepted += self._offer(ref, Submit(ref.id))
            elif ref.status.in_flight and ref.cancel_requested:
                accepted += self._offer(ref, Cancel(ref.id))
            elif (
                ref.status.in_flight
                and ref.id in woken
                and self._keeper.owns(ref.slot)
                and not self._registry.poke(ref.user_id, ref.id)
            ):
                # A webhook that reached another daemon, for a job not running here: resume it.
                accepted += self._resume(ref)
        return accepted

    def _offer(self, ref: JobRef, message: Submit | Cancel | Resume) -> bool:
        offer = self._registry.deliver(ref.user_id, message, slot=ref.slot)
        if offer is Offer.FULL:
            self.stats.mailbox_full += 1  # still queued in the database: the next scan retries
            self._observer.mailbox_refused()
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
