"""What an actor and its job tasks work with, built once by the registry and never changed."""

from __future__ import annotations

import attrs

from orchestrator.core import JobStore, JobTracing, NullTracing, Observer, OutputStore, Provider

from ._capacity import Capacity
from ._config import ActorConfig
from ._watch import ListingWatch


@attrs.frozen
class Deps:
    """The ports and the shared limits: one value instead of eight arguments everywhere."""

    store: JobStore
    provider: Provider
    config: ActorConfig
    observer: Observer
    outputs: OutputStore
    capacity: Capacity
    watch: ListingWatch | None = None
    # Off by default: shared no-op spans, and OpenTelemetry is never imported.
    tracing: JobTracing = attrs.field(factory=NullTracing)
