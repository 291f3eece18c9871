"""Upkeep: webhooks, pruning, reconciliation with the provider, and the ledger audit.

Implements `webhooks.WebhookObserver`, `sweeper.SweepObserver` (with the job
metrics), `reconcile.ReconcileObserver` and `auditor.AuditObserver`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge


class UpkeepMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.webhooks = Counter(
            "orchestrator_webhooks",
            "Webhook deliveries by provider and result.",
            ["provider", "result"],
            registry=r,
        )
        self.webhook_events_pruned = Counter(
            "orchestrator_webhook_events_pruned",
            "Webhook deliveries forgotten past the providers' retry window.",
            registry=r,
        )
        self.upstream_predictions = Counter(
            "orchestrator_upstream_predictions",
            "Predictions reconciliation found delivering nothing, by what it did: canceled "
            "(still running), cancel_failed, undelivered (succeeded upstream, never "
            "delivered), unreadable (the provider could not say).",
            ["outcome"],
            registry=r,
        )
        self.upstream_running = Gauge(
            "orchestrator_upstream_running_for_nothing",
            "Predictions the last reconciliation pass found still running for ended jobs.",
            registry=r,
        )
        self.reconcile_last_run = Gauge(
            "orchestrator_reconcile_last_run_timestamp_seconds",
            "When reconciliation with the provider last completed a pass.",
            registry=r,
        )
        self.audit_violations = Gauge(
            "orchestrator_audit_violations",
            "Violations found by the last periodic ledger audit (0 when clean).",
            registry=r,
        )
        self.audit_last_run = Gauge(
            "orchestrator_audit_last_run_timestamp_seconds",
            "When the periodic ledger audit last completed.",
            registry=r,
        )

    def webhook(self, provider: str, result: str) -> None:
        self.webhooks.labels(provider=provider, result=result).inc()

    def webhook_events_forgotten(self, count: int) -> None:
        self.webhook_events_pruned.inc(count)

    def reconciled(self, outcomes: Mapping[str, int], *, running: int) -> None:
        for outcome, count in outcomes.items():
            self.upstream_predictions.labels(outcome=outcome).inc(count)
        self.upstream_running.set(running)
        self.reconcile_last_run.set(time.time())

    def audited(self, violations: int) -> None:
        self.audit_violations.set(violations)
        self.audit_last_run.set(time.time())
