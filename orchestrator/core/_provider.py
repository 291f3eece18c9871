"""The provider-neutral vocabulary: what the daemon asks for and what it gets back.

Adapters translate between these values and one provider's wire format, so the actors and the
lifecycle never see a provider's JSON.
"""

from __future__ import annotations

import enum
import types
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Final, Protocol

import attrs

from ._lifecycle import MAX_OUTPUTS

RESERVED_INPUTS: Final = frozenset({"prompt", "num_outputs"})


class PredictionStatus(enum.StrEnum):
    """Replicate's prediction states; other providers' states are mapped onto these."""

    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        """Whether the prediction will never change again, so polling can stop."""
        return self not in {PredictionStatus.STARTING, PredictionStatus.PROCESSING}


@attrs.frozen
class Prediction:
    """One provider-side prediction as last observed.

    ``error`` has already been through the adapter's redaction, so it can be stored on the
    job and shown to the user as is. ``retryable`` is the adapter's reading of a failure:
    True when the provider says it was transient on its side (a fresh prediction may
    succeed), False when it is final (invalid input, a content refusal), None when it
    cannot tell; only True is retried, since every retry is paid for upstream.
    """

    id: str
    status: PredictionStatus
    output: tuple[str, ...] = ()
    error: str | None = None
    webhook: str | None = None
    retryable: bool | None = None


def _frozen_params(value: Mapping[str, object]) -> Mapping[str, object]:
    return types.MappingProxyType(dict(value))


def _no_reserved_keys(
    _instance: object,
    _attribute: attrs.Attribute[Mapping[str, object]],
    value: Mapping[str, object],
) -> None:
    clash = RESERVED_INPUTS.intersection(value)
    if clash:
        raise ValueError(f"params must not set {sorted(clash)}: they come from the job itself")


@attrs.frozen
class PredictionRequest:
    """What the daemon asks a provider to run for one job.

    ``params`` become extra model input; they may not override ``prompt`` or ``num_outputs``,
    which are what the user was charged for. ``output_index`` is which of the job's outputs
    this prediction makes; the adapter tags the webhook with it and the job id, so the
    prediction can be found again when its id was lost.
    """

    job_id: uuid.UUID
    prompt: str = attrs.field(repr=False)
    params: Mapping[str, object] = attrs.field(
        converter=_frozen_params, validator=_no_reserved_keys
    )
    num_outputs: int = attrs.field(
        validator=[attrs.validators.ge(1), attrs.validators.le(MAX_OUTPUTS)]
    )
    webhook_url: str | None = None
    output_index: int = attrs.field(
        default=0, validator=[attrs.validators.ge(0), attrs.validators.lt(MAX_OUTPUTS)]
    )


@attrs.frozen
class TaggedPrediction:
    """A prediction a provider listed, with the job and output it was submitted for."""

    job_id: uuid.UUID
    output_index: int
    prediction: Prediction


class Provider(Protocol):
    """What the daemon needs from an image-generation provider.

    Every method raises only `ProviderError` subclasses for provider-side trouble, and never
    retries on its own: the job task owns the deadline, so it owns the backoff too.
    """

    async def submit(self, request: PredictionRequest) -> Prediction:
        """Start a prediction for ``request.job_id``; not idempotent, see `find_for_job`."""
        ...

    async def get(self, prediction_id: str) -> Prediction:
        """Observe a prediction's current state."""
        ...

    async def cancel(self, prediction_id: str) -> None:
        """Stop paying for a prediction; a prediction that already finished is left alone."""
        ...

    def parse_webhook(self, body: bytes) -> Prediction:
        """Read the prediction out of a webhook body this provider sent.

        Pure parsing: the signature was checked before, and the caller treats the result as
        a hint to poll, never as the final word, since webhooks arrive duplicated and late.

        Raises:
            ProviderProtocolError: The body is not what this provider sends.
        """
        ...

    async def find_for_job(
        self, job_id: uuid.UUID, output_index: int = 0, *, since: datetime | None = None
    ) -> Prediction | None:
        """Find the prediction submitted for one output of a job whose id was never stored.

        Best effort: after a submit cut off by a deadline, a cancel or a crash, this is how
        the daemon re-attaches instead of paying twice, or cancels what nobody will use.
        With ``since`` (the job's admission) the search reaches back to that moment
        however many predictions were made after it, within a bound; without, it reads
        the newest pages only. ``None`` means "not found", not "never submitted".
        """
        ...

    async def list_page(
        self, cursor: str | None = None
    ) -> tuple[tuple[Prediction, ...], str | None]:
        """One page of the account's predictions, newest first, and the next cursor.

        One request instead of one poll per prediction: the daemon's listing watch reads
        it to see many predictions end at once. A provider without a listing returns an
        empty last page, and its predictions are polled one by one.
        """
        ...

    async def recent(self) -> tuple[TaggedPrediction, ...]:
        """The recent predictions the provider can list that carry a job tag, newest first.

        Reconciliation reads this to find predictions still running (and billing) for jobs
        that already ended. Empty for a provider without a listing.
        """
        ...
