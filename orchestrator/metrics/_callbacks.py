"""The app's side of the loop: callbacks delivered, retried and given up, and the feed pruned.

Implements `callbacks.CallbackObserver`, and the sweeper's count of events pruned.
The owed and given-up gauges are database facts (every slot's), refreshed by each
daemon's sender: read them with `max()` across daemons, not `sum()`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ._buckets import JOB


class CallbackMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.callbacks = Counter(
            "orchestrator_callbacks",
            "Callback attempts by outcome: delivered (a 2xx), retried (anything else, "
            "tried again later), failed (given up after the retry window), refused (given "
            "up without a request: a host off ORCHESTRATOR_CALLBACK_HOSTS, callbacks off).",
            ["outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "orchestrator_callback_delivery_seconds",
            "From a job's ending to its callback's 2xx, retries included.",
            buckets=JOB,
            registry=r,
        )
        self.pending = Gauge(
            "orchestrator_callbacks_pending",
            "Callbacks owed and not delivered yet, in every slot (the same on every daemon).",
            registry=r,
        )
        self.failed = Gauge(
            "orchestrator_callbacks_given_up",
            "Callbacks given up on and not redelivered, in every slot (the same on every "
            "daemon): `orchestrator callbacks --failed` lists them.",
            registry=r,
        )
        self.events_pruned = Counter(
            "orchestrator_job_events_pruned",
            "Events forgotten past ORCHESTRATOR_EVENT_RETENTION.",
            registry=r,
        )
        for outcome in ("delivered", "retried", "failed", "refused"):
            self.callbacks.labels(outcome=outcome)

    def callback_attempted(self, outcome: str, *, latency_s: float | None = None) -> None:
        self.callbacks.labels(outcome=outcome).inc()
        if latency_s is not None:
            self.delivery_seconds.observe(max(latency_s, 0.0))

    def callbacks_owed(self, pending: int, failed: int) -> None:
        self.pending.set(pending)
        self.failed.set(failed)

    def job_events_forgotten(self, count: int) -> None:
        self.events_pruned.inc(count)
