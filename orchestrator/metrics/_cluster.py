"""Partitions: lease rounds, slots moved and lost, hand-overs, fenced writes.

Implements `leases.LeaseObserver`; the fenced-writes counter is shared with
every subsystem that writes under a lease.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import _buckets


class ClusterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
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
            buckets=_buckets.LEASE_ROUND,
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
            buckets=_buckets.HANDOVER,
            registry=r,
        )

    def round_took(self, seconds: float) -> None:
        self.lease_round_seconds.observe(seconds)

    def slots_taken(self, count: int) -> None:
        self.slots_moved.labels(direction="taken").inc(count)

    def slots_given_up(self, count: int) -> None:
        self.slots_moved.labels(direction="given_up").inc(count)

    def slots_lost(self, count: int) -> None:
        self.leases_lost.inc(count)

    def handed_over(self, seconds: float) -> None:
        self.handover_seconds.observe(seconds)
