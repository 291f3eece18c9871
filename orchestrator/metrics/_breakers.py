"""Provider breakers and failover: implements `actors.BreakerObserver`.

Labels are provider names (the configured ones: two at most today) and states.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from orchestrator.core import BreakerState


class BreakerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.state = Gauge(
            "orchestrator_provider_breaker_state",
            "Each provider's circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["provider"],
            registry=r,
        )
        self.transitions = Counter(
            "orchestrator_provider_breaker_transitions",
            "Breaker state changes, by provider and the state entered.",
            ["provider", "state"],
            registry=r,
        )
        self.held = Counter(
            "orchestrator_jobs_held",
            "Offers of a queued job left queued, uncharged, because its provider's breaker"
            " was open and no fallback admitted it.",
            ["provider"],
            registry=r,
        )
        self.failed_over = Counter(
            "orchestrator_jobs_failed_over",
            "Jobs admitted on the fallback because their provider's breaker was open.",
            ["provider", "fallback"],
            registry=r,
        )

    def known(self, providers: Iterable[str]) -> None:
        """Export every configured provider's gauge from the start, closed."""
        for provider in providers:
            self.state.labels(provider=provider).set(BreakerState.CLOSED)

    def breaker_changed(self, provider: str, state: BreakerState) -> None:
        self.state.labels(provider=provider).set(state)
        self.transitions.labels(provider=provider, state=state.name.lower()).inc()

    def job_held(self, provider: str) -> None:
        self.held.labels(provider=provider).inc()

    def job_failed_over(self, provider: str, fallback: str) -> None:
        self.failed_over.labels(provider=provider, fallback=fallback).inc()
