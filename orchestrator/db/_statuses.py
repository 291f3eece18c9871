"""The job-status sets the SQL names, written once from `JobStatus`.

`queries.sql` spells them `{{statuses:in_flight}}`; `schema.sql` (whose index
predicates and checks must be literals) is held to the same sets by
`tests/test_schema.py`, so Python and SQL cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from orchestrator.core import JobStatus

_TERMINAL: Final = frozenset(s for s in JobStatus if s.terminal)

STATUS_SETS: Final[Mapping[str, frozenset[JobStatus]]] = {
    # Holding a seat and a debit.
    "in_flight": frozenset(s for s in JobStatus if s.in_flight),
    # Not ended yet: queued or in flight.
    "active": frozenset(s for s in JobStatus if not s.terminal),
    "terminal": _TERMINAL,
    # Admitted, then ended.
    "ended": _TERMINAL - {JobStatus.REJECTED},
    # Ended without success: carries an error code.
    "unsuccessful": _TERMINAL - {JobStatus.SUCCEEDED},
    # Never charged: no cost recorded.
    "uncharged": frozenset({JobStatus.QUEUED, JobStatus.REJECTED}),
    # Ended without delivering: the whole debit goes back.
    "refunded_whole": frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELED}),
    # What counts against a plan's monthly generations.
    "month_usage": frozenset({JobStatus.STARTING, JobStatus.PROCESSING, JobStatus.SUCCEEDED}),
}


def sql_list(name: str) -> str:
    """The set as the inside of a SQL `IN (...)`, in the enum's order."""
    members = STATUS_SETS[name]
    return ", ".join(f"'{status.value}'" for status in JobStatus if status in members)
