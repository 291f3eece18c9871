"""Intake: notifications, the catch-up scan and full mailboxes (`intake.IntakeObserver`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class IntakeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.notifications = Counter(
            "orchestrator_intake_notifications", "NOTIFY wake-ups received.", registry=r
        )
        self.bad_notifications = Counter(
            "orchestrator_intake_bad_notifications",
            "Notifications whose payload was not a job id.",
            registry=r,
        )
        self.scan_finds = Counter(
            "orchestrator_intake_scan_finds",
            "Jobs the catch-up scan handed to actors (their notification was missed or early).",
            registry=r,
        )
        self.mailbox_full = Counter(
            "orchestrator_mailbox_full",
            "Deliveries refused by a full mailbox (the job stays queued for the next scan).",
            registry=r,
        )

    def notified(self, count: int, *, unreadable: int) -> None:
        self.notifications.inc(count)
        self.bad_notifications.inc(unreadable)

    def scan_found(self, count: int) -> None:
        self.scan_finds.inc(count)

    def mailbox_refused(self) -> None:
        self.mailbox_full.inc()
