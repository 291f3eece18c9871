"""Partition leases: which slots this daemon owns, for how long it may trust that, and moves.

A `LeaseKeeper` runs one lease round every few seconds (and at once when a
member joins or leaves): it reads the live members, plans with rendezvous
hashing (`orchestrator.placement`), and in one statement heartbeats, renews
what it keeps, gives up what belongs elsewhere and takes what is free.

The rounds run on an OS thread of their own with their own connection
(`LeaseSession`), never through the Trio loop: a loop saturated with work
must not make the daemon miss its renewals, drop that work, and have the
next owner redo it, which under load would feed itself.

A slot that belongs elsewhere now is handed over in two steps: its work is
stopped first (a submit already sent is let finish and be recorded, see
`Registry.hand_over`) while the lease is still renewed, and only then is the
lease given up, so the next owner finds every prediction recorded.

It trusts a slot only until the start of its last successful renewal plus the
TTL minus a margin, on the monotonic clock: if the database is slow or gone,
the daemon stops that slot's work before anyone else can take the slot
(expiry is judged on the database's clock, and takes wait for it). Whatever
the clocks do, the fence on every write is the real guarantee.

Leases are plain rows, not session advisory locks: they carry a fencing
epoch, and they work through a transaction-pooling PgBouncer.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Protocol

import attrs
import structlog
import trio

from orchestrator.core import SLOTS, Fence
from orchestrator.db import Database, DbError, HeldSlot, LeaseSession
from orchestrator.placement import RoundPlan, plan_round

log = structlog.get_logger("orchestrator.leases")

_IDLE_WATCH_S: Final = 1.0


def member_id() -> str:
    """A name for this process's membership, unique per start: host, pid and a nonce."""
    host = socket.gethostname()[:100] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


@attrs.frozen
class SlotChange:
    """Slots taken (with their fences) and slots lost, in one lease round."""

    taken: Mapping[int, Fence]
    lost: frozenset[int]


@attrs.define
class _Held:
    fence: Fence
    trusted_until: float  # time.monotonic()
    handing_over: bool = False


class LeaseObserver(Protocol):
    """What the keeper reports for metrics; `orchestrator.metrics.ClusterMetrics` counts it.

    `round_took` is called from the lease thread, the others from the Trio loop.
    """

    def round_took(self, seconds: float) -> None: ...

    def slots_taken(self, count: int) -> None: ...

    def slots_given_up(self, count: int) -> None: ...

    def slots_lost(self, count: int) -> None: ...


class NullLeaseObserver:
    def round_took(self, seconds: float) -> None:
        pass

    def slots_taken(self, count: int) -> None:
        pass

    def slots_given_up(self, count: int) -> None:
        pass

    def slots_lost(self, count: int) -> None:
        pass


async def _nothing_to_hand_over(_slots: frozenset[int]) -> None:
    return None


class LeaseKeeper:
    """Holds this daemon's slots; `owns`/`fence` answer the actors, `changes` feeds intake.

    `on_lost` runs on the Trio loop as soon as it can after a slot is lost (missed by
    a renewal, or no longer trusted); from that instant `owns` is already False.
    `on_hand_over` stops a slot's work that is to move, and returns once it is gone.
    """

    def __init__(
        self,
        db: Database,
        *,
        member: str,
        ttl_s: float,
        renew_s: float,
        max_moves: int,
        info: Mapping[str, object] | None = None,
        observer: LeaseObserver | None = None,
        on_lost: Callable[[frozenset[int]], object] = lambda _slots: None,
        on_hand_over: Callable[[frozenset[int]], Awaitable[None]] = _nothing_to_hand_over,
    ) -> None:
        if not 0 < renew_s < ttl_s:
            raise ValueError("the renewal interval must be positive and shorter than the TTL")
        self.member = member
        self._db = db
        self._ttl_s = ttl_s
        self._renew_s = renew_s
        # Stop trusting a slot one renewal interval before its lease can expire.
        self._margin_s = min(renew_s, ttl_s / 2)
        self._max_moves = max_moves
        self.info = dict(info or {})
        self._observer = observer or NullLeaseObserver()
        self.on_lost = on_lost
        self.on_hand_over = on_hand_over
        self._nursery: trio.Nursery | None = None
        self._lock = threading.Lock()
        self._held: dict[int, _Held] = {}
        self._send_changes, self.changes = trio.open_memory_channel[SlotChange](math.inf)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread_done = threading.Event()
        self.rounds = 0
        self.unowned = SLOTS

    def owns(self, slot: int) -> bool:
        return self.fence(slot) is not None

    def fence(self, slot: int) -> Fence | None:
        with self._lock:
            held = self._held.get(slot)
        if held is None or held.handing_over or time.monotonic() >= held.trusted_until:
            return None
        return held.fence

    @property
    def slots(self) -> list[int]:
        """The slots owned now (not those being handed over)."""
        with self._lock:
            return sorted(slot for slot, held in self._held.items() if not held.handing_over)

    def wake(self) -> None:
        """Run a round now: a member joined or left."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Lease rounds on their thread until cancelled; `task_status` fires after the first.

        Cancelling stops the rounds without giving anything up (a crash, as far as the
        others can tell: the leases expire). `leave` gives everything up at once.
        """
        first = trio.Event()
        token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_trust)
                nursery.start_soon(
                    functools.partial(
                        trio.to_thread.run_sync,
                        self._rounds,
                        token,
                        first,
                        abandon_on_cancel=True,
                    )
                )
                await first.wait()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._stop.set()
            self._wake.set()

    async def leave(self) -> int:
        """Give every slot up at once and tell the others; the caller stopped their work.

        Raises:
            DbError: the database could not be told; the leases then expire by TTL.
        """
        self._stop.set()
        self._wake.set()
        # A round still in flight could take slots back after we free them: wait it out.
        await trio.to_thread.run_sync(self._thread_done.wait, self._renew_s * 2)
        with self._lock:
            lost = frozenset(self._held)
            self._held.clear()
        if lost:
            self.on_lost(lost)
        released = await self._db.leave_cluster(self.member)
        self._observer.slots_given_up(released)
        return released

    # The round thread.

    def _rounds(self, token: trio.lowlevel.TrioToken, first: trio.Event) -> None:
        session = self._db.lease_session(timeout_s=self._renew_s * 2)
        try:
            while not self._stop.is_set():
                try:
                    self._round(session, token)
                except DbError as exc:
                    log.warning("lease.round_failed", error=str(exc))
                if not first.is_set():
                    token.run_sync_soon(first.set)
                self._wake.wait(self._renew_s)
                self._wake.clear()
        finally:
            session.close()
            self._thread_done.set()

    def _round(self, session: LeaseSession, token: trio.lowlevel.TrioToken) -> None:
        started = time.monotonic()
        members, unowned = session.live_members()
        self.unowned = unowned
        with self._lock:
            owned = [slot for slot, held in self._held.items() if not held.handing_over]
            moving = [slot for slot, held in self._held.items() if held.handing_over]
            plan = plan_round(self.member, members, owned, max_release=self._max_moves)
        # A slot to give up is kept (renewed) until its work has stopped.
        keep = sorted({*plan.keep, *plan.release, *moving})
        held = session.lease_round(self.member, self._ttl_s, keep, list(plan.take), self.info)
        self._observer.round_took(time.monotonic() - started)
        if self._stop.is_set():
            return  # leaving: `leave` owns the slots from here
        change, missed = self._apply(plan, held, started)
        self.rounds += 1
        if change.taken or change.lost:
            token.run_sync_soon(self._report, change, missed)

    def _apply(
        self, plan: RoundPlan, held: list[HeldSlot], started: float
    ) -> tuple[SlotChange, frozenset[int]]:
        now_held = {row.slot: row for row in held}
        trusted_until = started + self._ttl_s - self._margin_s
        taken: dict[int, Fence] = {}
        with self._lock:
            missed = frozenset(
                slot
                for slot, mine in self._held.items()
                if slot not in now_held or now_held[slot].epoch != mine.fence.epoch
            )
            for slot in missed:
                del self._held[slot]
            released = frozenset(s for s in plan.release if s in self._held)
            for slot in released:
                self._held[slot].handing_over = True
            wanted = frozenset(plan.take)
            for slot, row in now_held.items():
                mine = self._held.get(slot)
                if mine is not None:
                    mine.trusted_until = trusted_until
                elif slot in wanted:
                    # Only slots asked for are new. A kept one missing from `_held` was
                    # dropped meanwhile (its trust ran out): it is given up next round and
                    # taken again under a new epoch, never reused under the old one.
                    fence = Fence(self.member, row.epoch)
                    self._held[slot] = _Held(fence, trusted_until)
                    taken[slot] = fence
        return SlotChange(taken, released | missed), missed

    # Back on the Trio loop.

    def _report(
        self, change: SlotChange, missed: frozenset[int], reason: str = "missed by the renewal"
    ) -> None:
        """Act on a change: hand over what is given up, drop what is lost, tell intake."""
        given_up = change.lost - missed
        if given_up and self._nursery is not None:
            log.info("lease.handing_over", slots=len(given_up))
            self._nursery.start_soon(self._hand_over, given_up)
        if missed:
            self._observer.slots_lost(len(missed))
            log.warning("lease.lost", slots=len(missed), reason=reason)
            self.on_lost(missed)
        if change.taken:
            self._observer.slots_taken(len(change.taken))
            log.info("lease.taken", slots=len(change.taken), owned=len(self._held))
        self._send_changes.send_nowait(change)

    async def _hand_over(self, slots: frozenset[int]) -> None:
        """Stop the slots' work, then let the next round give their leases up."""
        await self.on_hand_over(slots)
        with self._lock:
            for slot in slots:
                held = self._held.get(slot)
                if held is not None and held.handing_over:
                    del self._held[slot]
        self._observer.slots_given_up(len(slots))
        log.info("lease.given_up", slots=len(slots), owned=len(self.slots))
        self._wake.set()

    async def _watch_trust(self) -> None:
        """Drop each slot the moment its trust runs out, whatever the round thread does."""
        while True:
            with self._lock:
                soonest = min((h.trusted_until for h in self._held.values()), default=None)
            if soonest is None:
                await trio.sleep(_IDLE_WATCH_S)
                continue
            await trio.sleep(max(0.0, soonest - time.monotonic()))
            now = time.monotonic()
            with self._lock:
                expired = frozenset(s for s, h in self._held.items() if now >= h.trusted_until)
                for slot in expired:
                    del self._held[slot]
            if expired:
                self._report(SlotChange({}, expired), expired, reason="not renewed in time")
