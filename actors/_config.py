"""The actors' part of the settings, as one frozen value."""

from __future__ import annotations

import attrs

from orchestrator.core import HostList


@attrs.frozen(kw_only=True)
class ActorConfig:
    deadline_s: float = 120.0
    poll_initial_s: float = 0.5
    poll_multiplier: float = 1.6
    poll_max_s: float = 5.0
    # With webhooks on, the interval of the safety-net poll.
    webhook_poll_s: float = 30.0
    cancel_timeout_s: float = 5.0
    # Extra predictions per output after a transient upstream failure (see _retry).
    prediction_retries: int = 2
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 10.0
    settle_timeout_s: float = 10.0
    idle_s: float = 60.0
    mailbox_size: int = 256
    provider_name: str = "replicate"
    output_concurrency: int = 5
    allowed_params: frozenset[str] = frozenset()
    # Where the provider calls back; the adapter tags it with the job and output.
    webhook_url: str | None = None
    # Where a job's image_input URLs may point, and where its callback_url may.
    input_hosts: HostList = attrs.field(factory=HostList)
    callback_hosts: HostList = attrs.field(factory=HostList)
