"""What the actors need from the world, as interfaces.

The actors never import a concrete adapter: the composition root hands them
the Postgres store and the Replicate provider, and the tests hand them the
in-memory twin (`orchestrator.db.testing.InMemoryStore`) and a fake provider.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from orchestrator.lifecycle import (
    Admission,
    AdmissionContext,
    ErrorCode,
    Finish,
    InFlight,
    JobStatus,
    StoredOutput,
    UpstreamRef,
)


class JobStore(Protocol):
    """The job transitions the actors perform, each one atomic in the store."""

    async def admission_context(self, job_id: uuid.UUID) -> AdmissionContext | None: ...

    async def admit(
        self,
        job_id: uuid.UUID,
        *,
        deadline_s: float,
        epoch: int | None = None,
    ) -> Admission: ...

    async def reject(self, job_id: uuid.UUID, code: ErrorCode, message: str) -> bool: ...

    async def mark_processing(
        self, job_id: uuid.UUID, *, provider: str, prediction_id: str, idx: int = 0
    ) -> bool: ...

    async def finish(
        self,
        job_id: uuid.UUID,
        status: JobStatus,
        *,
        code: ErrorCode | None = None,
        message: str | None = None,
        outputs: tuple[StoredOutput, ...] = (),
    ) -> Finish: ...

    async def in_flight_job(self, job_id: uuid.UUID) -> InFlight | None: ...

    async def note_upstream(
        self, ref: UpstreamRef, *, status: str | None, cancel_sent: bool = False
    ) -> str | None: ...


class Observer(Protocol):
    """Where the actors report what happened, for metrics; `orchestrator.metrics` implements it."""

    def job_admitted(self, cost: int, intake_lag_s: float | None) -> None: ...

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


class NullObserver:
    """Counts nothing; the default when no metrics are wanted (most tests)."""

    def job_admitted(self, cost: int, intake_lag_s: float | None) -> None:
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
        del job_id, idx
        return StoredOutput(url=url)
