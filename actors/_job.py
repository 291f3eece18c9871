"""One admitted job's life with the provider, as one task in its user's nursery.

The whole provider wait is one cancel scope with the job's deadline, inside
a second scope the user's cancellation cancels. When either fires, the
prediction is cancelled upstream (shielded, with its own short timeout) and
the job is settled: terminal status and refund in one transaction. A
shutdown cancels neither scope but the nursery around them, and the job is
left in flight for recovery to pick up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Final

import attrs
import structlog
import trio

from orchestrator.lifecycle import (
    Abandoned,
    CanceledByUser,
    Delivered,
    Ending,
    Job,
    TimedOut,
    UpstreamFailed,
    poll_delays,
    settle,
)
from orchestrator.providers import (
    Prediction,
    PredictionRequest,
    PredictionStatus,
    Provider,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
)

from ._config import ActorConfig
from ._ports import JobStore, Observer

log = structlog.get_logger("actors.job")

_SETTLE_RETRY_S: Final = 0.5


@attrs.define
class _Progress:
    prediction_id: str | None


class JobTask:
    """Runs one job to its end; `cancel()` is the user's cancellation."""

    def __init__(
        self,
        job: Job,
        remaining_s: float,
        *,
        store: JobStore,
        provider: Provider,
        config: ActorConfig,
        observer: Observer,
        queued_s: float | None = None,
        on_done: Callable[[Job], None] | None = None,
    ) -> None:
        self._observer = observer
        self._queued_s = queued_s
        self._polls = 0
        self.job = job
        self._remaining_s = remaining_s
        self._store = store
        self._provider = provider
        self._config = config
        self._on_done = on_done
        self._user_scope = trio.CancelScope()
        self._poke = trio.Event()

    def cancel(self) -> None:
        self._user_scope.cancel()

    def poke(self) -> None:
        """Poll now rather than at the next backoff step (a webhook arrived)."""
        self._poke.set()

    async def run(self) -> None:
        job = self.job
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(job_id=str(job.id), user_id=job.user_id):
            progress = _Progress(job.prediction_id)
            try:
                ending = await self._wait_for_ending(progress)
            except Exception:
                log.exception("job.crashed")
                ending = Abandoned("the orchestrator failed while running the job")
            if progress.prediction_id is not None and not isinstance(
                ending, Delivered | UpstreamFailed
            ):
                await self._cancel_upstream(progress.prediction_id)
            await self._settle(ending, time.monotonic() - started)
        if self._on_done is not None:
            self._on_done(job)

    async def _wait_for_ending(self, progress: _Progress) -> Ending:
        deadline = trio.current_time() + self._remaining_s
        ending: Ending | None = None
        with self._user_scope:
            with trio.move_on_at(deadline) as wait:
                ending = await self._drive(progress)
            if wait.cancelled_caught:
                log.warning("job.timed_out", deadline_s=self._config.deadline_s)
                ending = TimedOut(self._config.deadline_s)
        if self._user_scope.cancelled_caught:
            log.info("job.cancel_requested")
            return CanceledByUser()
        assert ending is not None  # noqa: S101  (the scope either finished or was caught)
        return ending

    async def _drive(self, progress: _Progress) -> Ending:
        if progress.prediction_id is None:
            submitted = await self._submit()
            if isinstance(submitted, UpstreamFailed):
                return submitted
            progress.prediction_id = submitted.id
            structlog.contextvars.bind_contextvars(prediction_id=submitted.id)
            await self._record(submitted.id)
            prediction = submitted
        else:
            structlog.contextvars.bind_contextvars(prediction_id=progress.prediction_id)
            prediction = Prediction(id=progress.prediction_id, status=PredictionStatus.PROCESSING)
        return await self._until_terminal(prediction)

    async def _submit(self) -> Prediction | UpstreamFailed:
        """Create the prediction; retry only what certainly did not reach the provider."""
        job = self.job
        request = PredictionRequest(
            job_id=job.id,
            prompt=job.prompt,
            params=job.params,
            num_outputs=job.num_outputs,
            webhook_url=self._config.webhook_url(job.id),
        )
        delays = self._delays()
        while True:
            try:
                with self._observed("submit"):
                    return await self._provider.submit(request)
            except ProviderRateLimited as exc:
                log.info("provider.rate_limited", operation="submit")
                await trio.sleep(exc.retry_after or next(delays))
            except (ProviderUnavailable, ProviderProtocolError) as exc:
                # The prediction may exist even though we could not read the answer.
                log.warning("provider.error", operation="submit", error=exc.summary)
                found = await self._find_lost_prediction()
                return found or UpstreamFailed(exc.summary)
            except ProviderError as exc:
                log.warning("provider.error", operation="submit", error=exc.summary)
                return UpstreamFailed(exc.summary)

    async def _find_lost_prediction(self) -> Prediction | None:
        try:
            with self._observed("find"):
                return await self._provider.find_for_job(self.job.id)
        except ProviderError as exc:
            log.warning("provider.error", operation="find", error=exc.summary)
            return None

    async def _record(self, prediction_id: str) -> None:
        """Store the prediction id at once (Brandur's atomic phase two)."""
        try:
            await self._store.mark_processing(
                self.job.id, provider=self._config.provider_name, prediction_id=prediction_id
            )
        except Exception:
            log.warning("job.prediction_not_recorded", exc_info=True)
        else:
            log.info("job.processing")

    async def _until_terminal(self, prediction: Prediction) -> Ending:
        delays = self._delays()
        while not prediction.status.terminal:
            with trio.move_on_after(next(delays)):
                await self._poke.wait()
            self._poke = trio.Event()
            self._polls += 1
            try:
                with self._observed("get"):
                    prediction = await self._provider.get(prediction.id)
            except ProviderRejected as exc:
                log.warning("provider.error", operation="get", error=exc.summary)
                return UpstreamFailed(exc.summary)
            except ProviderError as exc:
                log.info("provider.retry", operation="get", error=exc.summary)
        if prediction.status is PredictionStatus.SUCCEEDED:
            return Delivered(prediction.output)
        return UpstreamFailed(prediction.error or f"the prediction ended {prediction.status.value}")

    async def _cancel_upstream(self, prediction_id: str) -> None:
        with trio.move_on_after(self._config.cancel_timeout_s, shield=True) as scope:
            try:
                with self._observed("cancel"):
                    await self._provider.cancel(prediction_id)
            except ProviderError as exc:
                log.warning("provider.cancel_failed", error=exc.summary)
                return
        if scope.cancelled_caught:
            log.warning("provider.cancel_failed", error="timed out")
        else:
            log.info("provider.canceled")

    async def _settle(self, ending: Ending, duration_s: float) -> None:
        """Terminal status and refund, retried until stored or out of time."""
        settlement = settle(self.job, ending)
        finish = None
        with trio.move_on_after(self._config.settle_timeout_s, shield=True):
            while finish is None:
                try:
                    finish = await self._store.finish(
                        self.job.id,
                        settlement.status,
                        code=settlement.code,
                        message=settlement.message,
                        refund=settlement.refund,
                        outputs=settlement.outputs,
                    )
                except Exception:
                    log.warning("job.settle_failed", exc_info=True)
                    await trio.sleep(_SETTLE_RETRY_S)
        if finish is None:
            log.error("job.settle_abandoned", note="recovery will finish it")
            return
        log.info(
            "job.finished",
            status=settlement.status.value,
            code=settlement.code.value if settlement.code else None,
            duration_s=round(duration_s, 3),
            credits_refunded=finish.refunded,
            outputs=len(settlement.outputs),
            noop=finish.status is not settlement.status,
        )
        if finish.refunded:
            log.info("job.refunded", credits=finish.refunded)
        if finish.status is settlement.status:
            self._observer.job_finished(
                settlement.status,
                settlement.code,
                refunded=finish.refunded,
                provider_s=duration_s,
                total_s=None if self._queued_s is None else self._queued_s + duration_s,
                polls=self._polls,
            )

    @contextlib.contextmanager
    def _observed(self, operation: str) -> Iterator[None]:
        try:
            yield
        except ProviderError as exc:
            self._observer.provider_request(operation, _outcome(exc))
            raise
        self._observer.provider_request(operation, "ok")

    def _delays(self) -> Iterator[float]:
        return poll_delays(
            self._config.poll_initial_s, self._config.poll_multiplier, self._config.poll_max_s
        )


def _outcome(exc: ProviderError) -> str:
    """A bounded label for a provider failure."""
    match exc:
        case ProviderRateLimited():
            return "rate_limited"
        case ProviderUnavailable():
            return "unavailable"
        case ProviderRejected():
            return "rejected"
        case ProviderProtocolError():
            return "malformed"
        case _:
            return "error"
