"""What the actors need from the world, as interfaces.

The actors never import a concrete adapter: the composition root hands them
the Postgres store and the Replicate provider, and the tests hand them the
in-memory twin (`orchestrator.db.testing.InMemoryStore`) and a fake provider.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

from ._exceptions import ExpectedFault
from ._images import ImageInput, PrivateInput
from ._lifecycle import (
    Admission,
    AdmissionContext,
    ErrorCode,
    Fence,
    Finish,
    InFlight,
    JobStatus,
    StoredOutput,
    UpstreamRef,
)
from ._provider import Prediction
from ._slots import ALL_SLOTS


class JobStore(Protocol):
    """The job transitions the actors perform, each one atomic in the store.

    Every write takes the `fence` of the job's partition slot and raises
    `FencedOff` when the store no longer honours it.
    """

    async def admission_context(self, job_id: uuid.UUID) -> AdmissionContext | None: ...

    async def admit(
        self,
        job_id: uuid.UUID,
        *,
        deadline_s: float,
        fence: Fence | None = None,
    ) -> Admission: ...

    async def reject(
        self, job_id: uuid.UUID, code: ErrorCode, message: str, *, fence: Fence | None = None
    ) -> bool: ...

    async def mark_processing(
        self,
        job_id: uuid.UUID,
        *,
        provider: str,
        prediction_id: str,
        idx: int = 0,
        fence: Fence | None = None,
    ) -> bool: ...

    async def finish(
        self,
        job_id: uuid.UUID,
        status: JobStatus,
        *,
        code: ErrorCode | None = None,
        message: str | None = None,
        outputs: tuple[StoredOutput, ...] = (),
        fence: Fence | None = None,
    ) -> Finish: ...

    async def in_flight_job(self, job_id: uuid.UUID) -> InFlight | None: ...

    async def note_traceparent(
        self, job_id: uuid.UUID, traceparent: str, *, fence: Fence | None = None
    ) -> bool:
        """Keep the job's trace context unless it has one; True when stored."""
        ...

    async def note_upstream(
        self, ref: UpstreamRef, *, status: str | None, cancel_sent: bool = False
    ) -> str | None: ...


class Observer(Protocol):
    """Where the actors report what happened, for metrics; `orchestrator.metrics` implements it."""

    def job_admitted(self, cost: int, intake_lag_s: float | None, *, priority: int = 1) -> None: ...

    def job_rejected(self, code: ErrorCode, intake_lag_s: float | None) -> None: ...

    def job_finished(
        self,
        status: JobStatus,
        code: ErrorCode | None,
        *,
        refunded: int,
        provider_s: float,
        total_s: float | None,
        polls: int,
    ) -> None: ...

    def provider_request(self, operation: str, outcome: str) -> None: ...

    def settle_retried(self) -> None: ...

    def prediction_retried(self, reason: str, outcome: str) -> None:
        """An output's failed attempt: ``outcome`` is retried, exhausted or out_of_time."""
        ...

    def write_fenced(self, write: str) -> None: ...


class NullObserver:
    """Counts nothing; the default when no metrics are wanted (most tests)."""

    def job_admitted(self, cost: int, intake_lag_s: float | None, *, priority: int = 1) -> None:
        pass

    def job_rejected(self, code: ErrorCode, intake_lag_s: float | None) -> None:
        pass

    def job_finished(
        self,
        status: JobStatus,
        code: ErrorCode | None,
        *,
        refunded: int,
        provider_s: float,
        total_s: float | None,
        polls: int,
    ) -> None:
        pass

    def provider_request(self, operation: str, outcome: str) -> None:
        pass

    def settle_retried(self) -> None:
        pass

    def prediction_retried(self, reason: str, outcome: str) -> None:
        pass

    def write_fenced(self, write: str) -> None:
        pass


class Slots(Protocol):
    """Which partition slots this daemon owns now, and the fence each write carries."""

    @property
    def slots(self) -> Sequence[int]: ...

    def owns(self, slot: int) -> bool: ...

    def fence(self, slot: int) -> Fence | None: ...


class RunningJobs(Protocol):
    """What an edge (a webhook) may ask of the jobs this daemon runs, by message only."""

    @property
    def slots(self) -> Slots: ...

    def poke(
        self, user_id: str, job_id: uuid.UUID, prediction: Prediction | None = None
    ) -> bool: ...

    def resume(self, user_id: str, job_id: uuid.UUID, *, slot: int) -> bool: ...


class EverySlot:
    """One daemon owning everything, unfenced: the in-memory tests and single-owner tools."""

    @property
    def slots(self) -> Sequence[int]:
        return ALL_SLOTS

    def owns(self, slot: int) -> bool:  # noqa: ARG002  (every slot is ours)
        return True

    def fence(self, slot: int) -> Fence | None:  # noqa: ARG002  (nothing is fenced)
        return None


class OutputUnavailable(Exception):
    """An output could not be fetched or stored; the message is safe to show the user."""


class OutputStore(Protocol):
    """Where a delivered output's bytes go (download, checks, storage)."""

    async def store(self, job_id: uuid.UUID, idx: int, url: str) -> StoredOutput:
        """Fetch and keep one output.

        Raises:
            OutputUnavailable: refused (host, type, size) or failed (timeouts, errors).
        """
        ...


class UrlOnlyOutputs:
    """Keeps only the provider's URL: for tests and deployments without storage."""

    async def store(self, job_id: uuid.UUID, idx: int, url: str) -> StoredOutput:
        del job_id
        return StoredOutput(idx=idx, url=url)


class InputsUnavailable(ExpectedFault):
    """The input store could not be asked (an outage): the job waits, queued, uncharged."""


class InputImages(Protocol):
    """A job's input images: checked before its debit, made fetchable at each create."""

    async def problem(self, inputs: Sequence[ImageInput]) -> str | None:
        """Why the inputs cannot be used (missing, not an image, too large), or None.

        Raises:
            InputsUnavailable: the store did not answer; nothing was decided.
        """
        ...

    async def for_provider(self, inputs: Sequence[ImageInput]) -> tuple[str, ...]:
        """A URL per input that the provider can fetch it from, for a few minutes only."""
        ...


class PassThroughInputs:
    """Checks nothing and hands keys and URLs on as they are: tests without storage."""

    async def problem(self, inputs: Sequence[ImageInput]) -> str | None:
        del inputs
        return None

    async def for_provider(self, inputs: Sequence[ImageInput]) -> tuple[str, ...]:
        return tuple(
            entry.key if isinstance(entry, PrivateInput) else entry.url for entry in inputs
        )
