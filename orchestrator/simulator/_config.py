"""How a simulated provider misbehaves; one frozen value, validated up front."""

from __future__ import annotations

import math

import attrs


def _latency_range(
    _instance: object, _attribute: attrs.Attribute[tuple[float, float]], value: tuple[float, float]
) -> None:
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
        raise ValueError(f"latency must be (low, high) with 0 <= low <= high, got {value!r}")


def _as_range(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    return (float(low), float(high))


def _rate(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within [0, 1], got {value!r}")


@attrs.frozen
class SimulatorConfig:
    """Knobs for the simulated Replicate; every rate is a probability in [0, 1].

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
