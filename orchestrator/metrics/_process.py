"""Gauges of the live process, read at scrape time from the objects that know them."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

from prometheus_client import CollectorRegistry, Gauge


def version() -> str:
    try:
        return metadata.version("generation-orchestrator")
    except metadata.PackageNotFoundError:
        return "unknown"


class ProcessGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
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

    def bind(
        self,
        *,
        actors: Callable[[], float],
        mailbox_depth: Callable[[], float],
        jobs_running: Callable[[], float],
        listener_connected: Callable[[], float],
        db_pool_in_use: Callable[[], float],
        capacity_waiting: Callable[[], float] = lambda: 0.0,
        capacity_limit: Callable[[], float] = lambda: 0.0,
        loop_lag: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.actors_active.set_function(actors)
        self.mailbox_depth.set_function(mailbox_depth)
        self.jobs_running.set_function(jobs_running)
        self.listener_connected.set_function(listener_connected)
        self.db_pool_in_use.set_function(db_pool_in_use)
        self.capacity_waiting.set_function(capacity_waiting)
        self.capacity_limit.set_function(capacity_limit)
        self.loop_lag.set_function(loop_lag)
