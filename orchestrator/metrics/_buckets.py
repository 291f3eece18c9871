"""Histogram buckets, in base units, shared by the subsystems' metrics."""

from __future__ import annotations

from typing import Final

JOB: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)
LAG: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
POLLS: Final = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55)
LEASE_ROUND: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
HANDOVER: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
