"""What one daemon can carry: jobs in flight, and the provider's create and poll rates.

Beyond capacity a job waits *before* admission, still `queued`, so its deadline (set at
admission) measures the provider's time and never our queueing. Waiters are served in
arrival order; since each user's actor admits one job at a time, that is round robin over
the users with work. The rate budgets are GCRA reservations on Trio's clock, so MockClock
tests drive them, and `reserve` is the pure rule behind them.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import attrs
import trio


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
    """At most `limit` jobs in flight in this daemon (None: no limit), admitted in order.

    `enter` waits for a place; `enter_now` takes one at once even past the limit, for a
    job already admitted by an earlier run (recovery must never wait behind new work);
    `leave` gives a place back and hands it to the longest waiter.
    """

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self.limit = limit
        self.in_flight = 0
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def waiting(self) -> int:
        return len(self._lot)

    def _has_room(self) -> bool:
        return self.limit is None or self.in_flight < self.limit

    async def enter(self) -> None:
        """Wait until a place is free; the caller must `leave` once done with it."""
        if self._has_room() and not self._lot:
            self.in_flight += 1
            await trio.lowlevel.checkpoint()
            return
        # `leave` counts the place for us before it unparks us, so a place handed over
        # is never lost; a cancelled waiter is simply removed from the lot.
        await self._lot.park()

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
        while self._lot and self._has_room():
            self.in_flight += 1
            self._lot.unpark()


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
