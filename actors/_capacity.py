"""What one daemon can carry: jobs in flight, and the provider's create and poll rates.

Beyond capacity a job waits *before* admission, still `queued`, so its deadline (set at
admission) measures the provider's time and never our queueing. Waiters are served in
weighted fair order over users (`FairOrder`, stride scheduling): each user's weight is its
plan's priority, so when capacity is short a user of priority 3 gets three places for every
one of a user of priority 1, and none waits past a bound; with equal weights that is round
robin over the users with work (each user's actor admits one job at a time), and with
spare capacity nobody waits at all. The rate budgets are GCRA reservations on Trio's
clock, so MockClock tests drive them, and `reserve` is the pure rule behind them.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Final, Generic, TypeVar

import attrs
import trio

from orchestrator.core import MAX_PRIORITY, MIN_PRIORITY

T = TypeVar("T")
# The least common multiple of every weight (2520), so each stride is an exact integer.
_SPAN: Final = math.lcm(*range(MIN_PRIORITY, MAX_PRIORITY + 1))


class FairOrder(Generic[T]):
    """Weighted fair order over keys: which waiting item goes next (stride scheduling).

    Pure and deterministic: no clock, no randomness. A key (a user) with waiting items
    is *due* at a virtual time; `pop` serves the key due first (ties: the one waiting
    longer), moves the virtual time to that due and makes the key due again one
    `stride` later, `stride = 2520 // weight`. A key that stops waiting keeps its next
    due, so leaving and coming straight back gains nothing; one that joins is due at
    `max(its kept due, now)`, so idling banks no credit either.

    Bounds, for keys of weights `w_i` (1..10) summing to `W` over `n` keys:
    * share: while a set of keys waits without a break from a fresh start, each key's
      grants after any `N` grants are within `max(1, n * w_i / W)` (so within `n`) of
      `N * w_i / W`;
    * no starvation: once a key waits, at most `sum(w_j // w_i for j != i) + n - 1`
      (so at most `(W - w_i) / w_i + n - 1`) grants go to other keys before its own:
      with weights 3 and 1, the 1 waits at most 4 grants, the 3 at most 1.

    `key=None` is an anonymous waiter: served in arrival order with weight 1, nothing kept.
    """

    def __init__(self, *, keep_at_most: int = 100_000) -> None:
        self._now = 0
        self._seq = 0
        self._queues: dict[Hashable, deque[T]] = {}
        self._stride: dict[Hashable, int] = {}
        self._entry: dict[Hashable, tuple[int, int]] = {}
        self._heap: list[tuple[int, int, Hashable]] = []
        self._kept: dict[Hashable, int] = {}
        self._key_of: dict[int, Hashable] = {}
        self._len = 0
        self._keep_at_most = max(2, keep_at_most)
        self._sweep_at = min(1024, self._keep_at_most)

    def __len__(self) -> int:
        return self._len

    @property
    def remembered(self) -> int:
        """How many keys not waiting have a due kept (bounded by `keep_at_most`)."""
        return len(self._kept)

    @property
    def now(self) -> int:
        """The virtual time: the due of the last key served."""
        return self._now

    def due(self, key: Hashable) -> int | None:
        """When a waiting key is due next (None: not waiting)."""
        entry = self._entry.get(key)
        return None if entry is None else entry[0]

    def push(self, item: T, *, key: Hashable | None = None, weight: int = 1) -> None:
        """Line `item` (not already waiting) up under `key`; a key's own go in arrival order."""
        if not MIN_PRIORITY <= weight <= MAX_PRIORITY:
            raise ValueError(f"a weight is between {MIN_PRIORITY} and {MAX_PRIORITY}, got {weight}")
        if key is None:
            key = _Anonymous(self._seq)
        self._key_of[id(item)] = key
        self._stride[key] = _SPAN // weight
        self._len += 1
        queue = self._queues.get(key)
        if queue is not None:
            queue.append(item)
            return
        self._queues[key] = deque([item])
        self._schedule(key, max(self._kept.pop(key, self._now), self._now))

    def pop(self) -> T:
        """The next item in weighted fair order; IndexError when none waits."""
        while self._heap:
            due, seq, key = heapq.heappop(self._heap)
            if self._entry.get(key) != (due, seq):
                continue  # stale: the key stopped waiting or was rescheduled
            queue = self._queues[key]
            item = queue.popleft()
            self._key_of.pop(id(item), None)
            self._len -= 1
            self._now = due
            next_due = due + self._stride[key]
            if queue:
                self._schedule(key, next_due)
            else:
                self._forget(key, next_due)
            return item
        raise IndexError("nothing waits")

    def remove(self, item: T) -> None:
        """Take a waiting item out (its waiter gave up); its key keeps its due."""
        key = self._key_of.pop(id(item))
        queue = self._queues[key]
        queue.remove(item)
        self._len -= 1
        if not queue:
            due, _ = self._entry[key]
            self._forget(key, due)

    def _schedule(self, key: Hashable, due: int) -> None:
        self._seq += 1
        self._entry[key] = (due, self._seq)
        heapq.heappush(self._heap, (due, self._seq, key))

    def _forget(self, key: Hashable, due: int) -> None:
        del self._queues[key]
        del self._entry[key]
        del self._stride[key]
        if isinstance(key, _Anonymous) or due <= self._now:
            return
        self._kept[key] = due
        if len(self._kept) >= self._sweep_at:
            self._sweep()

    def _sweep(self) -> None:
        """Drop kept dues that are past (joining would give the same); bound the rest.

        At the bound, half go, the nearest dues first: a kept due is never more than a
        stride ahead of now, so such a key, coming back, is served at most a stride
        early. Sweeps come after as many new kept dues as survived the last one, or half
        the bound, so their cost is spread over the grants.
        """
        self._kept = {k: due for k, due in self._kept.items() if due > self._now}
        half = self._keep_at_most // 2
        if len(self._kept) >= self._keep_at_most:
            self._kept = dict(heapq.nlargest(half, self._kept.items(), key=_second))
        self._sweep_at = min(max(1024, 2 * len(self._kept)), self._keep_at_most)
        self._sweep_at = max(self._sweep_at, len(self._kept) + 1)


def _second(pair: tuple[Hashable, int]) -> int:
    return pair[1]


@attrs.frozen
class _Anonymous:
    seq: int


def reserve(
    tat: float, now: float, *, interval: float, burst: int, cost: int = 1
) -> tuple[float, float]:
    """GCRA: how long to wait for `cost` tokens, and the new theoretical arrival time.

    A full bucket (`tat` in the past) lets `burst` tokens go at once, then one per
    `interval`. Reserving before sleeping makes waiters line up in call order.
    """
    slot = max(now - interval * (burst - 1), tat)
    return max(0.0, slot + interval * (cost - 1) - now), slot + interval * cost


class RateBudget:
    """At most `per_s` tokens a second on average, `burst` at once; waiters in order.

    A waiter cancelled while it sleeps does not give its slot back: the budget errs on
    the side of sending less than allowed, never more.
    """

    def __init__(self, per_s: float, burst: int | None = None) -> None:
        if not per_s > 0 or not math.isfinite(per_s):
            raise ValueError("a rate budget needs a positive, finite rate")
        self.per_s = per_s
        self._interval = 1.0 / per_s
        self._burst = burst if burst is not None else max(1, math.ceil(per_s))
        if self._burst < 1:
            raise ValueError("burst must be at least 1")
        self._tat = -math.inf

    def set_rate(self, per_s: float) -> None:
        """Change the rate from now on; reservations already made keep their slots."""
        if not per_s > 0 or not math.isfinite(per_s):
            raise ValueError("a rate budget needs a positive, finite rate")
        self.per_s = per_s
        self._interval = 1.0 / per_s

    async def take(self, cost: int = 1) -> float:
        """Wait for `cost` tokens; returns the seconds waited."""
        wait, self._tat = reserve(
            self._tat, trio.current_time(), interval=self._interval, burst=self._burst, cost=cost
        )
        if wait > 0:
            await trio.sleep(wait)
        return wait


class InFlightGate:
    """At most `limit` jobs in flight in this daemon (None: no limit), in weighted fair order.

    `enter` waits for a place, lined up by its key (the user) and weight (the plan's
    priority) in a `FairOrder`; `enter_now` takes one at once even past the limit, for a
    job already admitted by an earlier run (recovery must never wait behind new work);
    `leave` gives a place back and hands it to the waiter due first. With room and nobody
    waiting, `enter` takes its place at once and the order keeps no account of it.
    """

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self.limit = limit
        self.in_flight = 0
        self._order: FairOrder[trio.Event] = FairOrder()

    @property
    def waiting(self) -> int:
        return len(self._order)

    def _has_room(self) -> bool:
        return self.limit is None or self.in_flight < self.limit

    async def enter(self, key: Hashable | None = None, weight: int = 1) -> None:
        """Wait until a place is free; the caller must `leave` once done with it."""
        if self._has_room() and not self._order:
            # A cancelled caller must not hold the place: raise before counting it.
            await trio.lowlevel.checkpoint_if_cancelled()
            self.in_flight += 1
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        # `leave` counts the place for us before it wakes us, so a place handed over is
        # never lost; a cancelled waiter is simply taken out of the order.
        granted = trio.Event()
        self._order.push(granted, key=key, weight=weight)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():
                self.leave()  # handed a place in the same instant: give it on
            else:
                self._order.remove(granted)
            raise

    def enter_now(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        self._admit_waiters()

    def set_limit(self, limit: int | None) -> None:
        """Move the limit; raising it lets waiters in at once, lowering it drains."""
        if limit is not None and limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self.limit = limit
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        while self._order and self._has_room():
            self.in_flight += 1
            self._order.pop().set()


def next_limit(
    limit: int,
    in_flight: int,
    lag_s: float,
    *,
    target_s: float,
    ceiling: int,
    floor: int = 16,
) -> int:
    """AIMD on the event loop's lag: what the daemon admits up to next.

    A loop that falls behind (`lag_s` over `target_s`) runs every job's polls, webhooks
    and settles late, so jobs would time out for our own slowness: the limit drops to
    nine tenths of what is in flight now. A loop with time to spare (under half the
    target) lets a twentieth more in. Never below `floor` nor above `ceiling`.
    """
    if lag_s > target_s:
        proposed = int(min(limit, in_flight) * 0.9)
    elif lag_s < target_s / 2:
        proposed = limit + max(1, limit // 20)
    else:
        proposed = limit
    return max(min(floor, ceiling), min(ceiling, proposed))


class LoadMonitor:
    """Measures the loop's lag and steers the gate's limit with `next_limit`.

    The lag is how late a short sleep wakes (a loop with a long run queue wakes it late),
    or, with `probe`, the longer of that and what the probe measures: the daemon probes
    the trio-asyncio bridge, where every database call waits when the loop is busy.
    The limit starts at `start` and grows while the loop keeps up (about a fifth a
    second), so it finds what this machine carries instead of being told.
    """

    def __init__(
        self,
        gate: InFlightGate,
        *,
        ceiling: int,
        target_s: float,
        interval_s: float = 0.25,
        start: int = 64,
        probe: Callable[[], Awaitable[float]] | None = None,
    ) -> None:
        self._probe = probe
        # Slow start: a burst at start-up would otherwise be admitted whole before the
        # first lag is ever measured.
        gate.set_limit(max(1, min(start, ceiling)))
        self._gate = gate
        self._ceiling = ceiling
        self._target_s = target_s
        self._interval_s = interval_s
        self.lag_s = 0.0

    async def run(self) -> None:
        while True:
            started = trio.current_time()
            await trio.sleep(self._interval_s)
            lag = max(0.0, trio.current_time() - started - self._interval_s)
            if self._probe is not None:
                lag = max(lag, await self._probe())
            self.lag_s = lag
            limit = self._gate.limit if self._gate.limit is not None else self._ceiling
            self._gate.set_limit(
                next_limit(
                    limit,
                    self._gate.in_flight,
                    self.lag_s,
                    target_s=self._target_s,
                    ceiling=self._ceiling,
                )
            )


def sustainable_rate(
    cpu_s: float, finished: int, *, utilisation: float, floor: float, min_jobs: int = 20
) -> float | None:
    """Jobs a second this process can finish at `utilisation` of one core, or None.

    Estimated from the CPU the last window took over the jobs it finished; a window with
    fewer than `min_jobs` is mostly fixed costs (scans, sweeps) and says nothing.
    """
    if finished < min_jobs or cpu_s <= 0:
        return None
    return max(floor, utilisation * finished / cpu_s)


class ServicePacer:
    """Paces admissions to the rate this daemon has shown it can finish jobs.

    Little's law: admitting faster than jobs can be finished only lengthens the line
    inside the daemon, where it eats deadlines (the work of a job comes when its
    prediction ends, a latency after its admission, so a lag signal comes too late for a
    burst). Waiting outside, `queued`, costs nothing. The rate starts at the budget's
    own and follows the CPU each finished job cost, a window at a time.
    """

    def __init__(
        self,
        budget: RateBudget,
        *,
        cpu_clock: Callable[[], float],
        finished: Callable[[], int],
        window_s: float = 5.0,
        utilisation: float = 0.85,
        floor: float = 5.0,
    ) -> None:
        self._budget = budget
        self._cpu_clock = cpu_clock
        self._finished = finished
        self._window_s = window_s
        self._utilisation = utilisation
        self._floor = floor

    @property
    def rate(self) -> float:
        return self._budget.per_s

    async def run(self) -> None:
        cpu, done = self._cpu_clock(), self._finished()
        while True:
            await trio.sleep(self._window_s)
            now_cpu, now_done = self._cpu_clock(), self._finished()
            rate = sustainable_rate(
                now_cpu - cpu, now_done - done, utilisation=self._utilisation, floor=self._floor
            )
            if rate is not None:
                self._budget.set_rate(rate)
            cpu, done = now_cpu, now_done


@attrs.frozen
class Capacity:
    """The limits one daemon runs under, shared by every actor and job task."""

    gate: InFlightGate = attrs.Factory(InFlightGate)
    creates: RateBudget | None = None
    polls: RateBudget | None = None
    admissions: RateBudget | None = None
