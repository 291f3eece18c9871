"""What an actor and its job tasks work with, built once by the registry and never changed."""

from __future__ import annotations

import attrs

from orchestrator.core import (
    InputImages,
    JobStore,
    JobTracing,
    NullTracing,
    Observer,
    OutputStore,
    PassThroughInputs,
    Provider,
)

from ._capacity import Capacity
from ._config import ActorConfig
from ._routes import Routes
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
    # Every provider behind its breaker; None: `provider` alone, with no breaker.
    routes: Routes | None = None
    # A job's private input images: checked before the debit, presigned at each create.
    inputs: InputImages = attrs.field(factory=PassThroughInputs)

    def on(self, name: str) -> Deps:
        """These deps for a job that runs on provider `name` (the default one, or the fallback)."""
        routes = self.routes
        if routes is None or name == routes.primary:
            return self
        return attrs.evolve(
            self,
            provider=routes.providers[name],
            config=attrs.evolve(
                self.config, provider_name=name, webhook_url=routes.webhook_urls.get(name)
            ),
            # The listing watch reads the default provider's listing only.
            watch=None,
        )
