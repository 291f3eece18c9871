"""Random sequences of grants, submissions, admissions, finishes and refunds.

A model of every balance runs beside the real database; after each step the
balances must agree and the whole audit must be clean.
"""

from __future__ import annotations

import uuid

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from orchestrator.core import ErrorCode, JobStatus, StoredOutput
from orchestrator.db import Database, IntegrityViolation

from . import pg
from .portal import Portal

PLAN = "stateful"
PRICE = 2

FAILURES = [
    (JobStatus.FAILED, ErrorCode.UPSTREAM_ERROR),
    (JobStatus.TIMED_OUT, ErrorCode.TIMEOUT),
    (JobStatus.CANCELED, ErrorCode.CANCELED),
]


@pytest.fixture
def portal(db_url: str):
    pg.fetch_sync(
        db_url,
        "INSERT INTO orchestrator.plans"
        " (name, monthly_generations, max_inflight, min_seconds_between, cost_per_output)"
        " VALUES ($1, 1000000, 1000, 0, $2) ON CONFLICT (name) DO NOTHING",
        PLAN,
        PRICE,
    )
    with Portal(db_url) as p:
        yield p


def test_random_ledger_histories_keep_every_audit_invariant(portal: Portal):
    """Whatever order operations come in, balances match the model and the audit is clean."""

    class LedgerMachine(RuleBasedStateMachine):
        users = Bundle("users")
        queued = Bundle("queued")
        admitted = Bundle("admitted")

        def __init__(self) -> None:
            super().__init__()
            self.prefix = uuid.uuid4().hex[:8]
            self.balances: dict[str, int] = {}
            self.debits: dict[uuid.UUID, int] = {}
            self.refunded: set[uuid.UUID] = set()

        @property
        def db(self) -> Database:
            assert portal.db is not None
            return portal.db

        @rule(target=users, n=st.integers(0, 3), amount=st.integers(1, 20))
        def grant(self, n: int, amount: int) -> str:
            user = f"{self.prefix}-{n}"
            balance = portal.call(self.db.grant, user, amount, plan=PLAN)
            self.balances[user] = self.balances.get(user, 0) + amount
            assert balance == self.balances[user]
            return user

        @rule(target=queued, user=users, outputs=st.integers(1, 4))
        def submit(self, user: str, outputs: int) -> uuid.UUID:
            return portal.call(self.db.submit_job, user, f"p-{uuid.uuid4()}", num_outputs=outputs)

        @rule(target=admitted, job_id=consumes(queued))
        def admit(self, job_id: uuid.UUID) -> uuid.UUID:
            job = portal.call(self.db.job, job_id)
            assert job is not None
            cost = job.num_outputs * PRICE
            admission = portal.call(self.db.admit, job_id, deadline_s=60)
            assert admission.cost == (cost if admission.outcome == "admitted" else None)
            if self.balances[job.user_id] >= cost:
                assert admission.outcome == "admitted"
                self.balances[job.user_id] -= cost
                self.debits[job_id] = cost
                assert admission.balance == self.balances[job.user_id]
            else:
                assert admission.outcome == "insufficient_credits"
                assert portal.call(self.db.reject, job_id, ErrorCode.INSUFFICIENT_CREDITS, "short")
            return job_id

        @rule(job_id=consumes(queued), code=st.sampled_from(list(ErrorCode)))
        def reject(self, job_id: uuid.UUID, code: ErrorCode) -> None:
            assert portal.call(self.db.reject, job_id, code, "refused")

        @rule(job_id=admitted, failure=st.sampled_from(FAILURES))
        def fail(self, job_id: uuid.UUID, failure: tuple[JobStatus, ErrorCode]) -> None:
            status, code = failure
            finish = portal.call(self.db.finish, job_id, status, code=code, message="x")
            if job_id in self.debits and job_id not in self.refunded:
                job = portal.call(self.db.job, job_id)
                assert job is not None
                if finish.refunded:
                    self.refunded.add(job_id)
                    self.balances[job.user_id] += self.debits[job_id]
                    assert finish.refunded == self.debits[job_id]

        @rule(job_id=admitted, missing=st.integers(0, 8))
        def succeed(self, job_id: uuid.UUID, missing: int) -> None:
            job = portal.call(self.db.job, job_id)
            assert job is not None
            debited = self.debits.get(job_id, 0)
            if job.status.terminal or not debited:
                return
            delivered = max(1, job.num_outputs - missing)
            outputs = tuple(
                StoredOutput(idx=i, url=f"https://cdn.test/{i}.png") for i in range(delivered)
            )
            refund = (job.num_outputs - delivered) * PRICE
            finish = portal.call(self.db.finish, job_id, JobStatus.SUCCEEDED, outputs=outputs)
            assert finish.refunded == refund
            if refund:
                self.refunded.add(job_id)
                self.balances[job.user_id] += refund

        @rule(job_id=admitted, amount=st.integers(1, 10))
        def operator_refund(self, job_id: uuid.UUID, amount: int) -> None:
            job = portal.call(self.db.job, job_id)
            assert job is not None
            debited = self.debits.get(job_id, 0)
            finished = job.status in {
                JobStatus.SUCCEEDED,
                JobStatus.FAILED,
                JobStatus.TIMED_OUT,
                JobStatus.CANCELED,
            }
            owed = finished and debited and job_id not in self.refunded
            if owed and amount > debited:
                with pytest.raises(IntegrityViolation):
                    portal.call(self.db.refund, job_id, amount)
                return
            refund = portal.call(self.db.refund, job_id, amount)
            if not owed:
                assert refund is None
                return
            assert refund is not None
            self.refunded.add(job_id)
            self.balances[job.user_id] += amount

        @rule(job_id=admitted)
        def debit_twice(self, job_id: uuid.UUID) -> None:
            job = portal.call(self.db.job, job_id)
            assert job is not None
            if job_id not in self.debits:
                return
            if self.balances[job.user_id] >= 1:
                with pytest.raises(IntegrityViolation):
                    portal.call(self.db.debit, job.user_id, job_id, 1)
            else:
                assert portal.call(self.db.debit, job.user_id, job_id, 1) is None

        @invariant()
        def balances_match_the_model(self) -> None:
            for user, expected in self.balances.items():
                account = portal.call(self.db.account, user)
                assert account is not None
                assert account.balance == expected

        @invariant()
        def audit_is_clean(self) -> None:
            report = portal.call(self.db.audit)
            assert report.ok, [c for c in report.checks if not c.ok]

    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
