"""OpenTelemetry traces of jobs, behind the core's `JobTracing` port.

Only the composition root imports this module, and only when tracing is on
(`ORCHESTRATOR_TRACING=on`, or `OTEL_TRACES_EXPORTER` naming an exporter): off,
the actors get `NullTracing` and OpenTelemetry is never imported.

One trace per job: a `job` span per run of the job in a daemon (a child of the
submitter's `traceparent`, or of the first run's `job` span, which the daemon
stores on the job at admission), with children `admission`, `prediction.create`,
`prediction.wait` (a `poll` event per poll, a `webhook` or `listing` event per
wake), `output.download` and `job.finish`. Spans carry ids, counts, codes and
credits only: an exception is noted by its type, never its message, and the
prompt, the params and the user id never reach a span (the job id leads to the
user for whoever may read the database).

The OTLP exporter (`pip install 'orchestrator[otlp]'`) is imported only when
asked for; it reads the standard `OTEL_EXPORTER_OTLP_*` variables itself, as
the SDK reads `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestrator.core import Attributes, Job, JobStatus

__all__ = ["EXPORTERS", "OtelJobTrace", "OtelSpan", "OtelTracing", "exporter_for", "provider_for"]

log = structlog.get_logger("orchestrator.tracing")

INSTRUMENTATION: Final = "orchestrator"
EXPORTERS: Final = ("otlp", "console", "none")
_OTLP_MODULE: Final = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_FAILED: Final = frozenset({JobStatus.FAILED.value, JobStatus.TIMED_OUT.value})


class OtelSpan:
    """One phase: ended on exit; an escaping exception is noted by its type only."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is not None:
            if issubclass(kind, Exception):
                # No message: a provider's or a database's text may quote user input.
                self._span.add_event("exception", {"exception.type": kind.__qualname__})
                self._span.set_status(Status(StatusCode.ERROR))
            else:
                # A cancellation (the deadline, a user's cancel, a shutdown) is no error.
                self._span.set_attribute("interrupted", kind.__qualname__)
        self._span.end()

    def set(self, attributes: Attributes) -> None:
        self._span.set_attributes(attributes)

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        self._span.add_event(name, attributes)


class OtelJobTrace:
    """A job's `job` span in this process; its children are started explicitly under it.

    No span is ever made current (no context is attached), so the Trio tasks of a job's
    outputs cannot mix each other's context up.
    """

    __slots__ = ("_context", "_ended", "_settled", "_span", "_tracer")

    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self._span = span
        self._context = trace.set_span_in_context(span, Context())
        self._ended = False
        self._settled = False

    @property
    def traceparent(self) -> str | None:
        context = self._span.get_span_context()
        if not context.is_valid:
            return None
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    def span(self, name: str, attributes: Attributes | None = None) -> OtelSpan:
        return OtelSpan(
            self._tracer.start_span(
                name,
                context=self._context,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )
        )

    def set(self, attributes: Attributes) -> None:
        self._span.set_attributes(attributes)
        status = attributes.get("job.status")
        if status is not None:
            self._settled = True
            if status in _FAILED:
                self._span.set_status(Status(StatusCode.ERROR))

    def end(self) -> None:
        """End the `job` span; one that saw no ending was left in flight for a resume."""
        if self._ended:
            return
        self._ended = True
        if not self._settled:
            self._span.set_attributes({"job.left_in_flight": True})
        self._span.end()


class OtelTracing:
    """`JobTracing` over an OpenTelemetry tracer (tests pass one of a private provider)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    @classmethod
    def of(cls, provider: trace.TracerProvider) -> OtelTracing:
        return cls(provider.get_tracer(INSTRUMENTATION))

    def job_trace(self, job: Job, *, resumed: bool = False) -> OtelJobTrace:
        parent = Context()
        if job.traceparent is not None:
            parent = _PROPAGATOR.extract({"traceparent": job.traceparent}, context=parent)
        span = self._tracer.start_span(
            "job",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "job.id": str(job.id),
                "job.num_outputs": job.num_outputs,
                "job.slot": job.slot,
                "job.resumed": resumed,
            },
            record_exception=False,
            set_status_on_exception=False,
        )
        return OtelJobTrace(self._tracer, span)


def exporter_for(name: str) -> SpanExporter | None:
    """The span exporter `OTEL_TRACES_EXPORTER` names; None for `none` or a missing package."""
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        return None
    try:
        module = importlib.import_module(_OTLP_MODULE)
    except ImportError:
        log.warning(
            "tracing.exporter_missing",
            exporter=name,
            note="install the `otlp` extra (opentelemetry-exporter-otlp-proto-http);"
            " tracing stays off",
        )
        return None
    exporter: SpanExporter = module.OTLPSpanExporter()
    return exporter


def provider_for(
    exporter_name: str, *, exporter: Callable[[str], SpanExporter | None] = exporter_for
) -> TracerProvider | None:
    """A tracer provider batching spans to the named exporter; None when nothing would export."""
    chosen = exporter(exporter_name)
    if chosen is None:
        return None
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": INSTRUMENTATION}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(chosen))
    log.info("tracing.on", exporter=exporter_name)
    return provider
