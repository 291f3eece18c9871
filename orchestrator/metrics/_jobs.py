"""Jobs and money: what the actors report through their `Observer` port, and the sweeper.

Only what PromQL cannot derive is counted: submissions are admitted plus
rejected, duplicates are `jobs_rejected{code="DUPLICATE"}`, and timeouts,
cancels and stuck jobs are `jobs_finished` by status or code.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from orchestrator.core import MAX_PRIORITY, MIN_PRIORITY, ErrorCode, JobStatus

from . import _buckets


class JobMetrics:
    def __init__(self, registry: CollectorRegistry, fenced_writes: Counter) -> None:
        r = registry
        self.fenced_writes = fenced_writes
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
            buckets=_buckets.JOB,
            registry=r,
        )
        self.provider_time = Histogram(
            "orchestrator_provider_wait_seconds",
            "Admission to terminal status: the time spent with the provider.",
            buckets=_buckets.JOB,
            registry=r,
        )
        self.polls = Histogram(
            "orchestrator_job_polls", "Provider polls per job.", buckets=_buckets.POLLS, registry=r
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
            buckets=_buckets.LAG,
            registry=r,
        )
        self.admissions_by_priority = Counter(
            "orchestrator_admissions_by_priority",
            "Jobs admitted, by their plan's priority (1..10, the weight in the fair order).",
            ["priority"],
            registry=r,
        )
        for priority in range(MIN_PRIORITY, MAX_PRIORITY + 1):
            self.admissions_by_priority.labels(priority=str(priority))
        self.settle_retries = Counter(
            "orchestrator_settle_retries",
            "Attempts to store a job's ending that failed and were retried.",
            registry=r,
        )
        self.prediction_retries = Counter(
            "orchestrator_prediction_retries",
            "Outputs whose prediction failed transiently, by reason and outcome: retried "
            "(another prediction started), exhausted or out_of_time (the output failed).",
            ["reason", "outcome"],
            registry=r,
        )

    def job_admitted(self, cost: int, intake_lag_s: float | None, *, priority: int = 1) -> None:
        self.jobs_admitted.inc()
        bounded = min(max(priority, MIN_PRIORITY), MAX_PRIORITY)
        self.admissions_by_priority.labels(priority=str(bounded)).inc()
        self.credits_debited.inc(cost)
        self._lag(intake_lag_s)

    def job_rejected(self, code: ErrorCode, intake_lag_s: float | None) -> None:
        self.jobs_rejected.labels(code=code.value).inc()
        self._lag(intake_lag_s)

    def _lag(self, intake_lag_s: float | None) -> None:
        if intake_lag_s is not None:
            self.intake_lag.observe(max(intake_lag_s, 0.0))

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
        self.job_swept(status, code, refunded=refunded)
        self.provider_time.observe(provider_s)
        self.polls.observe(polls)
        if total_s is not None:
            self.job_duration.labels(status=status.value).observe(total_s)

    def job_swept(self, status: JobStatus, code: ErrorCode | None, *, refunded: int) -> None:
        """A job ended without timings (by the sweeper): counted and refunded like any other."""
        self.jobs_finished.labels(status=status.value, code=code.value if code else "").inc()
        self.credits_refunded.inc(refunded)

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

    def provider_request(self, operation: str, outcome: str) -> None:
        self.provider_requests.labels(operation=operation, outcome=outcome).inc()

    def settle_retried(self) -> None:
        self.settle_retries.inc()

    def prediction_retried(self, reason: str, outcome: str) -> None:
        self.prediction_retries.labels(reason=reason, outcome=outcome).inc()

    def write_fenced(self, write: str) -> None:
        self.fenced_writes.labels(write=write).inc()
