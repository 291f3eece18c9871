"""Where the actors report a job's trace: one `job` span per run of a job, with children.

The actors see only these protocols; `orchestrator.tracing` implements them over
OpenTelemetry, and the composition root hands it out only when tracing is on.
Off, `NullTracing` hands out shared objects whose every method does nothing, so a
job pays a few no-op calls and nothing is imported.

Attributes are ids, counts, codes and credits; never a prompt, params or a
provider's free text (callers pass only bounded values and `safe_summary` text).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Final, Protocol, Self

from ._lifecycle import Job

AttributeValue = str | bool | int | float
Attributes = Mapping[str, AttributeValue]


class Span(Protocol):
    """One phase's span; a context manager that ends it (an escaping exception noted by type)."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def set(self, attributes: Attributes) -> None: ...

    def event(self, name: str, attributes: Attributes | None = None) -> None: ...


class JobTrace(Protocol):
    """A job's `job` span in this process, ended once by `end`."""

    @property
    def traceparent(self) -> str | None:
        """The W3C trace context of the `job` span; None when not tracing."""
        ...

    def span(self, name: str, attributes: Attributes | None = None) -> Span:
        """A child of the `job` span, started now."""
        ...

    def set(self, attributes: Attributes) -> None: ...

    def end(self) -> None: ...


class JobTracing(Protocol):
    """Starts each job's trace: a child of `job.traceparent` when it has one, else a root."""

    def job_trace(self, job: Job, *, resumed: bool = False) -> JobTrace: ...


class _NullSpan:
    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def set(self, attributes: Attributes) -> None:
        pass

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        pass


NULL_SPAN: Final = _NullSpan()


class _NullTrace:
    __slots__ = ()

    @property
    def traceparent(self) -> str | None:
        return None

    def span(self, name: str, attributes: Attributes | None = None) -> _NullSpan:  # noqa: ARG002
        return NULL_SPAN

    def set(self, attributes: Attributes) -> None:
        pass

    def end(self) -> None:
        pass


NULL_TRACE: Final = _NullTrace()


class NullTracing:
    """Tracing off: one shared no-op trace for every job."""

    __slots__ = ()

    def job_trace(self, job: Job, *, resumed: bool = False) -> _NullTrace:  # noqa: ARG002
        return NULL_TRACE
