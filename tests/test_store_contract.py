"""One contract, two stores: the in-memory twin the actor tests use and real Postgres.

Every scenario runs against both through the `actors.JobStore` port, with a
small set-up adapter per store; where the twin and schema.sql disagree, the
twin is wrong and this test says so.
"""

from __future__ import annotations

import uuid
from typing import Protocol

import pytest

from orchestrator.core import (
    AdmissionOutcome,
    ErrorCode,
    Fence,
    FencedOff,
    Job,
    JobEvent,
    JobStatus,
    JobStore,
    Plan,
    StoredOutput,
)
from orchestrator.db import Database
from orchestrator.db.testing import InMemoryStore

from . import pg


class Backend(Protocol):
    store: JobStore

    async def grant(self, user: str, amount: int, plan: str = "free") -> None: ...

    async def plan(self, *, priority: int) -> str: ...

    async def submit(self, user: str, prompt: str, num_outputs: int = 1) -> uuid.UUID: ...

    async def request_cancel(self, job_id: uuid.UUID) -> None: ...

    async def job(self, job_id: uuid.UUID) -> Job: ...

    async def balance(self, user: str) -> int: ...

    async def hold(self, job_id: uuid.UUID, member: str) -> Fence: ...

    async def steal(self, job_id: uuid.UUID) -> None: ...

    async def events(self) -> list[JobEvent]: ...

    async def outputs(self, job_id: uuid.UUID) -> list[StoredOutput]: ...


class Memory:
    def __init__(self) -> None:
        self.twin = InMemoryStore()
        self.store: JobStore = self.twin

    async def grant(self, user: str, amount: int, plan: str = "free") -> None:
        self.twin.grant(user, amount, plan=plan)

    async def plan(self, *, priority: int) -> str:
        name = f"plan-{uuid.uuid4().hex[:8]}"
        self.twin.plans[name] = Plan(name, 1_000_000, 10, 0.0, 1, priority=priority)
        return name

    async def submit(self, user: str, prompt: str, num_outputs: int = 1) -> uuid.UUID:
        return self.twin.submit(user, prompt, num_outputs=num_outputs)

    async def request_cancel(self, job_id: uuid.UUID) -> None:
        assert self.twin.request_cancel(job_id)

    async def job(self, job_id: uuid.UUID) -> Job:
        return self.twin.jobs[job_id]

    async def balance(self, user: str) -> int:
        return self.twin.balance(user)

    async def hold(self, job_id: uuid.UUID, member: str) -> Fence:
        slot = self.twin.jobs[job_id].slot
        held = self.twin.leases.get(slot)
        fence = Fence(member, 1 if held is None else held.epoch + 1)
        self.twin.leases[slot] = fence
        return fence

    async def steal(self, job_id: uuid.UUID) -> None:
        await self.hold(job_id, "thief")

    async def events(self) -> list[JobEvent]:
        return list(self.twin.events)

    async def outputs(self, job_id: uuid.UUID) -> list[StoredOutput]:
        stored = self.twin.outputs.get(job_id, {})
        return [stored[idx] for idx in sorted(stored)]


class Postgres:
    def __init__(self, db: Database, url: str) -> None:
        self.db = db
        self.url = url
        self.store: JobStore = db

    async def grant(self, user: str, amount: int, plan: str = "free") -> None:
        await self.db.grant(user, amount, plan=plan)

    async def plan(self, *, priority: int) -> str:
        return await pg.plan(self.url, priority=priority)

    async def submit(self, user: str, prompt: str, num_outputs: int = 1) -> uuid.UUID:
        return await self.db.submit_job(user, prompt, num_outputs=num_outputs)

    async def request_cancel(self, job_id: uuid.UUID) -> None:
        assert await self.db.request_cancel(job_id)

    async def job(self, job_id: uuid.UUID) -> Job:
        job = await self.db.job(job_id)
        assert job is not None
        return job

    async def balance(self, user: str) -> int:
        account = await self.db.account(user)
        assert account is not None
        return account.balance

    async def hold(self, job_id: uuid.UUID, member: str) -> Fence:
        slot = (await self.job(job_id)).slot
        held = await self.db.lease_round(member, ttl_s=60, keep=[], take=[slot], info={})
        (row,) = [row for row in held if row.slot == slot]
        return Fence(member, row.epoch)

    async def steal(self, job_id: uuid.UUID) -> None:
        slot = (await self.job(job_id)).slot
        await pg.execute(
            self.url,
            "UPDATE orchestrator.partition_leases SET owner = 'thief', epoch = epoch + 1"
            " WHERE slot = $1",
            slot,
        )

    async def events(self) -> list[JobEvent]:
        return await self.db.job_events_after(0, limit=1000)

    async def outputs(self, job_id: uuid.UUID) -> list[StoredOutput]:
        return (await self.db.job_outputs([job_id]))[job_id]


@pytest.fixture(params=["memory", "postgres"])
async def backend(request: pytest.FixtureRequest, db: Database, db_url: str) -> Backend:
    return Memory() if request.param == "memory" else Postgres(db, db_url)


async def test_admission_charges_the_plan_price_once_and_takes_a_seat(backend: Backend):
    await backend.grant("ann", 10, plan="free")
    job_id = await backend.submit("ann", "two please", num_outputs=2)
    first = await backend.store.admit(job_id, deadline_s=60)
    assert (first.outcome, first.cost, first.balance, first.seat) == (
        AdmissionOutcome.ADMITTED,
        2,
        8,
        1,
    )
    again = await backend.store.admit(job_id, deadline_s=60)
    assert again.outcome is AdmissionOutcome.NOT_QUEUED
    assert (await backend.job(job_id)).status is JobStatus.STARTING
    assert await backend.balance("ann") == 8


async def test_admission_refuses_without_a_seat_or_credits_and_charges_nothing(backend: Backend):
    await backend.grant("bo", 2, plan="free")  # the free plan has two seats
    jobs = [await backend.submit("bo", f"job {n}") for n in range(3)]
    outcomes = [(await backend.store.admit(job, deadline_s=60)).outcome for job in jobs]
    assert outcomes == [AdmissionOutcome.ADMITTED] * 2 + [AdmissionOutcome.NO_SEAT]
    await backend.grant("cy", 1, plan="pro")
    costly = await backend.submit("cy", "three", num_outputs=3)
    assert (await backend.store.admit(costly, deadline_s=60)).outcome is (
        AdmissionOutcome.INSUFFICIENT_CREDITS
    )
    assert await backend.balance("cy") == 1
    assert (await backend.job(costly)).status is JobStatus.QUEUED


async def test_a_cancel_before_admission_wins_and_a_rejection_is_final_and_uncharged(
    backend: Backend,
):
    await backend.grant("di", 5)
    canceled = await backend.submit("di", "never mind")
    await backend.request_cancel(canceled)
    assert (await backend.store.admit(canceled, deadline_s=60)).outcome is (
        AdmissionOutcome.CANCELED
    )
    refused = await backend.submit("di", "refused")
    assert await backend.store.reject(refused, ErrorCode.DUPLICATE, "identical job in flight")
    assert not await backend.store.reject(refused, ErrorCode.DUPLICATE, "again")
    job = await backend.job(refused)
    assert (job.status, job.error_code, job.cost) == (JobStatus.REJECTED, ErrorCode.DUPLICATE, None)
    assert job.finished_at is not None
    assert await backend.balance("di") == 5


async def test_finishing_refunds_what_was_not_delivered_and_a_second_finish_is_a_no_op(
    backend: Backend,
):
    await backend.grant("ed", 10, plan="pro")
    partial = await backend.submit("ed", "three", num_outputs=3)
    await backend.store.admit(partial, deadline_s=60)
    done = await backend.store.finish(
        partial, JobStatus.SUCCEEDED, outputs=(StoredOutput(idx=0, url="https://cdn.test/a.png"),)
    )
    assert (done.status, done.refunded, done.balance) == (JobStatus.SUCCEEDED, 2, 9)
    again = await backend.store.finish(partial, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR)
    assert (again.status, again.refunded) == (JobStatus.SUCCEEDED, 0)
    failed = await backend.submit("ed", "one")
    await backend.store.admit(failed, deadline_s=60)
    ended = await backend.store.finish(failed, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR)
    assert ended.refunded == 1
    assert await backend.balance("ed") == 9


async def test_a_resume_finds_the_recorded_predictions_and_the_deadline_left(backend: Backend):
    await backend.grant("fi", 5, plan="pro")
    job_id = await backend.submit("fi", "two", num_outputs=2)
    await backend.store.admit(job_id, deadline_s=60)
    assert await backend.store.mark_processing(
        job_id, provider="replicate", prediction_id="p1", idx=1
    )
    in_flight = await backend.store.in_flight_job(job_id)
    assert in_flight is not None
    assert in_flight.predictions == {1: "p1"}
    assert 55 < in_flight.remaining_s <= 60
    assert in_flight.job.status is JobStatus.PROCESSING
    await backend.store.finish(job_id, JobStatus.CANCELED, code=ErrorCode.CANCELED)
    assert await backend.store.in_flight_job(job_id) is None
    assert not await backend.store.mark_processing(
        job_id, provider="replicate", prediction_id="p2", idx=0
    )


async def test_a_resubmission_replaces_the_record_and_a_resume_counts_the_attempts(
    backend: Backend,
):
    """Retries record each new prediction over the last; a resume sees how many came before."""
    await backend.grant("gil", 5, plan="pro")
    job_id = await backend.submit("gil", "retried", num_outputs=2)
    await backend.store.admit(job_id, deadline_s=60)
    for prediction_id in ("a0", "a1", "a2"):
        assert await backend.store.mark_processing(
            job_id, provider="replicate", prediction_id=prediction_id, idx=0
        )
    assert await backend.store.mark_processing(
        job_id, provider="replicate", prediction_id="b0", idx=1
    )
    in_flight = await backend.store.in_flight_job(job_id)
    assert in_flight is not None
    assert in_flight.predictions == {0: "a2", 1: "b0"}
    assert in_flight.replaced == {0: 2}


async def test_admission_context_counts_seats_generations_and_duplicates(backend: Backend):
    await backend.grant("gu", 10, plan="pro")
    first = await backend.submit("gu", "same", num_outputs=2)
    await backend.store.admit(first, deadline_s=60)
    twin = await backend.submit("gu", "same", num_outputs=2)
    other = await backend.submit("gu", "different")
    context = await backend.store.admission_context(twin)
    assert context is not None
    usage = context.usage
    assert (usage.balance, usage.in_flight, usage.month_generations, usage.duplicate) == (
        8,
        1,
        2,
        True,
    )
    assert usage.plan == Plan("pro", 10_000, 10, 0.0, 1, priority=1)
    different = await backend.store.admission_context(other)
    assert different is not None
    assert not different.usage.duplicate
    assert await backend.store.admission_context(uuid.uuid4()) is None


async def test_admission_context_reads_the_plan_priority(backend: Backend):
    """A plan's priority (its weight beyond capacity) reaches admission; it costs nothing."""
    gold = await backend.plan(priority=7)
    await backend.grant("iv", 10, plan=gold)
    job_id = await backend.submit("iv", "a gold job")
    context = await backend.store.admission_context(job_id)
    assert context is not None
    assert context.usage.plan == Plan(gold, 1_000_000, 10, 0.0, 1, priority=7)
    admission = await backend.store.admit(job_id, deadline_s=60)
    assert (admission.outcome, admission.cost) == (AdmissionOutcome.ADMITTED, 1)


async def test_every_write_under_a_stale_fence_is_refused_and_changes_nothing(backend: Backend):
    await backend.grant("ho", 10, plan="pro")
    running = await backend.submit("ho", "running")
    queued = await backend.submit("ho", "queued")
    fence = await backend.hold(running, "me")
    assert (await backend.store.admit(running, deadline_s=60, fence=fence)).outcome is (
        AdmissionOutcome.ADMITTED
    )
    await backend.steal(running)
    with pytest.raises(FencedOff):
        await backend.store.admit(queued, deadline_s=60, fence=fence)
    with pytest.raises(FencedOff):
        await backend.store.reject(queued, ErrorCode.DUPLICATE, "stale", fence=fence)
    with pytest.raises(FencedOff):
        await backend.store.mark_processing(
            running, provider="replicate", prediction_id="p", fence=fence
        )
    with pytest.raises(FencedOff):
        await backend.store.finish(
            running, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR, fence=fence
        )
    assert (await backend.job(running)).status is JobStatus.STARTING
    assert (await backend.job(queued)).status is JobStatus.QUEUED
    assert await backend.balance("ho") == 9


async def test_a_trace_context_is_kept_once_and_only_under_the_slots_lease(backend: Backend):
    await backend.grant("tia", 5)
    job_id = await backend.submit("tia", "traced")
    first = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    fence = await backend.hold(job_id, "me")
    await backend.steal(job_id)
    with pytest.raises(FencedOff):
        await backend.store.note_traceparent(job_id, first, fence=fence)
    assert (await backend.job(job_id)).traceparent is None
    assert await backend.store.note_traceparent(job_id, first)
    assert not await backend.store.note_traceparent(job_id, other)
    assert (await backend.job(job_id)).traceparent == first


async def test_every_ending_appends_one_event_in_the_order_the_endings_happened(
    backend: Backend,
):
    """Success, failure, rejection and a cancel before admission: one event each, in order."""
    await backend.grant("jo", 10, plan="pro")
    done, broken, refused, called_off, running = [
        await backend.submit("jo", f"job {n}") for n in range(5)
    ]
    for job_id in (done, broken, running):
        await backend.store.admit(job_id, deadline_s=60)
    await backend.store.finish(
        done, JobStatus.SUCCEEDED, outputs=(StoredOutput(idx=0, url="https://cdn.test/a.png"),)
    )
    await backend.store.finish(broken, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR)
    await backend.store.reject(refused, ErrorCode.RATE_LIMITED, "too soon")
    await backend.request_cancel(called_off)
    assert (await backend.store.admit(called_off, deadline_s=60)).outcome is (
        AdmissionOutcome.CANCELED
    )
    await backend.store.reject(called_off, ErrorCode.CANCELED, "cancelled before it started")
    await backend.store.finish(done, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR)  # a no-op
    events = await backend.events()
    assert [(e.job_id, e.status, e.error_code) for e in events] == [
        (done, JobStatus.SUCCEEDED, None),
        (broken, JobStatus.FAILED, ErrorCode.UPSTREAM_ERROR),
        (refused, JobStatus.REJECTED, ErrorCode.RATE_LIMITED),
        (called_off, JobStatus.CANCELED, ErrorCode.CANCELED),
    ]
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))
    assert all(e.user_id == "jo" for e in events)
    assert [e.finished_at for e in events] == [
        (await backend.job(e.job_id)).finished_at for e in events
    ]


async def test_a_partial_job_whose_first_output_failed_keeps_each_output_under_its_index(
    backend: Backend,
):
    """Outputs 1 and 2 of three are stored as 1 and 2, and output 0 is refunded."""
    await backend.grant("kai", 10, plan="pro")
    job_id = await backend.submit("kai", "three", num_outputs=3)
    await backend.store.admit(job_id, deadline_s=60)
    delivered = tuple(
        StoredOutput(idx=idx, url=f"https://cdn.test/{idx}.png", public_url=f"https://p/{idx}")
        for idx in (1, 2)
    )
    stray = StoredOutput(idx=3, url="https://cdn.test/3.png")  # past num_outputs: never kept
    done = await backend.store.finish(job_id, JobStatus.SUCCEEDED, outputs=(*delivered, stray))
    assert (done.status, done.refunded) == (JobStatus.SUCCEEDED, 1)
    stored = await backend.outputs(job_id)
    assert [(o.idx, o.url, o.public_url) for o in stored] == [
        (1, "https://cdn.test/1.png", "https://p/1"),
        (2, "https://cdn.test/2.png", "https://p/2"),
    ]
    assert (await backend.job(job_id)).partial
