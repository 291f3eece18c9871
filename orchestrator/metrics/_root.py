"""One daemon's registry, its parts, and the observers that span parts."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, generate_latest

from orchestrator.core import ErrorCode, JobStatus

from ._breakers import BreakerMetrics
from ._callbacks import CallbackMetrics
from ._cluster import ClusterMetrics
from ._intake import IntakeMetrics
from ._jobs import JobMetrics
from ._process import ProcessGauges
from ._storage import StorageMetrics
from ._upkeep import UpkeepMetrics

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """One daemon's registry and its parts.

    It also implements the two observers that span parts: the sweeper's (jobs it
    ends, webhook events it forgets, fenced writes) and the webhooks' (deliveries
    and fenced writes).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cluster = ClusterMetrics(self.registry)
        self.jobs = JobMetrics(self.registry, fenced_writes=self.cluster.fenced_writes)
        self.intake = IntakeMetrics(self.registry)
        self.upkeep = UpkeepMetrics(self.registry)
        self.process = ProcessGauges(self.registry)
        self.breakers = BreakerMetrics(self.registry)
        self.callbacks = CallbackMetrics(self.registry)
        self.storage = StorageMetrics(self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's value now, 0 when it was never recorded (for tests and the demo)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def job_swept(self, status: JobStatus, code: ErrorCode | None, *, refunded: int) -> None:
        self.jobs.job_swept(status, code, refunded=refunded)

    def job_rejected(self, code: ErrorCode, intake_lag_s: float | None) -> None:
        self.jobs.job_rejected(code, intake_lag_s)

    def write_fenced(self, write: str) -> None:
        self.jobs.write_fenced(write)

    def webhook_events_forgotten(self, count: int) -> None:
        self.upkeep.webhook_events_forgotten(count)

    def job_events_forgotten(self, count: int) -> None:
        self.callbacks.job_events_forgotten(count)

    def webhook(self, provider: str, result: str) -> None:
        self.upkeep.webhook(provider, result)
