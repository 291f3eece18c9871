"""One admitted job's life with the provider, as one task in its user's nursery.

The whole provider wait is one cancel scope with the job's deadline, inside
a second scope the user's cancellation cancels. When either fires, the
prediction is cancelled upstream (shielded, with its own short timeout) and
the job is settled: terminal status and refund in one transaction. A
shutdown cancels neither scope but the nursery around them, and the job is
left in flight for recovery to pick up. So does a write the store refuses as
fenced: the job's partition slot has a new owner, which resumes it.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Final

import attrs
import structlog
import trio

from orchestrator.core import (
    IMAGE_INPUT,
    NULL_SPAN,
    Abandoned,
    CanceledByUser,
    Delivered,
    Ending,
    ExpectedFault,
    Fence,
    FencedOff,
    Finish,
    InFlight,
    Job,
    JobTrace,
    OutputUnavailable,
    Prediction,
    PredictionRequest,
    PredictionStatus,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ProviderUnreachable,
    Settlement,
    Span,
    StoredOutput,
    TimedOut,
    UpstreamFailed,
    UpstreamRef,
    cancel_upstream,
    finish,
    image_inputs,
    poll_delays,
)

from ._deps import Deps
from ._retry import CREATE_UNAVAILABLE, Retries, Transient

log = structlog.get_logger("actors.job")

_SETTLE_RETRY_S: Final = 0.2
_SERVER_ERROR: Final = 500
_SETTLE_RETRY_MAX_S: Final = 10.0
# Upstream states in which a found prediction will never deliver.
_DEAD: Final = frozenset(
    {PredictionStatus.FAILED, PredictionStatus.CANCELED, PredictionStatus.ABORTED}
)


@attrs.define
class _Progress:
    """What the job has achieved so far, by output index; survives the deadline firing."""

    predictions: dict[int, str]
    # Outputs whose submit was sent but whose prediction id is not known yet.
    submitting: set[int] = attrs.Factory(set)
    stored: dict[int, StoredOutput] = attrs.Factory(dict)
    failures: dict[int, str] = attrs.Factory(dict)
    ended: set[int] = attrs.Factory(set)

    def delivered(self) -> tuple[StoredOutput, ...]:
        return tuple(self.stored[idx] for idx in sorted(self.stored))


class JobTask:
    """Runs one job to its end; `cancel()` is the user's cancellation.

    A job asking for N outputs runs N single-output predictions, at most
    `output_concurrency` at a time, all inside the job's one deadline.
    A `resumed` job (left in flight by an earlier run) first looks upstream for
    each output without a recorded prediction, since the earlier run may have
    submitted it, and re-attaches rather than paying twice.
    """

    def __init__(
        self,
        in_flight: InFlight,
        deps: Deps,
        *,
        queued_s: float | None = None,
        on_done: Callable[[Job], None] | None = None,
        resumed: bool = False,
        fence: Fence | None = None,
        trace: JobTrace | None = None,
    ) -> None:
        self._trace = (
            trace if trace is not None else deps.tracing.job_trace(in_flight.job, resumed=resumed)
        )
        self._watch = deps.watch
        self._fence = fence
        self._dropped = trio.CancelScope()
        self._dropping = False
        self._submits = 0
        self.job = in_flight.job
        self._resumed = resumed
        self._capacity = deps.capacity
        # Admission took the create tokens for a fresh job's outputs already.
        self._prepaid_creates = 0 if resumed else in_flight.job.num_outputs
        self._remaining_s = in_flight.remaining_s
        self._progress = _Progress(dict(in_flight.predictions))
        self._store = deps.store
        self._provider = deps.provider
        self._outputs = deps.outputs
        self._inputs = deps.inputs
        self._config = deps.config
        self._provider_name = deps.config.provider_name
        self._observer = deps.observer
        self._queued_s = queued_s
        self._on_done = on_done
        self._polls = 0
        self._user_scope = trio.CancelScope()
        # Per prediction id: what wakes its poll loop, and a signed webhook's final word.
        self._wakes: dict[str, trio.Event] = {}
        self._told: dict[str, Prediction] = {}
        self._retries = Retries(deps.config, deps.observer)
        # Attempts an earlier run made per output: a resume goes on counting from there.
        self._earlier = dict(in_flight.replaced)
        self._deadline: float | None = None

    def cancel(self) -> None:
        self._user_scope.cancel()

    def drop(self, *, graceful: bool = True) -> None:
        """Stop without settling: the job's slot goes to another daemon, which resumes it.

        Graceful, a submit already sent is let finish and its prediction recorded first,
        so the next owner re-attaches to it instead of paying for a second one. Not
        graceful (the lease is gone, so no write would be accepted), it stops at once.
        """
        self._dropping = True
        if not graceful or not self._submits:
            self._dropped.cancel()

    def poke(self, prediction: Prediction | None = None) -> None:
        """A webhook arrived: poll now, or take a signed webhook's terminal state as is.

        ``prediction`` is passed only for webhooks whose signature was verified; a
        terminal one ends that output's wait with no poll at all. Without it (an
        unsigned webhook, a hint only) every output of the job polls now.
        """
        if prediction is None:
            for wake in self._wakes.values():
                wake.set()
            return
        if prediction.status.terminal:
            self._told[prediction.id] = prediction
        waiting = self._wakes.get(prediction.id)
        if waiting is not None:
            waiting.set()

    async def run(self) -> None:
        """Run the job to its settlement; never raises into the actor's nursery.

        Two catch-alls, each with one meaning: a bug while the job runs ends it as
        `Abandoned`, refunded whole (`_ending`); a bug in the settlement itself
        leaves it in flight for recovery's orphan scan (here). Below them every
        step catches only what its port declares: `ProviderError`,
        `OutputUnavailable`, and the store's `ExpectedFault` and `FencedOff`.
        """
        job = self.job
        started = time.monotonic()
        try:
            with (
                structlog.contextvars.bound_contextvars(job_id=str(job.id), user_id=job.user_id),
                self._dropped,
            ):
                ending = await self._ending()
                with self._trace.span("job.finish"):
                    await self._settle(ending, time.monotonic() - started)
        except Exception:
            log.exception("job.task_failed", note="recovery's orphan scan resumes the job")
        finally:
            self._trace.end()
            if self._on_done is not None:
                self._on_done(job)

    async def _ending(self) -> Ending:
        """How the job ended, with nothing left running upstream that nobody will use."""
        try:
            ending = await self._wait_for_ending()
        except Exception:
            log.exception("job.crashed")
            ending = Abandoned("the orchestrator failed while running the job")
        with trio.CancelScope(shield=True):
            await self._stop_paying()
        return ending

    async def _stop_paying(self) -> None:
        """Cancel upstream whatever still runs for nothing: unfinished and cut-off predictions.

        A submit cut off by the deadline or a cancel may have created a prediction whose
        id never came back; it is looked up by its tag, noted as provider money, and
        cancelled. Each lookup and cancel has its own short timeout.
        """
        progress = self._progress
        unfinished = [pid for idx, pid in progress.predictions.items() if idx not in progress.ended]
        async with trio.open_nursery() as nursery:
            for prediction_id in unfinished:
                nursery.start_soon(self._cancel_one, prediction_id)
            for idx in sorted(progress.submitting - progress.predictions.keys()):
                nursery.start_soon(self._cancel_lost, idx)

    async def _cancel_lost(self, idx: int) -> None:
        with trio.move_on_after(self._config.cancel_timeout_s):
            found = await self._find_lost_prediction(idx)
            if found is None:
                return
            running = not found.status.terminal
            log.warning("job.prediction_lost", idx=idx, prediction_id=found.id, running=running)
            if running:
                await self._cancel_one(found.id)
            try:
                await self._store.note_upstream(
                    UpstreamRef(self._config.provider_name, found.id, self.job.id, idx, "lost"),
                    status=found.status.value,
                    cancel_sent=running,
                )
            except ExpectedFault as exc:
                # Reconciliation finds it again in the listing.
                log.warning("job.upstream_not_noted", idx=idx, error=str(exc))

    async def _wait_for_ending(self) -> Ending:
        self._deadline = deadline = trio.current_time() + self._remaining_s
        ending: Ending | None = None
        with self._user_scope:
            with trio.move_on_at(deadline) as wait:
                ending = await self._drive()
            if wait.cancelled_caught:
                log.warning("job.timed_out", deadline_s=self._config.deadline_s)
                ending = TimedOut(self._config.deadline_s, self._progress.delivered())
        if self._user_scope.cancelled_caught:
            log.info("job.cancel_requested")
            return CanceledByUser()
        assert ending is not None  # noqa: S101  (the scope either finished or was caught)
        return ending

    async def _drive(self) -> Ending:
        limiter = trio.CapacityLimiter(self._config.output_concurrency)
        async with trio.open_nursery() as nursery:
            if self._trace.traceparent is not None and self.job.traceparent is None:
                nursery.start_soon(self._keep_trace, self._trace.traceparent)
            for idx in range(self.job.num_outputs):
                nursery.start_soon(self._one_output, idx, limiter)
        progress = self._progress
        failures = tuple(progress.failures[idx] for idx in sorted(progress.failures))
        if not progress.stored and len(failures) == 1 and self.job.num_outputs == 1:
            return UpstreamFailed(failures[0])
        return Delivered(progress.delivered(), failures)

    async def _one_output(self, idx: int, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            prediction = await self._attach(idx)
            attempt = 1 + self._earlier.get(idx, 0)
            while True:
                if prediction is None and attempt > 1 and self._resumed:
                    # A crash may have cut off the record of an attempt that runs upstream.
                    prediction = await self._found_upstream(idx)
                if prediction is None:
                    with self._trace.span(
                        "prediction.create",
                        {"output.idx": idx, "provider": self._provider_name, "attempt": attempt},
                    ) as span:
                        submitted = await self._submit_sent(idx)
                        span.set(_created(submitted))
                    if isinstance(submitted, UpstreamFailed):
                        if await self._retry(idx, attempt, submitted):
                            attempt += 1
                            continue
                        self._progress.submitting.discard(idx)
                        self._progress.failures[idx] = submitted.summary
                        return
                    prediction = submitted
                with self._trace.span(
                    "prediction.wait", {"output.idx": idx, "prediction.id": prediction.id}
                ) as span:
                    result = await self._until_terminal(prediction, span)
                    span.set(_waited(result))
                if not await self._retry(idx, attempt, result):
                    break
                attempt += 1
                prediction = None
            self._progress.ended.add(idx)
            if isinstance(result, UpstreamFailed):
                self._progress.failures[idx] = result.summary
            elif not result.output:
                self._progress.failures[idx] = "the provider finished without any output"
            else:
                with self._trace.span("output.download", {"output.idx": idx}) as span:
                    await self._keep(idx, result.output[0])
                    span.set({"output.stored": idx in self._progress.stored})

    async def _retry(self, idx: int, attempt: int, failure: Prediction | UpstreamFailed) -> bool:
        """Whether to make another prediction for the output, after the backoff.

        The failed prediction has ended, so it leaves what `_stop_paying` would cancel;
        its record stays until the next one replaces it (the store notes it 'replaced').
        """
        if isinstance(failure, Prediction):
            return False
        if not await self._retries.another(idx, attempt, failure, self._deadline):
            return False
        self._progress.predictions.pop(idx, None)
        return True

    async def _submit_sent(self, idx: int) -> Prediction | UpstreamFailed:
        """Submit the output's prediction and record it; a graceful drop waits for this."""
        if self._dropping:
            self._dropped.cancel()
            await trio.lowlevel.checkpoint()
        self._progress.submitting.add(idx)
        self._submits += 1
        try:
            submitted = await self._submit(idx)
            if not isinstance(submitted, UpstreamFailed):
                await self._adopt(idx, submitted)
            return submitted
        finally:
            self._submits -= 1
            if self._dropping and not self._submits:
                self._dropped.cancel()

    async def _attach(self, idx: int) -> Prediction | None:
        """The prediction this output already has: recorded, or found upstream on resume."""
        prediction_id = self._progress.predictions.get(idx)
        if prediction_id is not None:
            return Prediction(id=prediction_id, status=PredictionStatus.PROCESSING)
        if not self._resumed:
            return None
        return await self._found_upstream(idx)

    async def _found_upstream(self, idx: int) -> Prediction | None:
        """The output's newest prediction upstream, adopted, if it may still deliver.

        An earlier run may have created it and died before recording it: at the first
        attempt of a resumed output, or after a recorded attempt that failed.
        """
        # Until answered: a lookup that failed says nothing, and creating on it would pay
        # twice whenever the earlier run's prediction exists (the common case on resume).
        found = await self._find_lost_prediction(idx, until_answered=True)
        if found is None or found.status in _DEAD:
            return None
        log.info("job.prediction_found", idx=idx, prediction_id=found.id)
        await self._adopt(idx, found)
        return found

    async def _adopt(self, idx: int, prediction: Prediction) -> None:
        self._progress.predictions[idx] = prediction.id
        self._progress.submitting.discard(idx)
        await self._record(idx, prediction.id)

    async def _keep(self, idx: int, url: str) -> None:
        try:
            self._progress.stored[idx] = await self._outputs.store(self.job.id, idx, url)
        except OutputUnavailable as exc:
            log.warning("output.refused", idx=idx, reason=str(exc))
            self._progress.failures[idx] = f"output {idx}: {exc}"

    async def _submit(self, idx: int) -> Prediction | UpstreamFailed:
        """Create the prediction; retry only what certainly did not reach the provider."""
        job = self.job
        delays = self._delays()
        while True:
            await self._create_token()
            # Built for each try: input images get URLs fresh for this very create.
            request = PredictionRequest(
                job_id=job.id,
                prompt=job.prompt,
                params=await self._provider_params(),
                num_outputs=1,
                webhook_url=self._config.webhook_url,
                output_index=idx,
            )
            try:
                with self._observed("submit"):
                    return await self._provider.submit(request)
            except ProviderRateLimited as exc:
                log.info("provider.rate_limited", operation="submit")
                await trio.sleep(exc.retry_after or next(delays))
            except ProviderUnreachable as exc:
                # Nothing was sent, so nothing can be paid twice: try again within the deadline.
                log.info("provider.retry", operation="submit", error=exc.summary)
                await trio.sleep(next(delays))
            except (ProviderUnavailable, ProviderProtocolError) as exc:
                # The prediction may exist even though we could not read the answer.
                log.warning("provider.error", operation="submit", error=exc.summary)
                found = await self._find_lost_prediction(idx)
                if found is not None:
                    return found
                if self._create_retryable(exc):
                    return Transient(exc.summary, CREATE_UNAVAILABLE)
                return UpstreamFailed(exc.summary)
            except ProviderError as exc:
                log.warning("provider.error", operation="submit", error=exc.summary)
                return UpstreamFailed(exc.summary)

    async def _provider_params(self) -> Mapping[str, object]:
        """The job's params as this create sends them: input images as fresh short-lived URLs.

        Presigned at each create (a retry, a resume), so no URL handed to the provider
        outlives the few minutes it needs to fetch the image.
        """
        params = self.job.params
        inputs = image_inputs(self.job.user_id, params, self._config.input_hosts)
        if isinstance(inputs, str) or not inputs:
            return params
        return {**params, IMAGE_INPUT: list(await self._inputs.for_provider(inputs))}

    @staticmethod
    def _create_retryable(exc: ProviderError) -> bool:
        """A create that failed and was not found upstream by its tag may be sent again.

        Only when the provider answered 5xx: it said it failed. A timeout may have created
        the prediction, and a lookup that found nothing proves little (KIE has no listing,
        a listing can fail or lag behind a create); a 2xx with a garbled body almost
        surely did create it. Sending those again would pay twice upstream.
        """
        return (
            isinstance(exc, ProviderUnavailable)
            and exc.status_code is not None
            and exc.status_code >= _SERVER_ERROR
        )

    async def _create_token(self) -> None:
        if self._prepaid_creates:
            self._prepaid_creates -= 1
        elif self._capacity.creates is not None:
            await self._capacity.creates.take()

    async def _find_lost_prediction(
        self, idx: int, *, until_answered: bool = False
    ) -> Prediction | None:
        """Look the output's prediction up by its tag; only webhook URLs carry one.

        A failed lookup is None at once, unless `until_answered`: then it is asked
        again with backoff until the provider says found or not (the deadline bounds it).
        """
        if self._config.webhook_url is None:
            return None
        delays = self._delays()
        while True:
            try:
                with self._observed("find"):
                    return await self._provider.find_for_job(
                        self.job.id, idx, since=self.job.admitted_at
                    )
            except ProviderError as exc:
                log.warning("provider.error", operation="find", error=exc.summary)
                if not until_answered:
                    return None
            await trio.sleep(next(delays))

    async def _record(self, idx: int, prediction_id: str) -> None:
        """Store the prediction id at once (Brandur's atomic phase two)."""
        try:
            await self._store.mark_processing(
                self.job.id,
                provider=self._config.provider_name,
                prediction_id=prediction_id,
                idx=idx,
                fence=self._fence,
            )
        except FencedOff:
            self._fenced("record")
        except ExpectedFault as exc:
            # Held in memory meanwhile; a resume finds it upstream by its tag.
            log.warning("job.prediction_not_recorded", idx=idx, error=str(exc))
        else:
            log.info("job.processing", prediction_id=prediction_id, idx=idx)

    async def _keep_trace(self, traceparent: str) -> None:
        """Keep this trace's context on the job, so whoever resumes it continues the trace."""
        try:
            await self._store.note_traceparent(self.job.id, traceparent, fence=self._fence)
        except FencedOff:
            self._fenced("trace")
        except ExpectedFault as exc:
            # Only tracing loses: a resume would start a trace of its own.
            log.warning("job.trace_not_kept", error=str(exc))

    def _fenced(self, write: str) -> None:
        """The slot has a new owner: stop this task where it stands, settling nothing."""
        log.warning("job.fenced", write=write, note="the slot's new owner resumes the job")
        self._observer.write_fenced(write)
        self._dropped.cancel()

    async def _until_terminal(
        self, prediction: Prediction, span: Span = NULL_SPAN
    ) -> Prediction | UpstreamFailed:
        """Wait for the prediction's end: polls back off, or with webhooks are a safety net."""
        if self._watch is not None and not prediction.status.terminal:
            self._watch.watch(prediction.id, self.poke)
        try:
            return await self._wait_terminal(prediction, span)
        finally:
            self._wakes.pop(prediction.id, None)
            if self._watch is not None:
                self._watch.unwatch(prediction.id)

    async def _wait_terminal(
        self, prediction: Prediction, span: Span = NULL_SPAN
    ) -> Prediction | UpstreamFailed:
        delays = self._poll_delays()
        while not prediction.status.terminal:
            wake = self._wakes[prediction.id] = trio.Event()
            with trio.move_on_after(next(delays)):
                await wake.wait()
            if wake.is_set():
                span.event("webhook" if self._watch is None else "listing")
            told = self._told.pop(prediction.id, None)
            # A success seen in a listing may come without its output: then read it once.
            if told is not None and (told.output or told.status is not PredictionStatus.SUCCEEDED):
                prediction = told
                break
            self._polls += 1
            if self._capacity.polls is not None:
                await self._capacity.polls.take()
            try:
                with self._observed("get"):
                    prediction = await self._provider.get(prediction.id)
            except ProviderRejected as exc:
                log.warning("provider.error", operation="get", error=exc.summary)
                span.event("poll", {"outcome": "rejected"})
                return UpstreamFailed(exc.summary)
            except ProviderError as exc:
                log.info("provider.retry", operation="get", error=exc.summary)
                span.event("poll", {"outcome": _outcome(exc)})
            else:
                span.event("poll", {"prediction.status": prediction.status.value})
        if prediction.status is PredictionStatus.SUCCEEDED:
            return prediction
        summary = prediction.error or f"the prediction ended {prediction.status.value}"
        if prediction.status is PredictionStatus.FAILED and prediction.retryable:
            return Transient(summary)
        return UpstreamFailed(summary)

    async def _cancel_one(self, prediction_id: str) -> None:
        """Stop paying for a prediction nobody will use, within the cancel timeout."""
        await cancel_upstream(self._counted_cancel, prediction_id, self._config.cancel_timeout_s)

    async def _counted_cancel(self, prediction_id: str) -> None:
        with self._observed("cancel"):
            await self._provider.cancel(prediction_id)

    async def _settle(self, ending: Ending, duration_s: float) -> None:
        """Terminal status and refund, retried with backoff until stored.

        The first `settle_timeout_s` are shielded, so a shutdown does not cut a settle
        that is about to land; after that the retries go on unshielded for as long as
        the daemon runs (a stop leaves the job to recovery). An unexpected error is a
        bug a retry cannot fix: it goes up to `run`, and the job to the orphan scan.
        """
        delays = poll_delays(_SETTLE_RETRY_S, 2.0, _SETTLE_RETRY_MAX_S)
        settled: tuple[Settlement, Finish] | None = None
        with trio.move_on_after(self._config.settle_timeout_s, shield=True) as first:
            settled = await self._store_ending(ending, delays)
        if first.cancelled_caught:
            log.warning("job.settle_slow", note="still retrying")
            settled = await self._store_ending(ending, delays)
        if settled is None:
            return
        settlement, done = settled
        self._trace.set({"job.status": done.status.value, "credits.refunded": done.refunded})
        if settlement.code is not None:
            self._trace.set({"error.code": settlement.code.value})
        log.info(
            "job.finished",
            status=settlement.status.value,
            code=settlement.code.value if settlement.code else None,
            duration_s=round(duration_s, 3),
            credits_refunded=done.refunded,
            outputs=len(settlement.outputs),
            noop=done.status is not settlement.status,
        )
        if done.refunded:
            log.info("job.refunded", credits=done.refunded)
        if done.status is settlement.status:
            self._observer.job_finished(
                settlement.status,
                settlement.code,
                refunded=done.refunded,
                provider_s=duration_s,
                total_s=None if self._queued_s is None else self._queued_s + duration_s,
                polls=self._polls,
            )

    async def _store_ending(
        self, ending: Ending, delays: Iterator[float]
    ) -> tuple[Settlement, Finish] | None:
        """Store the ending, retrying faults the store expects; None once fenced off."""
        while True:
            try:
                return await finish(self._store, self.job, ending, fence=self._fence)
            except FencedOff:
                self._fenced("finish")
                return None
            except ExpectedFault as exc:
                log.warning("job.settle_failed", error=str(exc))
            self._observer.settle_retried()
            await trio.sleep(next(delays))

    @contextlib.contextmanager
    def _observed(self, operation: str) -> Iterator[None]:
        try:
            yield
        except ProviderError as exc:
            self._observer.provider_request(operation, _outcome(exc))
            raise
        self._observer.provider_request(operation, "ok")

    def _poll_delays(self) -> Iterator[float]:
        """With webhooks or a listing watch, polls are only a slow, steady safety net."""
        if self._config.webhook_url is not None or self._watch is not None:
            return itertools.repeat(self._config.webhook_poll_s)
        return self._delays()

    def _delays(self) -> Iterator[float]:
        return poll_delays(
            self._config.poll_initial_s, self._config.poll_multiplier, self._config.poll_max_s
        )


def _created(submitted: Prediction | UpstreamFailed) -> dict[str, str]:
    if isinstance(submitted, UpstreamFailed):
        return {"outcome": "failed"}
    return {"outcome": "ok", "prediction.id": submitted.id}


def _waited(result: Prediction | UpstreamFailed) -> dict[str, str]:
    if isinstance(result, UpstreamFailed):
        return {"prediction.status": "failed"}
    return {"prediction.status": result.status.value}


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
