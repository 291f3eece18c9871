"""The per-user actor: admission strictly one message at a time.

Two submissions of one user can never pass a check together, because this
actor is the only place that admits for the user and it handles one message
before the next. Admitted jobs run as tasks in the actor's own nursery, so
they neither block admission nor outlive the actor. Every write carries the
fence of the user's partition slot; when the slot is lost the registry drops
the actor (`drop`), and its jobs are left, unsettled, to the slot's new owner.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Final

import attrs
import structlog
import trio

from orchestrator.core import (
    AdmissionOutcome,
    ErrorCode,
    Fence,
    FencedOff,
    InFlight,
    InputsUnavailable,
    Job,
    JobStatus,
    JobTrace,
    Prediction,
    Reject,
    decide_admission,
    image_inputs,
)

from ._deps import Deps
from ._job import JobTask
from ._mailbox import Mailbox
from ._messages import Cancel, Message, Resume, Submit
from ._routes import without_routing

log = structlog.get_logger("actors.user")

_HANDLE_LIMIT_S: Final = 30.0
# How long a graceful drop waits for submits already sent to be recorded.
DROP_GRACE_S: Final = 10.0

_REFUSAL_FOR_OUTCOME = {
    AdmissionOutcome.NO_SEAT: (
        ErrorCode.TOO_MANY_INFLIGHT,
        "every in-flight seat of the plan is taken",
    ),
    AdmissionOutcome.INSUFFICIENT_CREDITS: (
        ErrorCode.INSUFFICIENT_CREDITS,
        "the balance no longer covers the cost",
    ),
    AdmissionOutcome.CANCELED: (
        ErrorCode.CANCELED,
        "cancelled before it started; nothing was charged",
    ),
}


class UserActor:
    """One user's admissions and running jobs.

    It knows nothing of the registry: it retires through `retire` (refused while its
    mailbox holds anything) and reports each job that ends through `job_ended`.
    """

    def __init__(
        self,
        user_id: str,
        deps: Deps,
        *,
        slot: int = 0,
        fence: Fence | None = None,
        retire: Callable[[UserActor], bool] = lambda _actor: True,
        job_ended: Callable[[], None] = lambda: None,
    ) -> None:
        self._deps = deps
        self._watch = deps.watch
        self._capacity = deps.capacity
        self._observer = deps.observer
        self._tracing = deps.tracing
        self._outputs = deps.outputs
        self.user_id = user_id
        self.slot = slot
        self._fence = fence
        self._dropped = trio.CancelScope()
        self._dropping = False
        self.done = trio.Event()
        self.mailbox = Mailbox(deps.config.mailbox_size)
        self._retire = retire
        self._job_ended = job_ended
        self._store = deps.store
        self._config = deps.config
        self._running: dict[uuid.UUID, JobTask] = {}
        self._resuming: set[uuid.UUID] = set()
        # Jobs left queued because no breaker admitted them (logged once each).
        self._held: set[uuid.UUID] = set()
        self._stranger = False
        self._admission = trio.CancelScope()
        self._jobs: trio.Nursery | None = None

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def dropping(self) -> bool:
        return self._dropping

    def drop(self, *, graceful: bool = True) -> None:
        """Stop: the slot is no longer ours. Nothing is settled; `done` is set when gone.

        Graceful (the slot is handed over), each job task first lets a submit already
        sent be recorded, for at most `DROP_GRACE_S`; otherwise everything stops at once.
        """
        self._dropping = True
        self.mailbox.close()
        self._admission.cancel()
        for task in list(self._running.values()):
            task.drop(graceful=graceful)
        if graceful:
            self._dropped.deadline = min(self._dropped.deadline, trio.current_time() + DROP_GRACE_S)
        else:
            self._dropped.cancel()

    def stop_admitting(self) -> None:
        """Drain: handle no more messages; running jobs go on."""
        self._admission.cancel()

    def cancel_running(self, job_id: uuid.UUID) -> bool:
        """Stop a running job's task (its settle then finds the job already ended)."""
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
        return task is not None

    def resume_now(self, job_id: uuid.UUID) -> bool:
        """Resume a job left in flight without queueing behind admissions; False if not yet.

        A resume admits nothing and charges nothing, so it needs no turn in the
        mailbox; only one resume of a job may be under way at a time.
        """
        if self._jobs is None:
            return False
        if job_id not in self._running and job_id not in self._resuming:
            self._resuming.add(job_id)
            self._jobs.start_soon(self._resume_task, job_id)
        return True

    async def _resume_task(self, job_id: uuid.UUID) -> None:
        """Read the job and start its task; shielded, so a drain never strands it halfway."""
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(_HANDLE_LIMIT_S):
                await self._resume(job_id)
        except FencedOff:
            log.warning("actor.fenced", message="resume")
        except Exception:
            # Still in flight in the store: the next scan or the orphan scan resumes it.
            log.exception("actor.message_failed", message="Resume")
        finally:
            self._resuming.discard(job_id)

    def poke(self, job_id: uuid.UUID, prediction: Prediction | None = None) -> bool:
        """Wake a running job's task for a webhook; see `JobTask.poke`."""
        task = self._running.get(job_id)
        if task is not None:
            task.poke(prediction)
        return task is not None

    async def run(self) -> None:
        try:
            with structlog.contextvars.bound_contextvars(user_id=self.user_id), self._dropped:
                async with trio.open_nursery() as jobs:
                    self._jobs = jobs
                    with self._admission:
                        await self._serve()
                    self.mailbox.close()
        finally:
            self.done.set()

    async def _serve(self) -> None:
        while True:
            message: Message | None = None
            with trio.move_on_after(self._config.idle_s):
                try:
                    message = await self.mailbox.receive()
                except trio.EndOfChannel:
                    return
            if message is not None:
                await self._handle(message)
                # A user with no account gets no actor kept for them: a flood of
                # strangers would otherwise hold one per id for the idle time.
                if self._stranger and not self._running and self._retire(self):
                    log.debug("actor.retired", reason="unknown user")
                    return
                continue
            # Idle: retire unless a job runs or a message raced in; the check and the
            # removal are synchronous, so no delivery can land in between.
            if not self._running and self._retire(self):
                log.debug("actor.retired")
                return

    async def _handle(self, message: Message) -> None:
        """Handle one message. Only a drain interrupts it, and never past a commit.

        The reads and refusals are bounded; waiting for capacity is not (the job stays
        queued meanwhile); the admission's commit and the start of its task are shielded,
        since an admission cancelled after its commit would leave a charged job with no
        task.
        """
        try:
            match message:
                case Submit(job_id=job_id):
                    await self._admit(job_id)
                case Cancel(job_id=job_id):
                    with trio.move_on_after(_HANDLE_LIMIT_S):
                        await self._cancel(job_id)
                case Resume(job_id=job_id):
                    self.resume_now(job_id)
        except FencedOff:
            # The slot's lease is gone; the registry drops this actor at the next round.
            log.warning("actor.fenced", message=type(message).__name__)
            self._observer.write_fenced(type(message).__name__.lower())
        except InputsUnavailable as exc:
            # Still queued and uncharged: the next scan offers it again.
            log.warning("job.inputs_unavailable", error=str(exc))
        except Exception:
            # The job stays as the store has it; the catch-up scan brings it back.
            log.exception("actor.message_failed", message=type(message).__name__)
        finally:
            self.mailbox.done(message)

    async def _admit(self, job_id: uuid.UUID) -> None:
        decided = None
        with trio.move_on_after(_HANDLE_LIMIT_S):
            decided = await self._decide(job_id)
        if decided is None:
            self._held.discard(job_id)
            return
        job, lag_s, priority, wanted = decided
        route = await self._route(job, wanted)
        if route is None:
            return  # its provider's breaker is open and no fallback admits: stays queued
        trace = self._tracing.job_trace(job)
        started = False
        try:
            with trace.span("admission"):
                # Beyond capacity the user's plan priority is its weight in the fair order.
                await self._capacity.gate.enter(self.user_id, priority)
                try:
                    if self._capacity.admissions is not None:
                        await self._capacity.admissions.take()
                    if self._capacity.creates is not None:
                        await self._capacity.creates.take(job.num_outputs)
                    routes = self._deps.routes
                    if routes is not None and not await routes.providers[route].admits():
                        # Its breaker opened while the job waited for capacity: still queued,
                        # uncharged, and routed afresh at its next offer.
                        return
                    # Shielded and unbounded: a timeout here could land after the commit and
                    # leave a charged job without a task until the orphan scan.
                    with trio.CancelScope(shield=True):
                        started = await self._commit(job, lag_s, priority, trace, route)
                finally:
                    if not started:
                        self._capacity.gate.leave()
        finally:
            if not started:
                trace.end()  # refused or interrupted; a started task ends its own trace

    async def _route(self, job: Job, wanted: str) -> str | None:
        """The provider the job will run on, or None while no breaker admits it.

        A job whose cancel was asked goes on to the admit, which refuses it uncharged.
        """
        routes = self._deps.routes
        if routes is None or job.cancel_requested_at is not None:
            self._held.discard(job.id)
            return wanted
        with structlog.contextvars.bound_contextvars(job_id=str(job.id)):
            route = await routes.choose(job, wanted)
            if route is None and job.id not in self._held:
                # Once per job and actor: every scan offers it again while it waits.
                log.info("job.held", provider=wanted, note="its provider's breaker is open")
                self._held.add(job.id)
            elif route is not None:
                self._held.discard(job.id)
            return route

    async def _decide(self, job_id: uuid.UUID) -> tuple[Job, float | None, int, str] | None:
        """Read and decide; a job to admit comes back with its priority, a refusal is stored.

        With several providers, the job's `params.provider` picks one (the default one
        when absent) and its params are checked against that provider's model; the
        job comes back without the routing key, with the provider it wants.
        """
        context = await self._store.admission_context(job_id)
        if context is not None:
            self._stranger = context.usage.balance is None
        if context is None or context.job.status is not JobStatus.QUEUED:
            return None
        job = context.job
        lag_s = (context.now - job.created_at).total_seconds() if job.created_at else None
        wanted, allowed = self._config.provider_name, self._config.allowed_params
        routes = self._deps.routes
        unroutable: Reject | None = None
        if routes is not None:
            try:
                wanted = routes.wanted(job)
            except ValueError as exc:
                unroutable = Reject(ErrorCode.VALIDATION_ERROR, str(exc))
            job, allowed = without_routing(job), routes.allowed(wanted, allowed)
        decision = unroutable or decide_admission(
            job,
            context.usage,
            context.now,
            allowed_params=allowed,
            input_hosts=self._config.input_hosts,
            callback_hosts=self._config.callback_hosts,
        )
        if not isinstance(decision, Reject):
            decision = await self._inputs_checked(job) or decision
        if isinstance(decision, Reject):
            trace = self._tracing.job_trace(job)
            try:
                with (
                    structlog.contextvars.bound_contextvars(job_id=str(job_id)),
                    trace.span("admission"),
                ):
                    await self._reject(job_id, decision.code, decision.message, lag_s, trace)
            finally:
                trace.end()
            return None
        return job, lag_s, decision.priority, wanted

    async def _inputs_checked(self, job: Job) -> Reject | None:
        """Refuse the job, before its debit, when an input image is missing, no image or big.

        Raises:
            InputsUnavailable: the store did not answer; the job stays queued, uncharged,
                and the next scan offers it again.
        """
        inputs = image_inputs(job.user_id, job.params, self._config.input_hosts)
        if isinstance(inputs, str) or not inputs:
            return None  # refused by validation already, or none to check
        problem = await self._deps.inputs.problem(inputs)
        return None if problem is None else Reject(ErrorCode.VALIDATION_ERROR, problem)

    async def _commit(
        self, job: Job, lag_s: float | None, priority: int, trace: JobTrace, route: str
    ) -> bool:
        """The atomic admit, then the job's task; True when a task now runs it."""
        with structlog.contextvars.bound_contextvars(job_id=str(job.id)):
            admission = await self._store.admit(
                job.id, deadline_s=self._config.deadline_s, fence=self._fence
            )
            if admission.outcome is AdmissionOutcome.ADMITTED:
                cost = admission.cost or 0
                log.info("job.admitted", cost=cost, balance=admission.balance)
                self._observer.job_admitted(cost, lag_s, priority=priority)
                trace.set({"credits.cost": cost})
                started = InFlight(
                    job=_admitted(job, cost), remaining_s=admission.deadline_s or 0.0
                )
                self._start(started, lag_s, trace=trace, route=route)
                return True
            trace.set({"admission.outcome": admission.outcome.value})
            if admission.outcome in _REFUSAL_FOR_OUTCOME:
                code, message = _REFUSAL_FOR_OUTCOME[admission.outcome]
                await self._reject(job.id, code, message, lag_s, trace)
            return False

    async def _reject(
        self,
        job_id: uuid.UUID,
        code: ErrorCode,
        message: str,
        lag_s: float | None,
        trace: JobTrace,
    ) -> None:
        if await self._store.reject(job_id, code, message, fence=self._fence):
            log.info("job.rejected", code=code.value)
            self._observer.job_rejected(code, lag_s)
            status = JobStatus.CANCELED if code is ErrorCode.CANCELED else JobStatus.REJECTED
            trace.set({"job.status": status.value, "error.code": code.value})

    def _start(
        self,
        in_flight: InFlight,
        lag_s: float | None = None,
        *,
        resumed: bool = False,
        trace: JobTrace | None = None,
        route: str | None = None,
    ) -> JobTask:
        assert self._jobs is not None  # noqa: S101  (set before the first message)
        task = JobTask(
            in_flight,
            self._deps if route is None else self._deps.on(route),
            queued_s=lag_s,
            on_done=self._job_done,
            resumed=resumed,
            fence=self._fence,
            trace=trace,
        )
        self._running[in_flight.job.id] = task
        self._jobs.start_soon(task.run)
        return task

    def _resumable(self, in_flight: InFlight) -> tuple[InFlight, str | None]:
        """A job left in flight, its routing key stripped, and the provider it runs on.

        That is the provider its predictions were recorded on (a job that failed over
        goes on on the fallback), else the one it asked for. Known gap: a job that
        failed over and recorded no prediction before the crash resumes on the one it
        asked for, since admission does not record the provider.
        """
        routes = self._deps.routes
        if routes is None:
            return in_flight, None
        recorded = in_flight.provider
        if recorded is not None and recorded in routes.providers:
            wanted = recorded
        else:
            try:
                wanted = routes.wanted(in_flight.job)
            except ValueError:
                wanted = routes.primary  # a provider no longer configured
        return attrs.evolve(in_flight, job=without_routing(in_flight.job)), wanted

    def _job_done(self, job: Job) -> None:
        self._running.pop(job.id, None)
        self._capacity.gate.leave()
        self._job_ended()

    async def _cancel(self, job_id: uuid.UUID) -> None:
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
            return
        # Not running here: queued (admission refuses it as CANCELED) or left by a
        # previous run (resume it; the cancel request is on the row).
        await self._admit(job_id)
        self.resume_now(job_id)

    async def _resume(self, job_id: uuid.UUID) -> None:
        if job_id in self._running or self._dropping:
            return
        in_flight = await self._store.in_flight_job(job_id)
        if in_flight is None:
            return
        job = in_flight.job
        with structlog.contextvars.bound_contextvars(job_id=str(job_id)):
            log.info(
                "job.resumed",
                remaining_s=round(in_flight.remaining_s, 3),
                recorded=len(in_flight.predictions),
            )
            if self.dropping:
                return  # dropped while reading: the next owner resumes it
            self._capacity.gate.enter_now()
            in_flight, route = self._resumable(in_flight)
            task = self._start(in_flight, resumed=True, route=route)
            if job.cancel_requested_at is not None:
                task.cancel()


def _admitted(job: Job, cost: int) -> Job:
    return attrs.evolve(job, status=JobStatus.STARTING, cost=cost)
