"""Retry before refund: another prediction for an output whose last one failed transiently.

Inside the job's one admitted run, so nothing is debited again: the user paid once at
admission, and `settle` refunds exactly the outputs still missing when the job ends. Each
retry is a new prediction upstream (paid by us), so only failures the provider calls
transient are retried, a bounded number of times, and never one that could not finish
before the deadline.
"""

from __future__ import annotations

import random
from typing import Final, Literal

import attrs
import structlog
import trio

from orchestrator.core import Observer, UpstreamFailed, retry_delay, retry_margin

from ._config import ActorConfig

log = structlog.get_logger("actors.job")

# Bounded labels, for the log and the metric.
Reason = Literal["create_unavailable", "prediction_failed"]
CREATE_UNAVAILABLE: Final[Reason] = "create_unavailable"
PREDICTION_FAILED: Final[Reason] = "prediction_failed"


@attrs.frozen
class Transient(UpstreamFailed):
    """A failure the provider says was on its side: a fresh prediction may succeed."""

    reason: Reason = PREDICTION_FAILED


@attrs.define
class Retries:
    """Decides, and waits out, each output's next attempt."""

    config: ActorConfig
    observer: Observer
    rng: random.Random = attrs.Factory(random.Random)

    async def another(
        self, idx: int, attempt: int, failure: UpstreamFailed, deadline: float | None
    ) -> bool:
        """After attempt ``attempt`` failed: wait the backoff and say whether to try again.

        False (at once, without waiting) for a failure that is not `Transient`, when the
        retries are used up, or when the backoff plus `retry_margin` would reach past the
        deadline: an attempt started then would be cut off and cancelled, paid for nothing.
        """
        if not isinstance(failure, Transient):
            return False
        config = self.config
        if attempt > config.prediction_retries:
            self._give_up(idx, attempt, failure, "exhausted")
            return False
        delay = retry_delay(
            attempt + 1,
            base_s=config.retry_backoff_s,
            max_s=config.retry_backoff_max_s,
            rng=self.rng,
        )
        margin = retry_margin(config.deadline_s)
        if deadline is not None and trio.current_time() + delay + margin > deadline:
            self._give_up(idx, attempt, failure, "out_of_time")
            return False
        log.info(
            "job.retrying",
            idx=idx,
            attempt=attempt + 1,
            reason=failure.reason,
            error=failure.summary,
            delay_s=round(delay, 3),
        )
        self.observer.prediction_retried(failure.reason, "retried")
        await trio.sleep(delay)
        return True

    def _give_up(self, idx: int, attempt: int, failure: Transient, why: str) -> None:
        log.warning(
            "job.retries_exhausted",
            idx=idx,
            attempts=attempt,
            reason=failure.reason,
            why=why,
            error=failure.summary,
        )
        self.observer.prediction_retried(failure.reason, why)
