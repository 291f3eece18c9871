"""The audit: every money invariant, checked against the data as it is.

Most of these cannot fail because the schema refuses the states they look
for; the audit checks them anyway, so a bug, a manual UPDATE by someone with
too many rights, or a restored backup is caught rather than trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

from ._connector import Pool
from ._queries import queries

_SAMPLE_LIMIT: Final = 20

CHECKS: Final[Mapping[str, str]] = {
    "audit_balance_matches_ledger": "every balance equals the sum of its ledger rows",
    "audit_no_negative_balance": "no balance is negative",
    "audit_one_debit_and_refund_per_job": "no job has two debits or two refunds",
    "audit_refund_within_debit": "every refund has its debit and is not larger",
    "audit_rejected_jobs_uncharged": "no ledger row for a rejected or queued job",
    "audit_admitted_jobs_debited": "every admitted job was debited exactly its cost",
    "audit_failed_jobs_refunded": "every failed, timed out or cancelled job was refunded",
    "audit_outputs_within_num_outputs": "no job holds more outputs than it asked for",
}


@attrs.frozen
class CheckResult:
    name: str
    description: str
    violations: int
    samples: tuple[Mapping[str, object], ...]

    @property
    def ok(self) -> bool:
        return self.violations == 0


@attrs.frozen
class AuditReport:
    checks: tuple[CheckResult, ...]
    totals: Mapping[str, int]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


async def run(pool: Pool) -> AuditReport:
    """Run every check in one repeatable-read snapshot, so they agree with each other."""
    q = queries()
    results = []
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        for name, description in CHECKS.items():
            rows = await conn.fetch(q[name])
            samples = tuple(dict(row) for row in rows[:_SAMPLE_LIMIT])
            results.append(CheckResult(name, description, len(rows), samples))
        totals = dict(await conn.fetchrow(q["audit_totals"]) or {})
    return AuditReport(checks=tuple(results), totals=totals)
