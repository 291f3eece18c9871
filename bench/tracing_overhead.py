"""What job tracing costs per job, off (the default) and on, in this process.

    uv run python bench/tracing_overhead.py [--jobs 20000] [--outputs 1]

Replays the tracing calls the actors make for one job (`UserActor._admit`,
`JobTask.run` and `_one_output`: the trace, `admission`, per output
`prediction.create`, `prediction.wait` with two poll events and a wake,
`output.download`, `job.finish`, the attribute sets, the end) against:

- `none`: the same loop with no tracing calls, the floor;
- `off`: `NullTracing`, what every daemon runs unless tracing is asked for;
- `on`: OpenTelemetry's SDK with a batch processor whose exporter drops the batch
  (what the daemon pays to build and queue spans, without the network).

Prints nanoseconds per job (median of three runs) and `off`'s cost above `none`.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from orchestrator.core import Job, JobStatus, JobTracing, NullTracing
from orchestrator.tracing import OtelTracing


class _Dropping(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:  # noqa: ARG002
        return SpanExportResult.SUCCESS


def _one_job(tracing: JobTracing, job: Job) -> None:
    trace = tracing.job_trace(job)
    with trace.span("admission"):
        trace.set({"credits.cost": job.num_outputs})
    for idx in range(job.num_outputs):
        with trace.span("prediction.create", {"output.idx": idx, "provider": "replicate"}) as span:
            span.set({"outcome": "ok", "prediction.id": "p"})
        with trace.span("prediction.wait", {"output.idx": idx, "prediction.id": "p"}) as span:
            span.event("poll", {"prediction.status": "processing"})
            span.event("webhook")
            span.event("poll", {"prediction.status": "succeeded"})
            span.set({"prediction.status": "succeeded"})
        with trace.span("output.download", {"output.idx": idx}) as span:
            span.set({"output.stored": True})
    with trace.span("job.finish"):
        trace.set({"job.status": "succeeded", "credits.refunded": 0})
    trace.end()


def _floor(job: Job) -> None:
    for _ in range(job.num_outputs):
        pass


def _ns_per_job(tracing: JobTracing | None, jobs: int, outputs: int) -> float:
    job = Job(uuid.uuid4(), "bench", "p", {}, outputs, JobStatus.QUEUED)
    runs = []
    for _ in range(3):
        started = time.perf_counter_ns()
        if tracing is None:
            for _ in range(jobs):
                _floor(job)
        else:
            for _ in range(jobs):
                _one_job(tracing, job)
        runs.append((time.perf_counter_ns() - started) / jobs)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--outputs", type=int, default=1)
    args = parser.parse_args()
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(_Dropping(), max_queue_size=1 << 16, max_export_batch_size=4096)
    )
    floor = _ns_per_job(None, args.jobs, args.outputs)
    off = _ns_per_job(NullTracing(), args.jobs, args.outputs)
    on = _ns_per_job(OtelTracing.of(provider), args.jobs // 10 or 1, args.outputs)
    provider.shutdown()
    print(f"jobs of {args.outputs} output(s), ns per job (median of 3 runs):")
    print(f"  none {floor:10.0f}")
    print(f"  off  {off:10.0f}   (+{off - floor:.0f} over none)")
    print(f"  on   {on:10.0f}   (+{on - floor:.0f} over none)")


if __name__ == "__main__":
    main()
