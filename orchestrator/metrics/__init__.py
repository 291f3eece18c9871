"""Every Prometheus metric the daemon exports, split by the subsystem that reports it.

Names follow Prometheus conventions (`_total` counters, `_seconds` in base
units); labels have bounded cardinality: statuses, error codes, operations,
outcomes. Never a user id, job id, prediction id or prompt. Each daemon owns
its `CollectorRegistry`, so tests can run several daemons in one process and
read each one's figures alone.

The subsystems report through small observer protocols of their own (the
actors' `Observer` in `orchestrator.core`, `IntakeObserver` in `intake`, and
so on), each with a null default; the parts here implement them, and only
the composition root hands them out.
"""

from ._breakers import BreakerMetrics as BreakerMetrics
from ._callbacks import CallbackMetrics as CallbackMetrics
from ._cluster import ClusterMetrics as ClusterMetrics
from ._intake import IntakeMetrics as IntakeMetrics
from ._jobs import JobMetrics as JobMetrics
from ._process import ProcessGauges as ProcessGauges
from ._process import version as version
from ._root import CONTENT_TYPE as CONTENT_TYPE
from ._root import Metrics as Metrics
from ._storage import StorageMetrics as StorageMetrics
from ._upkeep import UpkeepMetrics as UpkeepMetrics

__all__ = [
    "CONTENT_TYPE",
    "BreakerMetrics",
    "CallbackMetrics",
    "ClusterMetrics",
    "IntakeMetrics",
    "JobMetrics",
    "Metrics",
    "ProcessGauges",
    "StorageMetrics",
    "UpkeepMetrics",
    "version",
]
