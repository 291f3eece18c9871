"""An in-memory twin of the job store, for actor tests under Trio's MockClock.

It keeps the same rules as schema.sql's functions (seats, debit only when
the balance covers it, one refund, terminal is final) so that actor logic
can be tested without I/O; `tests/test_store_contract.py` runs the same
scenarios against this twin and the real database, so the two cannot drift. Time comes from Trio's
clock, so MockClock drives deadlines here too.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import attrs
import trio

from orchestrator.core import (
    Admission,
    AdmissionContext,
    ErrorCode,
    Fence,
    Finish,
    InFlight,
    Job,
    JobEvent,
    JobStatus,
    Plan,
    StoredOutput,
    UpstreamRef,
    Usage,
)

from ._errors import Fenced, IntegrityViolation, InvalidRequest, UnknownJob, UnknownUser

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_ALIVE = {JobStatus.QUEUED, JobStatus.STARTING, JobStatus.PROCESSING}


@attrs.define
class _Account:
    balance: int
    plan: str
    last_admitted_at: datetime | None = None


@attrs.define
class LedgerRow:
    user_id: str
    job_id: uuid.UUID | None
    kind: str
    amount: int


class InMemoryStore:
    """Implements `actors.JobStore`, plus the submit/grant a test needs to set up."""

    def __init__(self, plans: Mapping[str, Plan] | None = None) -> None:
        self.plans = dict(
            plans or {"free": Plan("free", 100, 2, 0.0, 1), "pro": Plan("pro", 10_000, 10, 0.0, 1)}
        )
        self.accounts: dict[str, _Account] = {}
        self.jobs: dict[uuid.UUID, Job] = {}
        self.ledger: list[LedgerRow] = []
        self.outputs: dict[uuid.UUID, dict[int, StoredOutput]] = {}
        self.predictions: dict[uuid.UUID, dict[int, str]] = {}
        # jobs.provider: set with the first prediction recorded
        self.providers: dict[uuid.UUID, str] = {}
        self.seats: dict[uuid.UUID, int] = {}
        self.deadlines: dict[uuid.UUID, float] = {}
        self.calls: list[tuple[str, uuid.UUID]] = []
        # upstream_predictions: prediction id -> (ref, status last seen, cancel sent)
        self.upstream: dict[str, tuple[UpstreamRef, str | None, bool]] = {}
        # partition_leases: slot -> the fence that holds it (fenced writes need a match)
        self.leases: dict[int, Fence] = {}
        # job_events: one per ending, in seq order (the twin commits one write at a time)
        self.events: list[JobEvent] = []

    def now(self) -> datetime:
        return _EPOCH + timedelta(seconds=trio.current_time())

    def grant(self, user_id: str, amount: int, *, plan: str | None = None) -> None:
        account = self.accounts.setdefault(user_id, _Account(0, "free"))
        account.balance += amount
        if plan is not None:
            account.plan = plan
        self.ledger.append(LedgerRow(user_id, None, "grant", amount))

    def submit(
        self,
        user_id: str,
        prompt: str,
        *,
        params: Mapping[str, object] | None = None,
        num_outputs: int = 1,
        traceparent: str | None = None,
        callback_url: str | None = None,
    ) -> uuid.UUID:
        job_id = uuid.uuid4()
        self.jobs[job_id] = Job(
            id=job_id,
            user_id=user_id,
            prompt=prompt,
            params=dict(params or {}),
            num_outputs=num_outputs,
            status=JobStatus.QUEUED,
            created_at=self.now(),
            traceparent=traceparent,
            callback_url=callback_url,
        )
        return job_id

    def request_cancel(self, job_id: uuid.UUID) -> bool:
        job = self._job(job_id)
        if job.status.terminal:
            return False
        self.jobs[job_id] = attrs.evolve(job, cancel_requested_at=self.now())
        return True

    def balance(self, user_id: str) -> int:
        return self.accounts[user_id].balance

    def ledger_sum(self, user_id: str) -> int:
        return sum(row.amount for row in self.ledger if row.user_id == user_id)

    async def admission_context(self, job_id: uuid.UUID) -> AdmissionContext | None:
        self.calls.append(("admission_context", job_id))
        job = self.jobs.get(job_id)
        if job is None:
            return None
        account = self.accounts.get(job.user_id)
        mine = [j for j in self.jobs.values() if j.user_id == job.user_id and j.id != job_id]
        duplicate = any(
            (j.prompt, dict(j.params), j.num_outputs)
            == (job.prompt, dict(job.params), job.num_outputs)
            and (j.status.in_flight or (j.status is JobStatus.QUEUED and _before(j, job)))
            for j in mine
        )
        usage = Usage(
            balance=None if account is None else account.balance,
            plan=None if account is None else self.plans[account.plan],
            in_flight=sum(1 for j in mine if j.status.in_flight),
            month_generations=sum(
                j.num_outputs
                for j in mine
                if j.status in {JobStatus.STARTING, JobStatus.PROCESSING, JobStatus.SUCCEEDED}
                and j.admitted_at is not None
                and (j.admitted_at.year, j.admitted_at.month) == (self.now().year, self.now().month)
            ),
            last_admitted_at=None if account is None else account.last_admitted_at,
            duplicate=duplicate,
        )
        return AdmissionContext(job=job, usage=usage, now=self.now())

    async def admit(
        self,
        job_id: uuid.UUID,
        *,
        deadline_s: float,
        fence: Fence | None = None,
    ) -> Admission:
        self.calls.append(("admit", job_id))
        job = self._job(job_id)
        if job.status is not JobStatus.QUEUED:
            return Admission("not_queued")
        if job.cancel_requested_at is not None:
            return Admission("canceled")
        self._check_fence(job, fence)
        account = self.accounts.get(job.user_id)
        if account is None:
            raise UnknownUser(f"unknown user {job.user_id}")
        plan = self.plans[account.plan]
        cost = plan.cost_per_output * job.num_outputs
        taken = {s for j, s in self.seats.items() if self.jobs[j].user_id == job.user_id}
        seat = next((s for s in range(1, plan.max_inflight + 1) if s not in taken), None)
        if seat is None:
            return Admission("no_seat")
        if account.balance < cost:
            return Admission("insufficient_credits")
        account.balance -= cost
        account.last_admitted_at = self.now()
        self.ledger.append(LedgerRow(job.user_id, job_id, "debit", -cost))
        self.seats[job_id] = seat
        self.deadlines[job_id] = trio.current_time() + deadline_s
        self.jobs[job_id] = attrs.evolve(
            job, status=JobStatus.STARTING, cost=cost, admitted_at=self.now()
        )
        return Admission("admitted", seat, account.balance, deadline_s, cost=cost)

    def _check_fence(self, job: Job, fence: Fence | None) -> None:
        """A fenced write needs the slot's lease (`leases`) to be exactly this fence."""
        if fence is not None and self.leases.get(job.slot) != fence:
            raise Fenced(f"slot {job.slot} is not held under {fence}")

    async def reject(
        self, job_id: uuid.UUID, code: ErrorCode, message: str, *, fence: Fence | None = None
    ) -> bool:
        self.calls.append(("reject", job_id))
        job = self._job(job_id)
        if job.status is not JobStatus.QUEUED:
            return False
        self._check_fence(job, fence)
        canceled = code is ErrorCode.CANCELED
        self._ended(
            attrs.evolve(
                job,
                status=JobStatus.CANCELED if canceled else JobStatus.REJECTED,
                cost=0 if canceled else None,
                error_code=code,
                error_message=message,
                finished_at=self.now(),
            )
        )
        return True

    def _ended(self, job: Job) -> None:
        """Store a job that just ended, and its event (the deferred trigger's part)."""
        self.jobs[job.id] = job
        assert job.finished_at is not None  # noqa: S101  (every ending stamps it)
        self.events.append(
            JobEvent(
                seq=len(self.events) + 1,
                job_id=job.id,
                user_id=job.user_id,
                status=job.status,
                error_code=job.error_code,
                finished_at=job.finished_at,
            )
        )

    async def mark_processing(
        self,
        job_id: uuid.UUID,
        *,
        provider: str,
        prediction_id: str,
        idx: int = 0,
        fence: Fence | None = None,
    ) -> bool:
        self.calls.append(("mark_processing", job_id))
        job = self._job(job_id)
        if not job.status.in_flight:
            return False
        self._check_fence(job, fence)
        replaced = self.predictions.setdefault(job_id, {}).get(idx)
        if replaced is not None and replaced != prediction_id:
            ref = UpstreamRef(provider, replaced, job_id, idx, "replaced")
            self.upstream.setdefault(replaced, (ref, None, False))
        self.predictions[job_id][idx] = prediction_id
        self.providers[job_id] = provider
        self.jobs[job_id] = attrs.evolve(
            job, status=JobStatus.PROCESSING, prediction_id=job.prediction_id or prediction_id
        )
        return True

    async def finish(
        self,
        job_id: uuid.UUID,
        status: JobStatus,
        *,
        code: ErrorCode | None = None,
        message: str | None = None,
        outputs: tuple[StoredOutput, ...] = (),
        fence: Fence | None = None,
    ) -> Finish:
        self.calls.append(("finish", job_id))
        job = self._job(job_id)
        if job.status.terminal:
            return Finish(job.status, 0, None)
        self._check_fence(job, fence)
        if job.status is JobStatus.QUEUED:
            raise IntegrityViolation(f"job {job_id} was never admitted; reject it instead")
        if status is JobStatus.SUCCEEDED:
            for output in outputs:
                if 0 <= output.idx < job.num_outputs:
                    self.outputs.setdefault(job_id, {}).setdefault(output.idx, output)
        debited = -sum(r.amount for r in self.ledger if r.job_id == job_id and r.kind == "debit")
        delivered = len(self.outputs.get(job_id, {}))
        if status is JobStatus.SUCCEEDED and not delivered:
            raise InvalidRequest(f"job {job_id} cannot succeed without an output")
        cost = job.cost or 0
        unit = cost // job.num_outputs
        owed = cost - delivered * unit if status is JobStatus.SUCCEEDED else debited
        already = any(r.job_id == job_id and r.kind == "refund" for r in self.ledger)
        refunded = 0
        balance = None
        if owed > 0 and not already:
            if owed > debited:
                raise IntegrityViolation(f"refund {owed} exceeds debit {debited} of job {job_id}")
            account = self.accounts[job.user_id]
            account.balance += owed
            balance = account.balance
            refunded = owed
            self.ledger.append(LedgerRow(job.user_id, job_id, "refund", owed))
        self.seats.pop(job_id, None)
        self._ended(
            attrs.evolve(
                job,
                status=status,
                error_code=code,
                error_message=message,
                partial=status is JobStatus.SUCCEEDED and refunded > 0,
                finished_at=self.now(),
            )
        )
        return Finish(status, refunded, balance)

    async def in_flight_job(self, job_id: uuid.UUID) -> InFlight | None:
        job = self.jobs.get(job_id)
        if job is None or not job.status.in_flight:
            return None
        replaced: dict[int, int] = {}
        for ref, _, _ in self.upstream.values():
            if ref.job_id == job_id and ref.found_by == "replaced":
                replaced[ref.idx] = replaced.get(ref.idx, 0) + 1
        return InFlight(
            job,
            self.deadlines[job_id] - trio.current_time(),
            dict(self.predictions.get(job_id, {})),
            replaced,
            provider=self.providers.get(job_id),
        )

    async def note_traceparent(
        self, job_id: uuid.UUID, traceparent: str, *, fence: Fence | None = None
    ) -> bool:
        job = self._job(job_id)
        if job.traceparent is not None:
            return False
        self._check_fence(job, fence)
        self.jobs[job_id] = attrs.evolve(job, traceparent=traceparent)
        return True

    async def note_upstream(
        self, ref: UpstreamRef, *, status: str | None, cancel_sent: bool = False
    ) -> str | None:
        self._job(ref.job_id)
        known, before, sent = self.upstream.get(ref.prediction_id, (ref, None, False))
        self.upstream[ref.prediction_id] = (known, status or before, sent or cancel_sent)
        return before

    def _job(self, job_id: uuid.UUID) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJob(f"unknown job {job_id}") from None


def _before(a: Job, b: Job) -> bool:
    assert a.created_at is not None  # noqa: S101
    assert b.created_at is not None  # noqa: S101
    return (a.created_at, str(a.id)) < (b.created_at, str(b.id))
