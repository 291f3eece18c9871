"""The job lifecycle: states, error codes and the values they travel in.

Pure by design: nothing here does I/O or reads a clock, so every rule about
what may happen to a job is a function that tests can call directly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Final, Literal
from uuid import UUID

import attrs

from ._hosts import HostList
from ._images import image_inputs
from ._inputs import params_problem, user_id_problem

MAX_PROMPT_CHARS: Final = 4000
MAX_OUTPUTS: Final = 30
# A plan's priority: its weight in admission's fair order when capacity is short.
MIN_PRIORITY: Final = 1
MAX_PRIORITY: Final = 10


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def in_flight(self) -> bool:
        """Whether the job holds a seat and a debit right now."""
        return self in {JobStatus.STARTING, JobStatus.PROCESSING}


_TERMINAL: Final = frozenset(
    {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.TIMED_OUT,
        JobStatus.CANCELED,
        JobStatus.REJECTED,
    }
)


class ErrorCode(enum.StrEnum):
    """Why a job did not succeed; `schema.sql`'s error_codes table holds the same set."""

    INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"
    DUPLICATE = "DUPLICATE"
    TOO_MANY_INFLIGHT = "TOO_MANY_INFLIGHT"
    RATE_LIMITED = "RATE_LIMITED"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    TIMEOUT = "TIMEOUT"
    CANCELED = "CANCELED"
    STUCK = "STUCK"
    INTERNAL_ERROR = "INTERNAL_ERROR"


@attrs.frozen
class Plan:
    """A plan's limits and price; `priority` (1..10, schema.sql's CHECK) is its weight.

    When a daemon's capacity is short, waiting users are admitted in weighted fair order:
    a user's share of the places freed is its plan's priority over the sum of the
    priorities of the users waiting, and no user waits without bound.
    """

    name: str
    monthly_generations: int
    max_inflight: int
    min_seconds_between: float
    cost_per_output: int
    priority: int = attrs.field(default=MIN_PRIORITY)

    @priority.validator
    def _priority_in_range(self, _attribute: object, value: int) -> None:
        if not MIN_PRIORITY <= value <= MAX_PRIORITY:
            raise ValueError(
                f"a plan's priority is between {MIN_PRIORITY} and {MAX_PRIORITY}, got {value}"
            )


@attrs.frozen
class Account:
    user_id: str
    balance: int
    plan: str


@attrs.frozen
class Job:
    """A job as the database holds it.

    The prompt is kept out of `repr` so that a job can never leak it into a
    log line or a traceback by accident.
    """

    id: UUID
    user_id: str
    prompt: str = attrs.field(repr=False)
    params: Mapping[str, object]
    num_outputs: int
    status: JobStatus
    cost: int | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None
    idempotency_key: str | None = attrs.field(default=None, repr=False)
    prediction_id: str | None = None
    deadline_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    partial: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    admitted_at: datetime | None = None
    finished_at: datetime | None = None
    params_error: str | None = None
    slot: int = 0
    retry_of: UUID | None = None  # the failed or timed-out job this one retries
    # The W3C trace context the job's trace continues (tracing metadata, never sent upstream).
    traceparent: str | None = None
    # Where the app hears the job's ending when it cannot LISTEN (a Standard Webhooks POST).
    callback_url: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class Usage:
    """What admission needs to know about a user at the moment of deciding.

    `plan` and `balance` are None when the user has no account.
    """

    balance: int | None
    plan: Plan | None
    in_flight: int
    month_generations: int
    last_admitted_at: datetime | None
    duplicate: bool


@attrs.frozen
class AdmissionContext:
    """A queued job and everything admission decides on, read together."""

    job: Job
    usage: Usage
    now: datetime


class AdmissionOutcome(enum.StrEnum):
    """What `admit_job_v3` answers; kept equal to the function's answers by a test."""

    ADMITTED = "admitted"
    NO_SEAT = "no_seat"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    CANCELED = "canceled"
    NOT_QUEUED = "not_queued"


@attrs.frozen
class Admission:
    """What the atomic admit (seat, debit, `starting`) did.

    `deadline_s` is the provider wait the job was given, counted from the
    moment of admission.
    """

    outcome: AdmissionOutcome = attrs.field(converter=AdmissionOutcome)
    seat: int | None = None
    balance: int | None = None
    deadline_s: float | None = None
    cost: int | None = None


@attrs.frozen
class JobRef:
    """Enough of a job to route it to its user's actor."""

    id: UUID
    user_id: str
    status: JobStatus
    cancel_requested: bool = False
    slot: int = 0
    # (provider, prediction id) of each prediction recorded for the job.
    predictions: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Fence:
    """A daemon's lease on one partition slot: every write for the slot's jobs carries it.

    The database refuses a write whose epoch is no longer the slot's live one, so
    a daemon that lost the slot can change nothing, however late it learns of it.
    """

    member: str
    epoch: int


@attrs.frozen
class InFlight:
    """An admitted job as a restart finds it.

    `remaining_s` is negative when the deadline passed; `predictions` are the
    provider predictions recorded so far, by output index, and `replaced` how many
    earlier ones each recorded prediction replaced (its attempts before it);
    `provider` is the provider they were recorded on (None before the first).
    """

    job: Job
    remaining_s: float
    predictions: Mapping[int, str] = attrs.field(factory=dict)
    replaced: Mapping[int, int] = attrs.field(factory=dict)
    provider: str | None = None


@attrs.frozen
class Finish:
    """What ending a job did: its status now, and the credits given back."""

    status: JobStatus
    refunded: int
    balance: int | None


@attrs.frozen
class Admit:
    """Admit at `cost`; `priority` is the job's weight in the fair order (its plan's)."""

    cost: int
    max_inflight: int
    priority: int = MIN_PRIORITY


@attrs.frozen
class Reject:
    code: ErrorCode
    message: str


_NO_HOSTS: Final = HostList()
CALLBACK_HOSTS_SETTING: Final = "ORCHESTRATOR_CALLBACK_HOSTS"


def validate(
    job: Job,
    allowed_params: frozenset[str] = frozenset(),
    *,
    input_hosts: HostList = _NO_HOSTS,
    callback_hosts: HostList = _NO_HOSTS,
) -> Reject | None:
    """Refuse submissions no provider (or callback receiver) should see; say what to fix.

    `allowed_params` are the model inputs a job may set (by default none);
    `input_hosts` where its `image_input` URLs may point; `callback_hosts` where its
    `callback_url` may (none: callbacks are off, and a job asking for one is refused).
    """
    problem = next(_validation_problems(job, allowed_params, input_hosts, callback_hosts), None)
    return None if problem is None else Reject(ErrorCode.VALIDATION_ERROR, problem)


def _validation_problems(
    job: Job, allowed_params: frozenset[str], input_hosts: HostList, callback_hosts: HostList
) -> Iterator[str]:
    if (user_problem := user_id_problem(job.user_id)) is not None:
        yield user_problem
    if not job.prompt.strip():
        yield "the prompt is empty"
    if len(job.prompt) > MAX_PROMPT_CHARS:
        yield f"the prompt has {len(job.prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed"
    if not 1 <= job.num_outputs <= MAX_OUTPUTS:
        yield f"num_outputs must be between 1 and {MAX_OUTPUTS}, got {job.num_outputs}"
    if job.params_error is not None:
        yield job.params_error
    elif (params_rule := params_problem(job.params, allowed_params)) is not None:
        yield params_rule
    elif isinstance(inputs := image_inputs(job.user_id, job.params, input_hosts), str):
        yield inputs
    if job.callback_url is not None and (
        refused := callback_problem(job.callback_url, callback_hosts)
    ):
        yield refused


def callback_problem(url: str, hosts: HostList) -> str | None:
    """Why the daemon will not POST to `url`, or None: its host must be allow-listed."""
    if not hosts:
        return f"callbacks are off here ({CALLBACK_HOSTS_SETTING} is empty)"
    refused = hosts.problem(url, setting=CALLBACK_HOSTS_SETTING)
    return None if refused is None else f"callback_url is refused: {refused}"


def decide_admission(
    job: Job,
    usage: Usage,
    now: datetime,
    *,
    allowed_params: frozenset[str] = frozenset(),
    input_hosts: HostList = _NO_HOSTS,
    callback_hosts: HostList = _NO_HOSTS,
) -> Admit | Reject:
    """Admit or refuse a queued job, checking in the documented order.

    The order matters: a duplicate is reported as a duplicate even when the
    user is also out of credits, because that is what they need to hear.
    """
    invalid = validate(job, allowed_params, input_hosts=input_hosts, callback_hosts=callback_hosts)
    if invalid is not None:
        return invalid
    if usage.plan is None or usage.balance is None:
        return Reject(ErrorCode.VALIDATION_ERROR, f"unknown user {job.user_id!r}")
    for check in _ADMISSION_CHECKS:
        if (refusal := check(job, usage, usage.plan, now)) is not None:
            return refusal
    return Admit(
        cost=cost_of(job, usage.plan),
        max_inflight=usage.plan.max_inflight,
        priority=usage.plan.priority,
    )


def cost_of(job: Job, plan: Plan) -> int:
    return job.num_outputs * plan.cost_per_output


def _cancel_requested(job: Job, _usage: Usage, _plan: Plan, _now: datetime) -> Reject | None:
    if job.cancel_requested_at is None:
        return None
    return Reject(ErrorCode.CANCELED, "cancelled before it started; nothing was charged")


def _duplicate(_job: Job, usage: Usage, _plan: Plan, _now: datetime) -> Reject | None:
    if not usage.duplicate:
        return None
    return Reject(ErrorCode.DUPLICATE, "an identical job of this user is already queued or running")


def _too_many_in_flight(_job: Job, usage: Usage, plan: Plan, _now: datetime) -> Reject | None:
    if usage.in_flight < plan.max_inflight:
        return None
    return Reject(
        ErrorCode.TOO_MANY_INFLIGHT,
        f"{usage.in_flight} jobs in flight; the {plan.name} plan allows {plan.max_inflight}",
    )


def _rate_limited(_job: Job, usage: Usage, plan: Plan, now: datetime) -> Reject | None:
    if usage.last_admitted_at is None or plan.min_seconds_between <= 0:
        return None
    waited = (now - usage.last_admitted_at).total_seconds()
    if waited >= plan.min_seconds_between:
        return None
    return Reject(
        ErrorCode.RATE_LIMITED,
        f"wait {plan.min_seconds_between - waited:.1f} s more between generations",
    )


def _over_monthly_limit(job: Job, usage: Usage, plan: Plan, _now: datetime) -> Reject | None:
    if usage.month_generations + job.num_outputs <= plan.monthly_generations:
        return None
    return Reject(
        ErrorCode.LIMIT_EXCEEDED,
        f"{usage.month_generations} of {plan.monthly_generations} monthly generations used; "
        f"this job needs {job.num_outputs}",
    )


def _insufficient_credits(job: Job, usage: Usage, plan: Plan, _now: datetime) -> Reject | None:
    cost = cost_of(job, plan)
    if usage.balance is None or usage.balance >= cost:
        return None
    return Reject(
        ErrorCode.INSUFFICIENT_CREDITS,
        f"the job costs {cost} credits; the balance is {usage.balance}",
    )


_ADMISSION_CHECKS: Final = (
    _cancel_requested,
    _duplicate,
    _too_many_in_flight,
    _rate_limited,
    _over_monthly_limit,
    _insufficient_credits,
)


def poll_delays(initial: float, multiplier: float, maximum: float) -> Iterator[float]:
    """Seconds to wait before each poll: exponential from `initial`, capped at `maximum`.

    Polling stops when the job's deadline fires, so the sequence is endless.
    """
    delay = initial
    while True:
        yield min(delay, maximum)
        delay = min(delay * multiplier, maximum)


def refund_for_delivery(job: Job, delivered: int) -> int:
    """Credits owed back for outputs paid for but not delivered.

    The documented rule: a job delivers exactly what it asked for, or the
    user gets back the cost of each missing output.
    """
    if job.cost is None or job.num_outputs <= 0:
        return 0
    missing = max(job.num_outputs - delivered, 0)
    return job.cost * missing // job.num_outputs


@attrs.frozen
class StoredOutput:
    """One delivered output of a job: which one, where the provider served it, where we keep it.

    `idx` is the output's own index among the job's `num_outputs`, not its position among
    those delivered: when output 0 fails, outputs 1 and 2 are stored as 1 and 2, so the
    prediction, the stored object and the row always agree. `path` locates the stored
    object for deletion; `public_url` is an http(s) URL an app may hand a browser.
    """

    idx: int
    url: str
    path: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    content_type: str | None = None
    public_url: str | None = None


@attrs.frozen
class Delivered:
    """Outputs stored, in order; `failures` says why any asked-for output is missing."""

    outputs: tuple[StoredOutput, ...]
    failures: tuple[str, ...] = ()


@attrs.frozen
class UpstreamFailed:
    """The provider failed, refused or garbled the job; `summary` is already redacted."""

    summary: str


@attrs.frozen
class TimedOut:
    """The deadline fired; outputs stored before it still count as delivered."""

    deadline_s: float
    delivered: tuple[StoredOutput, ...] = ()


@attrs.frozen
class CanceledByUser:
    pass


@attrs.frozen
class Abandoned:
    """The daemon lost the job: crashed mid-submit, or failed in its own code."""

    reason: str


@attrs.frozen
class Stuck:
    """Still in flight `minutes` after its deadline: whatever ran it is long gone."""

    minutes: float


Ending = Delivered | UpstreamFailed | TimedOut | CanceledByUser | Abandoned | Stuck


@attrs.frozen
class Settlement:
    """How an admitted job ends: its terminal status, code, message and refund.

    For a job that did not succeed the refund is its whole cost (the database
    refunds the full debit whatever this says); for a success it is the cost
    of the outputs that were paid for but not delivered.
    """

    status: JobStatus
    code: ErrorCode | None
    message: str
    refund: int
    outputs: tuple[StoredOutput, ...] = ()


def settle(job: Job, ending: Ending) -> Settlement:  # noqa: PLR0911  (one answer per ending)
    """The one place that decides what each way of ending a job means for the user.

    The documented multi-output rule: a job that delivered some of its
    outputs succeeds, flagged partial, and is refunded exactly the cost of
    the missing ones; a job that delivered none fails and is refunded whole.
    """
    full = job.cost or 0
    match ending:
        case Delivered(outputs=outputs, failures=failures) if outputs:
            return _delivered(job, outputs, failures)
        case TimedOut(deadline_s=deadline_s, delivered=delivered) if delivered:
            return _delivered(job, delivered, (f"the rest missed the {deadline_s:g} s deadline",))
        case Delivered(failures=failures):
            why = failures[0] if failures else "the provider finished without any output"
            return Settlement(
                JobStatus.FAILED, ErrorCode.UPSTREAM_ERROR, f"{why}; credits refunded", full
            )
        case UpstreamFailed(summary=summary):
            return Settlement(
                JobStatus.FAILED,
                ErrorCode.UPSTREAM_ERROR,
                f"the provider failed: {summary}; credits refunded",
                full,
            )
        case TimedOut(deadline_s=deadline_s):
            return Settlement(
                JobStatus.TIMED_OUT,
                ErrorCode.TIMEOUT,
                f"the provider did not finish within {deadline_s:g} s; credits refunded",
                full,
            )
        case CanceledByUser():
            return Settlement(
                JobStatus.CANCELED,
                ErrorCode.CANCELED,
                "cancelled on request; credits refunded",
                full,
            )
        case Abandoned(reason=reason):
            return Settlement(
                JobStatus.FAILED, ErrorCode.INTERNAL_ERROR, f"{reason}; credits refunded", full
            )
        case Stuck(minutes=minutes):
            return Settlement(
                JobStatus.FAILED,
                ErrorCode.STUCK,
                f"not finished {minutes:g} minutes after its deadline; credits refunded",
                full,
            )


def _delivered(
    job: Job, outputs: tuple[StoredOutput, ...], failures: tuple[str, ...]
) -> Settlement:
    by_idx = {output.idx: output for output in outputs if 0 <= output.idx < job.num_outputs}
    kept = tuple(by_idx[idx] for idx in sorted(by_idx))
    refund = refund_for_delivery(job, len(kept))
    if not refund:
        return Settlement(JobStatus.SUCCEEDED, None, f"{len(kept)} outputs delivered", 0, kept)
    why = f" ({failures[0]})" if failures else ""
    note = f"{len(kept)} of {job.num_outputs} outputs delivered{why}; {refund} credits refunded"
    return Settlement(JobStatus.SUCCEEDED, None, note, refund, kept)


FoundBy = Literal["recorded", "lost", "replaced", "listed"]


@attrs.frozen
class UpstreamRef:
    """A prediction of ours that may still bill upstream without delivering to its job.

    `found_by` says how we know of it: recorded on a job that ended without that output,
    found after its submit was cut off (`lost`), replaced by a resubmission, or seen in
    the provider's listing.
    """

    provider: str
    prediction_id: str
    job_id: UUID
    idx: int
    found_by: FoundBy


@attrs.frozen
class ListedClaim:
    """What the database knows about a prediction the provider listed with our tag.

    `job_status` is None when no job of ours has that id (another deployment's tag);
    `recorded` is the prediction id stored for that output, if any; `noted` says the
    prediction is already tracked as upstream money.
    """

    prediction_id: str
    job_id: UUID
    idx: int
    job_status: JobStatus | None
    recorded: str | None
    noted: bool
