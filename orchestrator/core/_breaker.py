"""A circuit breaker per provider, as a pure state machine over attrs values.

Closed, it counts a run of unavailability (5xx, timeouts, unreachable, 429) within a
window; a run of `threshold` opens it. Open, no new job is admitted on the provider
for a cool-down; then it is half-open, and ONE probe is let through: success closes
it, failure opens it again with the cool-down doubled (up to `max_cooldown_s`).

Nothing here reads a clock: every transition takes `now` (the caller's monotonic
time), so tests walk it by hand and the Trio wrapper passes `trio.current_time()`.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs


class BreakerState(enum.IntEnum):
    """The gauge's values: `orchestrator_provider_breaker_state`."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@attrs.frozen(kw_only=True)
class BreakerPolicy:
    threshold: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    window_s: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    cooldown_s: float = attrs.field(default=15.0, validator=attrs.validators.gt(0))
    max_cooldown_s: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))


DEFAULT_POLICY: Final = BreakerPolicy()


@attrs.frozen(kw_only=True)
class Breaker:
    """One provider's breaker: its state and what the next transition needs.

    `failures` counts the current run (closed) since `run_started_at`; `until` is
    when an open breaker turns half-open; `cooldown_s` the cool-down it opened with;
    `probing` is True while the half-open probe is out.
    """

    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    run_started_at: float = 0.0
    until: float = 0.0
    cooldown_s: float = 0.0
    probing: bool = False


def breaker_failure(breaker: Breaker, policy: BreakerPolicy, now: float) -> Breaker:
    """A request failed as unavailable."""
    match breaker.state:
        case BreakerState.CLOSED:
            if breaker.failures and now - breaker.run_started_at <= policy.window_s:
                failures, started = breaker.failures + 1, breaker.run_started_at
            else:
                failures, started = 1, now
            if failures >= policy.threshold:
                return _open(policy.cooldown_s, now)
            return attrs.evolve(breaker, failures=failures, run_started_at=started)
        case BreakerState.HALF_OPEN:
            return _open(min(breaker.cooldown_s * 2, policy.max_cooldown_s), now)
        case _:
            return breaker  # open: requests of jobs already running say nothing new


def breaker_success(breaker: Breaker, _policy: BreakerPolicy, _now: float) -> Breaker:
    """A request was answered (even with a 4xx: the provider is up)."""
    match breaker.state:
        case BreakerState.CLOSED:
            return Breaker() if breaker.failures else breaker
        case BreakerState.HALF_OPEN:
            return Breaker()
        case _:
            # Open: a running job's poll that got through is not the probe; the
            # cool-down runs its course and the probe decides.
            return breaker


def breaker_tick(breaker: Breaker, now: float) -> Breaker:
    """Open past its cool-down turns half-open; anything else is unchanged."""
    if breaker.state is BreakerState.OPEN and now >= breaker.until:
        return attrs.evolve(breaker, state=BreakerState.HALF_OPEN, probing=False)
    return breaker


def breaker_probe(breaker: Breaker) -> tuple[Breaker, bool]:
    """Take the half-open probe: (the breaker, whether the caller may send it).

    Only one probe is out at a time; every other caller waits for its outcome.
    """
    if breaker.state is BreakerState.HALF_OPEN and not breaker.probing:
        return attrs.evolve(breaker, probing=True), True
    return breaker, False


def _open(cooldown_s: float, now: float) -> Breaker:
    return Breaker(state=BreakerState.OPEN, until=now + cooldown_s, cooldown_s=cooldown_s)
