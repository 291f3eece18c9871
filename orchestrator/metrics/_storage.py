"""The object store as the daemon uses it: outputs put, inputs checked, by outcome.

Implements `outputs.StorageObserver`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class StorageMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "orchestrator_storage_requests",
            "Object store calls by operation (put: an output stored; check: an input image "
            "looked at before its debit) and outcome (ok; unavailable: still failing after "
            "the retries, an outage; refused: permission, a missing bucket, a bad request).",
            ["operation", "outcome"],
            registry=registry,
        )
        for operation in ("put", "check"):
            for outcome in ("ok", "unavailable", "refused"):
                self.requests.labels(operation=operation, outcome=outcome)

    def storage_call(self, operation: str, outcome: str) -> None:
        self.requests.labels(operation=operation, outcome=outcome).inc()
