"""The pure lifecycle: admission order, validation, backoff and settlement."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import hypothesis.strategies as st
import pytest
from hypothesis import given

from orchestrator.core import (
    Abandoned,
    Admit,
    CanceledByUser,
    Delivered,
    ErrorCode,
    Job,
    JobStatus,
    Plan,
    Reject,
    StoredOutput,
    TimedOut,
    UpstreamFailed,
    Usage,
    decide_admission,
    poll_delays,
    refund_for_delivery,
    settle,
    validate,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PLAN = Plan(
    "test", monthly_generations=100, max_inflight=2, min_seconds_between=10, cost_per_output=3
)


def job(**changes: object) -> Job:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "user_id": "alice",
        "prompt": "a lighthouse",
        "params": {},
        "num_outputs": 1,
        "status": JobStatus.QUEUED,
    }
    values.update(changes)
    return Job(**values)  # type: ignore[arg-type]


def usage(**changes: object) -> Usage:
    values: dict[str, object] = {
        "balance": 100,
        "plan": PLAN,
        "in_flight": 0,
        "month_generations": 0,
        "last_admitted_at": None,
        "duplicate": False,
    }
    values.update(changes)
    return Usage(**values)  # type: ignore[arg-type]


def test_a_job_within_every_limit_is_admitted_at_its_cost():
    """Cost is outputs times the plan's price; the seat limit travels with the decision."""
    assert decide_admission(job(num_outputs=4), usage(), NOW) == Admit(cost=12, max_inflight=2)


ORDER = [
    ("duplicate", ErrorCode.DUPLICATE),
    ("in_flight", ErrorCode.TOO_MANY_INFLIGHT),
    ("rate", ErrorCode.RATE_LIMITED),
    ("month", ErrorCode.LIMIT_EXCEEDED),
    ("balance", ErrorCode.INSUFFICIENT_CREDITS),
]


@given(failing=st.lists(st.sampled_from([name for name, _ in ORDER]), min_size=1, unique=True))
def test_the_first_failing_check_in_the_documented_order_decides(failing: list[str]):
    """Duplicate, then in-flight, rate, monthly limit, balance: the earliest failure is reported."""
    broken = usage(
        duplicate="duplicate" in failing,
        in_flight=2 if "in_flight" in failing else 0,
        last_admitted_at=NOW - timedelta(seconds=3) if "rate" in failing else None,
        month_generations=100 if "month" in failing else 0,
        balance=2 if "balance" in failing else 100,
    )
    decision = decide_admission(job(), broken, NOW)
    expected = next(code for name, code in ORDER if name in failing)
    assert isinstance(decision, Reject)
    assert decision.code is expected
    assert decision.message


def test_rate_limit_counts_from_the_last_admission():
    """Exactly min_seconds_between after the last admission is allowed again."""
    assert isinstance(
        decide_admission(job(), usage(last_admitted_at=NOW - timedelta(seconds=9.9)), NOW), Reject
    )
    assert isinstance(
        decide_admission(job(), usage(last_admitted_at=NOW - timedelta(seconds=10)), NOW), Admit
    )


def test_the_monthly_limit_counts_the_outputs_asked_for():
    """A 5-output job with 96 of 100 generations used is over the limit."""
    decision = decide_admission(job(num_outputs=5), usage(month_generations=96), NOW)
    assert isinstance(decision, Reject)
    assert decision.code is ErrorCode.LIMIT_EXCEEDED


def test_a_cancel_requested_before_admission_wins_over_everything_but_validation():
    """A user who cancelled a queued job is told it was cancelled, not that it was a duplicate."""
    decision = decide_admission(job(cancel_requested_at=NOW), usage(duplicate=True), NOW)
    assert decision == Reject(
        ErrorCode.CANCELED, "cancelled before it started; nothing was charged"
    )


def test_an_unknown_user_is_a_validation_error():
    """No account means no plan: refused without touching any balance."""
    decision = decide_admission(job(), usage(balance=None, plan=None), NOW)
    assert isinstance(decision, Reject)
    assert decision.code is ErrorCode.VALIDATION_ERROR
    assert "unknown user" in decision.message


def test_validation_names_what_is_wrong():
    """Each malformed submission gets its own clear message."""
    cases = {
        "the prompt is empty": job(prompt="   "),
        "at most 4000": job(prompt="x" * 4001),
        "between 1 and 30": job(num_outputs=31),
        "not an array": job(params_error="params must be a JSON object, not an array"),
        "must not set 'num_outputs'": job(params={"num_outputs": 3}),
        "'blob' is not an input": job(params={"blob": "x"}),
        "at most 16384": job(params={"seed": "x" * 17_000}),
        "user_id must be": job(user_id="a b"),
    }
    for fragment, bad in cases.items():
        refusal = validate(bad, frozenset({"seed"}))
        assert refusal is not None
        assert refusal.code is ErrorCode.VALIDATION_ERROR
        assert fragment in refusal.message
    assert validate(job()) is None


def test_poll_delays_grow_geometrically_and_stop_at_the_cap():
    """Backoff, not a fixed 2 s loop: 0.5, 0.8, 1.28 ... capped at 5."""
    delays = list(itertools.islice(poll_delays(0.5, 1.6, 5.0), 8))
    assert delays[:4] == pytest.approx([0.5, 0.8, 1.28, 2.048])
    assert delays[-3:] == [5.0, 5.0, 5.0]
    assert all(a <= b for a, b in itertools.pairwise(delays))


def test_a_partial_delivery_refunds_exactly_the_missing_outputs():
    """Seed 002's rule: deliver what was paid for, or refund what was not delivered."""
    paid = job(num_outputs=30, cost=90, status=JobStatus.PROCESSING)
    assert refund_for_delivery(paid, 30) == 0
    assert refund_for_delivery(paid, 24) == 18
    settlement = settle(paid, Delivered(_outputs(range(24))))
    assert settlement.status is JobStatus.SUCCEEDED
    assert settlement.refund == 18
    assert len(settlement.outputs) == 24


def test_extra_outputs_from_the_provider_are_never_kept():
    """A provider returning more than asked cannot over-deliver."""
    paid = job(num_outputs=2, cost=6, status=JobStatus.PROCESSING)
    settlement = settle(paid, Delivered(_outputs([0, 1, 2, -1])))
    assert settlement.outputs == _outputs([0, 1])
    assert settlement.refund == 0


def test_outputs_keep_their_own_index_when_the_first_one_is_missing():
    """Outputs 1 and 2 of three stay 1 and 2, sorted, and output 0 is refunded."""
    paid = job(num_outputs=3, cost=9, status=JobStatus.PROCESSING)
    settlement = settle(paid, Delivered(_outputs([2, 1]), failures=("output 0: refused",)))
    assert [output.idx for output in settlement.outputs] == [1, 2]
    assert (settlement.status, settlement.refund) == (JobStatus.SUCCEEDED, 3)
    assert "output 0: refused" in settlement.message


def _outputs(indices) -> tuple[StoredOutput, ...]:
    return tuple(StoredOutput(idx=idx, url=f"https://cdn.test/{idx}.png") for idx in indices)


def test_every_unsuccessful_ending_refunds_in_full_with_its_code():
    """Failure, timeout, cancel, an empty delivery and our own crash each refund the whole cost."""
    paid = job(cost=3, status=JobStatus.PROCESSING)
    expectations = [
        (UpstreamFailed("boom"), JobStatus.FAILED, ErrorCode.UPSTREAM_ERROR),
        (TimedOut(120), JobStatus.TIMED_OUT, ErrorCode.TIMEOUT),
        (CanceledByUser(), JobStatus.CANCELED, ErrorCode.CANCELED),
        (Delivered(()), JobStatus.FAILED, ErrorCode.UPSTREAM_ERROR),
        (Abandoned("crash"), JobStatus.FAILED, ErrorCode.INTERNAL_ERROR),
    ]
    for ending, status, code in expectations:
        settlement = settle(paid, ending)
        assert (settlement.status, settlement.code, settlement.refund) == (status, code, 3)
        assert "refunded" in settlement.message
    assert "120 s" in settle(paid, TimedOut(120)).message
