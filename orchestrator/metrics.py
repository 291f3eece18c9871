"""Every Prometheus metric the daemon exports, defined in one place.

Names follow Prometheus conventions (`_total` counters, `_seconds` in base
units); labels have bounded cardinality: statuses, error codes, operations,
outcomes. Never a user id, job id, prediction id or prompt. Each daemon owns
its `CollectorRegistry`, so tests can run several daemons in one process
and read each one's figures alone.

`Metrics` implements the actors' `Observer` port: the actors report what
happened; this module decides how it is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from orchestrator.core import ErrorCode, JobStatus

_JOB_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)
_LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_POLL_BUCKETS: Final = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55)
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def version() -> str:
    try:
        return metadata.version("generation-orchestrator")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs_submitted = Counter(
            "orchestrator_jobs_submitted", "Queued jobs that reached admission.", registry=r
        )
        self.jobs_admitted = Counter(
            "orchestrator_jobs_admitted", "Jobs admitted: debited and started.", registry=r
        )
        self.jobs_rejected = Counter(
            "orchestrator_jobs_rejected",
            "Jobs refused at admission, never charged, by error code.",
            ["code"],
            registry=r,
        )
        self.jobs_finished = Counter(
            "orchestrator_jobs_finished",
            "Admitted jobs that reached a terminal status, by status and error code.",
            ["status", "code"],
            registry=r,
        )
        self.duplicates_dropped = Counter(
            "orchestrator_duplicates_dropped",
            "Submissions rejected as DUPLICATE of a queued or running job.",
            registry=r,
        )
        self.timeouts = Counter(
            "orchestrator_job_timeouts", "Jobs whose provider wait hit the deadline.", registry=r
        )
        self.cancels = Counter(
            "orchestrator_job_cancels", "Jobs cancelled on request while running.", registry=r
        )
        self.credits_debited = Counter(
            "orchestrator_credits_debited", "Credits taken at admission.", registry=r
        )
        self.credits_refunded = Counter(
            "orchestrator_credits_refunded", "Credits given back to users.", registry=r
        )
        self.job_duration = Histogram(
            "orchestrator_job_duration_seconds",
            "Submission to terminal status, for admitted jobs.",
            ["status"],
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.provider_time = Histogram(
            "orchestrator_provider_wait_seconds",
            "Admission to terminal status: the time spent with the provider.",
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.polls = Histogram(
            "orchestrator_job_polls",
            "Provider polls per job.",
            buckets=_POLL_BUCKETS,
            registry=r,
        )
        self.provider_requests = Counter(
            "orchestrator_provider_requests",
            "Requests to the provider by operation and outcome.",
            ["operation", "outcome"],
            registry=r,
        )
        self.intake_lag = Histogram(
            "orchestrator_intake_lag_seconds",
            "Commit of a submission to its admission decision.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
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
        self.webhooks = Counter(
            "orchestrator_webhooks",
            "Webhook deliveries by provider and result.",
            ["provider", "result"],
            registry=r,
        )
        self.stuck = Counter(
            "orchestrator_jobs_stuck", "Jobs the sweeper ended as STUCK.", registry=r
        )
        self.webhook_events_pruned = Counter(
            "orchestrator_webhook_events_pruned",
            "Webhook deliveries forgotten past the providers' retry window.",
            registry=r,
        )
        self.settle_retries = Counter(
            "orchestrator_settle_retries",
            "Attempts to store a job's ending that failed and were retried.",
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
        self.actors_active = Gauge(
            "orchestrator_actors_active", "User actors currently alive.", registry=r
        )
        self.mailbox_depth = Gauge(
            "orchestrator_mailbox_depth", "Messages waiting in all mailboxes.", registry=r
        )
        self.jobs_running = Gauge(
            "orchestrator_jobs_running", "Job tasks running in this daemon.", registry=r
        )
        self.listener_connected = Gauge(
            "orchestrator_listener_connected", "1 while the LISTEN connection is up.", registry=r
        )
        self.slots_owned = Gauge(
            "orchestrator_partition_slots_owned",
            "Partition slots this daemon holds a live lease on (of 1024).",
            registry=r,
        )
        self.slots_unowned = Gauge(
            "orchestrator_partition_slots_unowned",
            "Slots nobody held a live lease on at this daemon's last lease round.",
            registry=r,
        )
        self.lease_round_seconds = Histogram(
            "orchestrator_lease_round_seconds",
            "Duration of a lease round (heartbeat, renew, take and give up), in seconds.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.leases_lost = Counter(
            "orchestrator_leases_lost_total",
            "Slots lost without giving them up: a renewal missed them or came too late.",
            registry=r,
        )
        self.slots_moved = Counter(
            "orchestrator_partition_slots_moved_total",
            "Slots taken or given up by this daemon.",
            ["direction"],
            registry=r,
        )
        self.fenced_writes = Counter(
            "orchestrator_fenced_writes_total",
            "Writes the database refused because this daemon's lease on the slot was gone.",
            ["write"],
            registry=r,
        )
        self.handover_seconds = Histogram(
            "orchestrator_handover_seconds",
            "From a stop signal to this daemon's slots being free for the others, in seconds.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.capacity_waiting = Gauge(
            "orchestrator_capacity_waiting",
            "Users whose next job waits, still queued, for a free in-flight place.",
            registry=r,
        )
        self.capacity_limit = Gauge(
            "orchestrator_capacity_limit",
            "Jobs this daemon admits up to now (steered by the loop's lag).",
            registry=r,
        )
        self.loop_lag = Gauge(
            "orchestrator_loop_lag_seconds",
            "How late the event loop last woke a short sleep.",
            registry=r,
        )
        self.db_pool_in_use = Gauge(
            "orchestrator_db_pool_in_use", "Database connections checked out.", registry=r
        )
        self.build_info = Gauge(
            "orchestrator_build_info", "Build information.", ["version"], registry=r
        )
        self.build_info.labels(version=version()).set(1)

    def bind_gauges(
        self,
        *,
        actors: Callable[[], float],
        mailbox_depth: Callable[[], float],
        jobs_running: Callable[[], float],
        listener_connected: Callable[[], float],
        slots_owned: Callable[[], float],
        db_pool_in_use: Callable[[], float],
        capacity_waiting: Callable[[], float] = lambda: 0.0,
        capacity_limit: Callable[[], float] = lambda: 0.0,
        loop_lag: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """Gauges read at scrape time from the live objects."""
        self.actors_active.set_function(actors)
        self.mailbox_depth.set_function(mailbox_depth)
        self.jobs_running.set_function(jobs_running)
        self.listener_connected.set_function(listener_connected)
        self.slots_owned.set_function(slots_owned)
        self.db_pool_in_use.set_function(db_pool_in_use)
        self.capacity_waiting.set_function(capacity_waiting)
        self.capacity_limit.set_function(capacity_limit)
        self.loop_lag.set_function(loop_lag)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # The actors' Observer port.

    def job_admitted(self, cost: int, intake_lag_s: float | None) -> None:
        self.jobs_submitted.inc()
        self.jobs_admitted.inc()
        self.credits_debited.inc(cost)
        if intake_lag_s is not None:
            self.intake_lag.observe(max(intake_lag_s, 0.0))

    def job_rejected(self, code: ErrorCode, intake_lag_s: float | None) -> None:
        self.jobs_submitted.inc()
        self.jobs_rejected.labels(code=code.value).inc()
        if code is ErrorCode.DUPLICATE:
            self.duplicates_dropped.inc()
        if intake_lag_s is not None:
            self.intake_lag.observe(max(intake_lag_s, 0.0))

    def finished_count(self) -> int:
        """Jobs finished so far, for pacing admissions to what the daemon can finish."""
        return int(
            sum(
                sample.value
                for metric in self.jobs_finished.collect()
                for sample in metric.samples
                if sample.name.endswith("_total")
            )
        )

    def job_swept(self, status: JobStatus, code: ErrorCode | None, *, refunded: int) -> None:
        """A job the sweeper ended: counted and refunded like any other, with no timings."""
        self._ended(status, code, refunded)

    def _ended(self, status: JobStatus, code: ErrorCode | None, refunded: int) -> None:
        self.jobs_finished.labels(status=status.value, code=code.value if code else "").inc()
        self.credits_refunded.inc(refunded)

    def job_finished(
        self,
        status: JobStatus,
        code: ErrorCode | None,
        *,
        refunded: int,
        provider_s: float,
        total_s: float | None,
        polls: int,
    ) -> None:
        self._ended(status, code, refunded)
        self.provider_time.observe(provider_s)
        self.polls.observe(polls)
        if total_s is not None:
            self.job_duration.labels(status=status.value).observe(total_s)
        if status is JobStatus.TIMED_OUT:
            self.timeouts.inc()
        elif status is JobStatus.CANCELED:
            self.cancels.inc()

    def provider_request(self, operation: str, outcome: str) -> None:
        self.provider_requests.labels(operation=operation, outcome=outcome).inc()

    def settle_retried(self) -> None:
        self.settle_retries.inc()

    def write_fenced(self, write: str) -> None:
        self.fenced_writes.labels(write=write).inc()
