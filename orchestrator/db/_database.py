"""The database as the rest of the orchestrator sees it: Trio methods, values out.

Each method is one transaction and one bridge crossing; its SQL is a named
query in `queries.sql`. Nothing outside this package imports asyncpg.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

from orchestrator.core import (
    ALL_SLOTS,
    Account,
    Admission,
    AdmissionContext,
    CallbackDue,
    ErrorCode,
    Fence,
    Finish,
    InFlight,
    Job,
    JobEvent,
    JobRef,
    JobStatus,
    ListedClaim,
    StoredOutput,
    UpstreamRef,
)

from . import (
    _audit,
    _events,
    _jobs,
    _leases,
    _ledger,
    _routing,
    _schema,
    _top,
    _transitions,
    _upstream,
    _views,
)
from ._connector import Connector, Role, open_connector
from ._group import GroupCommit
from ._lease_session import LeaseSession
from ._listener import Listener, listen

MEMBERS_CHANNEL = "orchestrator_members"


def slot_channel(slot: int) -> str:
    """The channel a job's insert and cancel request are notified on: its slot's."""
    return f"orchestrator_jobs_{slot}"


class Database:
    def __init__(self, connector: Connector) -> None:
        self._connector = connector
        self._finishes: GroupCommit[_transitions.FinishItem, Finish] = GroupCommit(
            self._finish_many, self._finish_one
        )

    async def _finish_many(self, items: Sequence[_transitions.FinishItem]) -> list[Finish]:
        return await self._connector.run_reserved(_transitions.finish_many, items)

    async def _finish_one(self, item: _transitions.FinishItem) -> Finish:
        return await self._connector.run_reserved(_transitions.finish, *item)

    @property
    def url(self) -> str:
        return self._connector.url

    @property
    def pool_in_use(self) -> int:
        return self._connector.pool_in_use

    async def migrate(self) -> None:
        await self._connector.run(_schema.migrate)

    async def schema_is_current(self) -> bool:
        return await self._connector.run(_schema.is_current)

    async def stored_outputs(self, job_id: uuid.UUID) -> list[str]:
        """Where a finished job's outputs are kept (empty while it runs)."""
        return await self._connector.run(_jobs.stored_outputs, job_id)

    async def soft_delete_outputs(self, job_id: uuid.UUID) -> int:
        return await self._connector.run(_jobs.soft_delete_outputs, job_id)

    async def bridge_lag(self) -> float:
        """How long a call waits to cross into asyncio and back, with no database work."""
        return await self._connector.bridge_lag()

    async def ping(self) -> bool:
        return await self._connector.run(_jobs.ping)

    async def record_webhook_event(self, provider: str, event_id: str) -> bool:
        """True the first time a webhook delivery id is seen; False for a duplicate."""
        return await self._connector.run(_jobs.record_webhook_event, provider, event_id)

    async def webhook_delivery(
        self, job_id: uuid.UUID, provider: str, event_id: str, idx: int
    ) -> tuple[Job, bool] | None:
        """The job a webhook names and whether the delivery is new, in one round trip.

        None for an unknown job. The delivery is remembered (so a repeat reads as not
        new) only when `idx` is one of the job's outputs.
        """
        return await self._connector.run(_jobs.webhook_delivery, job_id, provider, event_id, idx)

    async def prune_webhook_events(self, *, older_than_s: float, limit: int = 10_000) -> int:
        """Forget deliveries older than `older_than_s`, at most `limit`; how many went.

        A delivery forgotten and then repeated is taken as new, which is harmless:
        a webhook only wakes its job's task, which asks the provider itself.
        """
        return await self._connector.run(_jobs.prune_webhook_events, older_than_s, limit)

    async def grant(
        self, user_id: str, amount: int, *, ref: str | None = None, plan: str | None = None
    ) -> int:
        """Grant credits, creating the account on first grant; a repeated `ref` pays once.

        Raises:
            InvalidRequest: amount not positive, or an unknown plan.
        """
        return await self._connector.run(_ledger.grant, user_id, amount, ref, plan)

    async def adjust(
        self, user_id: str, amount: int, *, note: str, ref: str | None = None
    ) -> int | None:
        """Correct a balance by hand, as an `adjust` ledger row.

        Raises:
            UnknownUser: no such account.
            IntegrityViolation: the adjustment would make the balance negative.
        """
        return await self._connector.run(_ledger.adjust, user_id, amount, note, ref)

    async def debit(self, user_id: str, job_id: uuid.UUID, amount: int) -> int | None:
        """The new balance, or None when the balance did not cover `amount`.

        Raises:
            IntegrityViolation: the job was already debited.
        """
        return await self._connector.run(_ledger.debit, user_id, job_id, amount)

    async def refund(self, job_id: uuid.UUID, amount: int | None = None) -> _ledger.Refund | None:
        """Refund a finished job's debit (or `amount` of it) once.

        None when there is nothing to refund: never debited, already refunded,
        or still in flight (its refund comes with its terminal status).

        Raises:
            IntegrityViolation: `amount` exceeds the debit.
        """
        return await self._connector.run(_ledger.refund, job_id, amount)

    async def account(self, user_id: str) -> Account | None:
        return await self._connector.run(_ledger.account, user_id)

    async def account_summaries(
        self, *, user_id: str | None = None
    ) -> list[_ledger.AccountSummary]:
        """Per user: balance, credits debited and refunded, jobs by status."""
        return await self._connector.run(_ledger.summaries, user_id)

    async def submit_job(
        self,
        user_id: str,
        prompt: str,
        *,
        params: Mapping[str, object] | None = None,
        num_outputs: int = 1,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
        callback_url: str | None = None,
    ) -> uuid.UUID:
        """Submit as submitters do, through `orchestrator.submit_job`.

        ``traceparent`` (W3C) makes the job's trace a child of the caller's span;
        ``callback_url`` is where the ending is POSTed (its host must be allowed).

        Raises:
            UnknownUser: the user has no account.
            IdempotencyConflict: the key was used for a different request.
            InvalidRequest: a malformed submission (prompt, params, callback URL).
        """
        return await self._connector.run(
            _jobs.submit,
            user_id,
            prompt,
            params or {},
            num_outputs,
            idempotency_key,
            traceparent,
            callback_url,
        )

    async def submit_jobs(self, items: Sequence[object]) -> list[_jobs.SubmitResult]:
        """Submit many jobs in one round trip, through `orchestrator.submit_jobs`.

        Each item should be {user_id, prompt, params?, num_outputs?,
        idempotency_key?}; anything else is refused as that item's result.
        One result per item, in order: a refused item (unknown user, malformed,
        key reused for another request) is reported in its result and never
        fails the others; a repeated key gives the first job's id.

        Raises:
            InvalidRequest: more than `MAX_BULK_JOBS` items, over 8 MiB of JSON, or
                text jsonb cannot hold (NUL, a lone surrogate) in any item; nothing
                was submitted.
        """
        return await self._connector.run(_jobs.submit_many, items)

    async def retry_job(
        self, job_id: uuid.UUID, *, idempotency_key: str | None = None
    ) -> uuid.UUID:
        """Submit a failed or timed-out job again, as a new job whose `retry_of` is it.

        The new job is queued, admitted and charged like any other. Without a key
        the key is `retry:<job id>`, so repeating the call returns the same new job;
        another key makes a deliberate further retry.

        Raises:
            UnknownJob: no such job.
            InvalidRequest: the job did not fail or time out (it succeeded, was
                cancelled or rejected, or has not finished).
            IdempotencyConflict: the key was used for a different request.
        """
        return await self._connector.run(_jobs.retry, job_id, idempotency_key)

    async def request_cancel(self, job_id: uuid.UUID) -> bool:
        """Ask the daemon to cancel; False when the job already finished.

        Raises:
            UnknownJob: no such job.
        """
        return await self._connector.run(_jobs.request_cancel, job_id)

    async def job(self, job_id: uuid.UUID) -> Job | None:
        return await self._connector.run(_jobs.get, job_id)

    async def jobs(self, *, user_id: str | None = None, limit: int = 50) -> list[Job]:
        return await self._connector.run(_jobs.listing, user_id, limit)

    async def admission_context(self, job_id: uuid.UUID) -> AdmissionContext | None:
        """The job and everything admission decides on, read together; None if no such job."""
        return await self._connector.run(_transitions.admission_context, job_id)

    async def admit(
        self,
        job_id: uuid.UUID,
        *,
        deadline_s: float,
        fence: Fence | None = None,
    ) -> Admission:
        """Take a seat, debit the plan's price and move the job to `starting`, atomically.

        The database reads the price and the seat limit from the user's plan;
        no caller names an amount. With a `fence`, the job's slot must still be
        held under it, and the job records the epoch it was admitted under.

        Raises:
            UnknownJob: no such job.
            Fenced: the fence is no longer the slot's live lease; nothing changed.
        """
        return await self._connector.run(_transitions.admit, job_id, deadline_s, fence)

    async def reject(
        self, job_id: uuid.UUID, code: ErrorCode, message: str, *, fence: Fence | None = None
    ) -> bool:
        """Refuse a queued job without charge; False when it was no longer queued.

        Raises:
            Fenced: the fence is no longer the slot's live lease; nothing changed.
        """
        return await self._connector.run(_transitions.reject, job_id, code, message, fence)

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
        """End an admitted job with its outputs and the refund it is owed, atomically.

        The refund is computed by the database: the cost of the outputs paid
        for and not stored, or the whole debit when the job did not succeed.

        Idempotent: finishing a finished job changes and refunds nothing.

        Raises:
            UnknownJob: no such job.
            IntegrityViolation: the job was never admitted.
            Fenced: the fence is no longer the slot's live lease; nothing changed.
        """
        return await self._finishes.submit((job_id, status, code, message, outputs, fence))

    async def mark_processing(
        self,
        job_id: uuid.UUID,
        *,
        provider: str,
        prediction_id: str,
        idx: int = 0,
        fence: Fence | None = None,
    ) -> bool:
        """Store output `idx`'s prediction id the moment it is known; False if the job ended.

        Raises:
            Fenced: the fence is no longer the slot's live lease; nothing changed.
        """
        return await self._connector.run_reserved(
            _transitions.mark_processing, job_id, provider, prediction_id, idx, fence
        )

    async def note_traceparent(
        self, job_id: uuid.UUID, traceparent: str, *, fence: Fence | None = None
    ) -> bool:
        """Keep the root span's trace context on a job that has none; False if it had one.

        Raises:
            Fenced: the fence is no longer the slot's live lease; nothing changed.
        """
        return await self._connector.run(_transitions.note_traceparent, job_id, traceparent, fence)

    async def route(self, job_ids: Sequence[uuid.UUID]) -> list[JobRef]:
        return await self._connector.run(_routing.route, job_ids)

    async def queued(
        self, *, limit: int = 10_000, per_user: int = 256, slots: Sequence[int] = ALL_SLOTS
    ) -> list[JobRef]:
        """Queued jobs and in-flight jobs with a cancel request in `slots`, round robin."""
        return await self._connector.run(_routing.queued, limit, per_user, slots)

    async def in_flight(self, *, slots: Sequence[int] = ALL_SLOTS) -> list[JobRef]:
        return await self._connector.run_reserved(_routing.in_flight, slots)

    async def in_flight_job(self, job_id: uuid.UUID) -> InFlight | None:
        return await self._connector.run_reserved(_routing.in_flight_job, job_id)

    async def orphaned(
        self, *, grace_s: float, limit: int = 1000, slots: Sequence[int] = ALL_SLOTS
    ) -> list[JobRef]:
        """In-flight jobs more than `grace_s` past their deadline: nobody is running them."""
        return await self._connector.run(_routing.orphaned, grace_s, limit, slots)

    async def stuck(
        self, *, older_than_s: float, limit: int = 1000, slots: Sequence[int] = ALL_SLOTS
    ) -> list[JobRef]:
        return await self._connector.run(_routing.stuck, older_than_s, limit, slots)

    def lease_session(self, *, timeout_s: float) -> LeaseSession:
        """A session for lease rounds, to be used and closed on a thread of its own."""
        return LeaseSession(self._connector.url, self._connector.role, timeout_s=timeout_s)

    async def lease_round(
        self,
        member: str,
        *,
        ttl_s: float,
        keep: Sequence[int],
        take: Sequence[int],
        info: Mapping[str, object],
    ) -> list[_leases.HeldSlot]:
        """Heartbeat, renew `keep`, take what is free of `take`, give up the rest held."""
        return await self._connector.run_reserved(
            _leases.lease_round, member, ttl_s, keep, take, info
        )

    async def live_members(self) -> tuple[list[str], int]:
        """The live members, and how many slots nobody holds a live lease on."""
        return await self._connector.run_reserved(_leases.live_members)

    async def leave_cluster(self, member: str) -> int:
        """Free every slot `member` holds and tell the others; how many were freed."""
        return await self._connector.run_reserved(_leases.leave, member)

    async def prune_lease_history(self, *, older_than_s: float) -> int:
        return await self._connector.run(_leases.prune, older_than_s)

    async def notify_slot(self, job_id: uuid.UUID) -> None:
        """Wake whichever daemon owns the job's slot."""
        await self._connector.run(_leases.notify_slot, job_id)

    async def cluster_members(self) -> list[_leases.MemberRow]:
        return await self._connector.run(_leases.members)

    async def cluster_owners(self) -> list[_leases.OwnerSummary]:
        return await self._connector.run(_leases.owners)

    async def upstream_to_check(self, *, window_s: float, limit: int) -> list[UpstreamRef]:
        """Predictions that may still bill for jobs that ended within `window_s` seconds."""
        return await self._connector.run(_upstream.to_check, window_s, limit)

    async def listed_claims(
        self, provider: str, listed: Sequence[tuple[str, uuid.UUID, int]]
    ) -> list[ListedClaim]:
        """What we know of each (prediction id, job id, output) a provider listed."""
        return await self._connector.run(_upstream.claims, provider, listed)

    async def note_upstream(
        self,
        ref: UpstreamRef,
        *,
        status: str | None,
        cancel_sent: bool = False,
    ) -> str | None:
        """Store what was seen of `ref` upstream; returns the status seen before, if any."""
        return await self._connector.run_reserved(
            _upstream.note,
            ref.provider,
            ref.prediction_id,
            ref.job_id,
            ref.idx,
            ref.found_by,
            status,
            cancel_sent,
        )

    async def job_events_after(self, seq: int, *, limit: int = 1000) -> list[JobEvent]:
        """The endings after `seq`, oldest first; resume from the last seq returned.

        Raises:
            EventsPruned: events after `seq` are past the retention and gone.
            InvalidRequest: a negative seq, or a limit outside 1..10000.
        """
        return await self._connector.run(_events.after, seq, limit)

    async def job_events_head(self) -> int:
        """The newest seq in the feed (0 when empty): where a reader that starts now begins."""
        return await self._connector.run(_events.head)

    async def prune_job_events(self, *, older_than_s: float, limit: int = 10_000) -> int:
        """Forget events (and their finished callbacks) older than `older_than_s`; how many."""
        return await self._connector.run(_events.prune, older_than_s, limit)

    async def job_outputs(
        self, job_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[StoredOutput]]:
        """The stored, undeleted outputs of each job, by index."""
        return await self._connector.run(_events.outputs, job_ids)

    async def claim_callbacks(
        self, member: str, *, limit: int, claim_s: float
    ) -> list[CallbackDue]:
        """Callbacks due in the slots `member` holds, each claimed for one attempt."""
        return await self._connector.run(_events.claim, member, limit, claim_s)

    async def record_callback(
        self,
        seq: int,
        attempt: int,
        *,
        delivered: bool,
        status: int | None,
        error: str | None,
        retry_in_s: float | None,
    ) -> bool:
        """Store what attempt `attempt` came to; `retry_in_s` None after a failure gives up.

        False when it changed nothing: delivered already, or another attempt since.
        """
        return await self._connector.run(
            _events.record, seq, attempt, delivered, status, error, retry_in_s
        )

    async def redeliver_callback(self, seq: int) -> bool:
        """Make a given-up callback due again now; False when it was not given up."""
        return await self._connector.run(_events.redeliver, seq)

    async def callbacks(self, *, failed: bool, limit: int = 100) -> list[_events.CallbackRow]:
        """Given-up callbacks (`failed`), or every one not delivered yet; newest first."""
        return await self._connector.run(_events.listing, failed, limit)

    async def callback_counts(self) -> tuple[int, int]:
        """Callbacks owed, and callbacks given up on."""
        return await self._connector.run(_events.counts)

    async def top_figures(
        self, *, window_minutes: int = 5, slowest: int = 10, ledger_rows: int = 100_000
    ) -> _top.TopFigures:
        """What `orchestrator top` shows of jobs, refunds and in-flight work, read together.

        Refunds are counted among the newest `ledger_rows` ledger rows only, so
        the read stays bounded however long the ledger grows.
        """
        return await self._connector.run(_top.figures, window_minutes, slowest, ledger_rows)

    async def audit(self) -> _audit.AuditReport:
        return await self._connector.run(_audit.run)

    async def browse_jobs(
        self,
        *,
        user_id: str | None = None,
        status: JobStatus | None = None,
        code: ErrorCode | None = None,
        before: uuid.UUID | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs newest first, filtered; `before` pages on from that job (exclusive)."""
        return await self._connector.run(_views.jobs, user_id, status, code, before, limit)

    async def job_timeline(self, job_id: uuid.UUID) -> _views.JobTimeline | None:
        """A job with its predictions, strays, outputs and ledger rows, in one snapshot."""
        return await self._connector.run(_views.timeline, job_id)

    async def user_ledger(self, user_id: str, *, limit: int = 100) -> list[_views.LedgerRow]:
        """A user's ledger rows, newest first."""
        return await self._connector.run(_views.user_ledger, user_id, limit)

    @asynccontextmanager
    async def listen(self, *channels: str) -> AsyncIterator[Listener]:
        """A LISTEN connection on `channels`; `Listener.add`/`remove` change them later."""
        async with listen(self._connector, channels) as listener:
            yield listener


@asynccontextmanager
async def open_database(
    url: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    role: Role | None = None,
    reserved_size: int = 0,
    listen_url: str | None = None,
) -> AsyncIterator[Database]:
    """Connect for the lifetime of the block, acting as `role` when given.

    `reserved_size` connections are kept apart for finishing jobs, recording
    predictions and recovery, so a burst of admissions never delays them.

    Raises:
        DbUnavailable: the server cannot be reached.
        RoleUnavailable: the login may not act as `role`.
    """
    async with open_connector(
        url,
        min_size=min_size,
        max_size=max_size,
        role=role,
        reserved_size=reserved_size,
        listen_url=listen_url,
    ) as connector:
        yield Database(connector)
