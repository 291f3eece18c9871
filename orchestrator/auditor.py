"""The periodic audit: the daemon checks its own books and says so in a metric.

`orchestrator audit` is for people; this is for the `AuditFailing` alert,
which fires the moment any ledger invariant is found broken.
"""

from __future__ import annotations

from typing import Protocol

import structlog
import trio

from orchestrator.db import Database, DbError

log = structlog.get_logger("orchestrator.auditor")


class AuditObserver(Protocol):
    """Where each pass's count goes; `orchestrator.metrics.UpkeepMetrics` keeps it."""

    def audited(self, violations: int) -> None: ...


async def run_auditor(db: Database, observer: AuditObserver, *, interval_s: float) -> None:
    while True:
        try:
            report = await db.audit()
        except DbError as exc:
            log.warning("audit.unavailable", error=str(exc))
        else:
            violations = sum(check.violations for check in report.checks)
            observer.audited(violations)
            if violations:
                failing = [check.name for check in report.checks if not check.ok]
                log.error("audit.failed", violations=violations, checks=failing)
        await trio.sleep(interval_s)
