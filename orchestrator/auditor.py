"""The periodic audit: the daemon checks its own books and says so in a metric.

`orchestrator audit` is for people; this is for the `AuditFailing` alert,
which fires the moment any ledger invariant is found broken.
"""

from __future__ import annotations

import time

import structlog
import trio

from orchestrator.db import Database, DbError
from orchestrator.metrics import Metrics

log = structlog.get_logger("orchestrator.auditor")


async def run_auditor(db: Database, metrics: Metrics, *, interval_s: float) -> None:
    while True:
        try:
            report = await db.audit()
        except DbError as exc:
            log.warning("audit.unavailable", error=str(exc))
        else:
            violations = sum(check.violations for check in report.checks)
            metrics.audit_violations.set(violations)
            metrics.audit_last_run.set(time.time())
            if violations:
                failing = [check.name for check in report.checks if not check.ok]
                log.error("audit.failed", violations=violations, checks=failing)
        await trio.sleep(interval_s)
