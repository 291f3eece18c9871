"""The actors' part of the settings, as one frozen value."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import attrs


def _no_webhook(_job_id: uuid.UUID, _idx: int) -> str | None:
    return None


@attrs.frozen(kw_only=True)
class ActorConfig:
    deadline_s: float = 120.0
    poll_initial_s: float = 0.5
    poll_multiplier: float = 1.6
    poll_max_s: float = 5.0
    cancel_timeout_s: float = 5.0
    settle_timeout_s: float = 10.0
    idle_s: float = 60.0
    mailbox_size: int = 256
    provider_name: str = "replicate"
    output_concurrency: int = 5
    allowed_params: frozenset[str] = frozenset()
    webhook_url: Callable[[uuid.UUID, int], str | None] = _no_webhook
