"""How a simulated provider misbehaves; one frozen value, validated up front."""

from __future__ import annotations

import binascii
import math
from typing import Literal

import attrs
from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError


def _latency_range(
    _instance: object, _attribute: attrs.Attribute[tuple[float, float]], value: tuple[float, float]
) -> None:
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
        raise ValueError(f"latency must be (low, high) with 0 <= low <= high, got {value!r}")


def _as_range(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    return (float(low), float(high))


def _webhook_secret(
    _instance: object, _attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    """Fail at construction, not at the first delivery, and never echo the secret."""
    if value is None:
        return
    if not value.startswith("whsec_"):
        raise ValueError("webhook_secret must look like 'whsec_<base64>'")
    try:
        Webhook(value)
    except (binascii.Error, EmptyWebhookSecretError, ValueError):
        raise ValueError("webhook_secret must look like 'whsec_<base64>'") from None


def _rate(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within [0, 1], got {value!r}")


@attrs.frozen
class SimulatorConfig:
    """Knobs for the simulated provider; every rate is a probability in [0, 1].

    Args:
        latency: A prediction finishes this many seconds after creation, drawn uniformly.
        failure_rate: Share of predictions that end ``failed``.
        hang_rate: Share of predictions that stay ``processing`` until cancelled.
        rate_limit_rate: Share of API requests answered 429 with ``Retry-After``.
        server_error_rate: Share of API requests answered 500 or 503, doing nothing.
        malformed_rate: Share of API requests that do their work but answer 200 with a body
            that is not a prediction (the nasty case: the caller cannot know what happened).
        seed: Seeds the one random generator behind every draw; ``None`` for fresh entropy.
        token: When set, API requests must carry ``Authorization: Bearer <token>``.
        retry_after: Seconds sent in ``Retry-After`` with each 429.
        page_size: Predictions per page of ``GET /v1/predictions``.
        api: Which provider's HTTP API to speak; the other one's routes answer 404.
        webhook_secret: A Standard Webhooks secret (``whsec_<base64>``) to sign deliveries
            with; ``None`` sends them unsigned.
        webhook_duplicate_rate: Share of final events delivered twice with the same
            ``webhook-id``, as providers do when an acknowledgement gets lost.
        webhook_reorder_rate: Share of predictions that, after their final event, also get a
            stale ``processing`` event (new ``webhook-id``, older timestamp).
        webhook_failure_rate: Share of delivery attempts dropped; each message is retried up
            to three times with a short backoff.
        webhook_delay: Seconds between an event and its first delivery attempt.
        input_fetch_timeout: Seconds allowed to fetch one ``image_input`` URL, from connect
            to last byte; an input that takes longer fails its prediction.
    """

    latency: tuple[float, float] = attrs.field(
        default=(0.05, 0.2),
        converter=_as_range,
        validator=_latency_range,
    )
    failure_rate: float = attrs.field(default=0.0, validator=_rate)
    hang_rate: float = attrs.field(default=0.0, validator=_rate)
    rate_limit_rate: float = attrs.field(default=0.0, validator=_rate)
    server_error_rate: float = attrs.field(default=0.0, validator=_rate)
    malformed_rate: float = attrs.field(default=0.0, validator=_rate)
    seed: int | None = None
    token: str | None = attrs.field(default=None, repr=False)
    retry_after: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))
    page_size: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    api: Literal["replicate", "kie"] = attrs.field(
        default="replicate", validator=attrs.validators.in_(("replicate", "kie"))
    )
    webhook_secret: str | None = attrs.field(default=None, repr=False, validator=_webhook_secret)
    webhook_duplicate_rate: float = attrs.field(default=0.0, validator=_rate)
    webhook_reorder_rate: float = attrs.field(default=0.0, validator=_rate)
    webhook_failure_rate: float = attrs.field(default=0.0, validator=_rate)
    webhook_delay: float = attrs.field(
        default=0.0, validator=[attrs.validators.ge(0.0), attrs.validators.lt(math.inf)]
    )
    input_fetch_timeout: float = attrs.field(
        default=5.0, validator=[attrs.validators.gt(0.0), attrs.validators.lt(math.inf)]
    )
