"""Job traces end to end: a real daemon, real Postgres, the simulator over loopback.

Each test has a private TracerProvider with an in-memory exporter (no global
provider is ever set), hands its tracer to the daemon, and reads the span tree.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence

import asyncpg
import pytest
import structlog
import structlog.testing
import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from orchestrator import tracing
from orchestrator.core import ErrorCode, JobStatus
from orchestrator.daemon import Daemon, serve
from orchestrator.db import Database
from orchestrator.settings import Settings

from . import pg
from .e2e import settings_for, start_simulator, wait_status, wait_terminal
from .test_webhooks import SECRET, free_port

PROMPT = "a lighthouse drawn in violet ink, secret-prompt-7f3a"
USER = "trace.user-91c2"
CHILDREN = {"admission", "prediction.create", "prediction.wait", "output.download", "job.finish"}


@pytest.fixture
def traces() -> Iterator[tuple[InMemorySpanExporter, tracing.OtelTracing]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter, tracing.OtelTracing.of(provider)
    provider.shutdown()


async def _daemon(nursery: trio.Nursery, settings: Settings, traced: tracing.OtelTracing) -> Daemon:
    assert settings.database_url is not None
    daemon: Daemon = await nursery.start(
        functools.partial(
            serve, settings, settings.database_url, handle_signals=False, tracing=traced
        )
    )
    return daemon


async def _job_spans(
    exporter: InMemorySpanExporter, job_id: uuid.UUID, count: int = 1
) -> list[ReadableSpan]:
    """The job's ended `job` spans, once `count` of them have ended."""
    with trio.fail_after(5):
        while True:
            found = [
                s
                for s in exporter.get_finished_spans()
                if s.name == "job" and s.attributes and s.attributes.get("job.id") == str(job_id)
            ]
            if len(found) >= count:
                return sorted(found, key=lambda s: s.start_time or 0)
            await trio.sleep(0.02)


def _children(exporter: InMemorySpanExporter, root: ReadableSpan) -> list[ReadableSpan]:
    assert root.context is not None
    return [
        s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == root.context.span_id
    ]


def _names(spans: Sequence[ReadableSpan]) -> list[str]:
    return sorted(s.name for s in spans)


def _everything_said(spans: Sequence[ReadableSpan]) -> str:
    """Every span's name, attributes and events, as one text to search for leaks."""
    said = []
    for span in spans:
        said.append(span.name)
        said.append(json.dumps(dict(span.attributes or {}), default=str))
        for event in span.events:
            said.append(event.name)
            said.append(json.dumps(dict(event.attributes or {}), default=str))
        said.append(span.status.description or "")
    return "\n".join(said)


def _traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


async def _check_predictions(
    db_url: str, job_id: uuid.UUID, by_name: dict[str, list[ReadableSpan]]
) -> None:
    """Each output's create and wait name the prediction the database recorded for it."""
    created = {c.attributes["output.idx"]: c.attributes for c in by_name["prediction.create"]}  # type: ignore[index]
    waited = {w.attributes["output.idx"]: w for w in by_name["prediction.wait"]}  # type: ignore[index]
    assert set(created) == set(waited) == {0, 1, 2}
    recorded = await pg.fetch(
        db_url,
        "SELECT idx, prediction_id FROM orchestrator.predictions WHERE job_id = $1",
        job_id,
    )
    for row in recorded:
        assert created[row["idx"]]["prediction.id"] == row["prediction_id"]
        assert created[row["idx"]]["provider"] == "replicate"
        assert created[row["idx"]]["outcome"] == "ok"
        wait = waited[row["idx"]]
        assert wait.attributes is not None
        assert wait.attributes["prediction.id"] == row["prediction_id"]
        assert wait.attributes["prediction.status"] == "succeeded"
        # Without webhooks, the listing sweep wakes each wait (or a safety-net poll ends it).
        assert {e.name for e in wait.events} & {"listing", "poll"}


async def test_a_three_output_job_is_one_trace_from_its_submitters_span_to_its_finish(
    nursery, db: Database, db_url: str, traces
):
    exporter, traced = traces
    provider = await start_simulator(nursery)
    await _daemon(nursery, settings_for(db_url, provider), traced)
    await db.grant(USER, 10, plan="pro")
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    job_id = await db.submit_job(
        USER,
        PROMPT,
        params={"seed": 3},
        num_outputs=3,
        traceparent=f"00-{trace_id}-{parent_id}-01",
    )
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    (root,) = await _job_spans(exporter, job_id)

    # The submitter's context is the root's parent: one trace from the click on.
    assert root.context is not None
    assert root.parent is not None
    assert f"{root.context.trace_id:032x}" == trace_id
    assert f"{root.parent.span_id:016x}" == parent_id
    attributes = dict(root.attributes or {})
    assert attributes["job.num_outputs"] == 3
    assert attributes["job.status"] == "succeeded"
    assert attributes["credits.cost"] == job.cost
    assert attributes["credits.refunded"] == 0
    assert attributes["job.resumed"] is False
    assert "error.code" not in attributes
    assert "job.left_in_flight" not in attributes

    children = _children(exporter, root)
    assert _names(children) == sorted(
        ["admission", "job.finish"]
        + ["prediction.create"] * 3
        + ["prediction.wait"] * 3
        + ["output.download"] * 3
    )
    assert all(
        c.context is not None and c.context.trace_id == root.context.trace_id for c in children
    )
    by_name: dict[str, list[ReadableSpan]] = {}
    for child in children:
        by_name.setdefault(child.name, []).append(child)
    (admission,) = by_name["admission"]
    (finish,) = by_name["job.finish"]
    await _check_predictions(db_url, job_id, by_name)
    assert all(d.attributes and d.attributes["output.stored"] for d in by_name["output.download"])
    # In order: admitted before anything was created, finished after everything was stored.
    assert admission.start_time is not None
    assert finish.start_time is not None
    assert all((c.start_time or 0) >= admission.start_time for c in children)
    assert all((d.end_time or 0) <= finish.start_time for d in by_name["output.download"])
    assert all(c.status.status_code is not StatusCode.ERROR for c in [root, *children])

    # Ids, codes and credits only: never the prompt, the params or the user id.
    said = _everything_said([root, *children])
    assert PROMPT not in said
    assert "lighthouse" not in said
    assert USER not in said
    assert '"seed"' not in said


async def test_a_timed_out_job_ends_its_trace_with_the_code_and_the_refund(
    nursery, db: Database, db_url: str, traces
):
    exporter, traced = traces
    provider = await start_simulator(nursery)
    await _daemon(nursery, settings_for(db_url, provider), traced)
    await db.grant(USER, 3, plan="pro")
    job_id = await db.submit_job(USER, PROMPT, params={"simulate": "hang"})
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.TIMED_OUT
    (root,) = await _job_spans(exporter, job_id)

    # No traceparent given: the root starts at admission, and is stored on the job.
    assert root.parent is None
    stored = await pg.fetch(
        db_url, "SELECT traceparent FROM orchestrator.jobs WHERE id = $1", job_id
    )
    assert stored[0]["traceparent"] == _traceparent_of(root)

    attributes = dict(root.attributes or {})
    assert attributes["job.status"] == "timed_out"
    assert attributes["error.code"] == ErrorCode.TIMEOUT.value
    assert attributes["credits.cost"] == job.cost
    assert attributes["credits.refunded"] == job.cost  # nothing delivered: all of it back
    assert root.status.status_code is StatusCode.ERROR
    assert not root.status.description

    children = _children(exporter, root)
    assert _names(children) == ["admission", "job.finish", "prediction.create", "prediction.wait"]
    (wait,) = [c for c in children if c.name == "prediction.wait"]
    assert wait.attributes is not None
    assert wait.attributes["interrupted"] == "Cancelled"  # cut by the deadline, not an error
    assert "prediction.status" not in wait.attributes
    assert wait.status.status_code is not StatusCode.ERROR
    said = _everything_said([root, *children])
    assert PROMPT not in said
    assert USER not in said
    assert "hang" not in said  # params never reach a span


async def test_a_resumed_job_continues_the_trace_its_first_daemon_started(
    nursery, db: Database, db_url: str, traces
):
    """A stop leaves the job in flight; the next daemon's `job` span is a child of the first."""
    exporter, traced = traces
    provider = await start_simulator(nursery)
    settings = settings_for(db_url, provider, job_deadline_s=30.0)
    first = await _daemon(nursery, settings, traced)
    await db.grant(USER, 5, plan="pro")
    job_id = await db.submit_job(USER, PROMPT, params={"simulate": "hang"})
    await wait_status(db, job_id, "processing")
    first.stop()
    (before,) = await _job_spans(exporter, job_id)
    assert (before.attributes or {})["job.left_in_flight"] is True

    second = await _daemon(nursery, settings, traced)
    with trio.fail_after(10):
        while second.registry.running_jobs == 0:
            await trio.sleep(0.05)
    assert await db.request_cancel(job_id)
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.CANCELED
    first_run, resumed = await _job_spans(exporter, job_id, count=2)
    assert first_run.context is not None
    assert resumed.context is not None
    assert resumed.parent is not None
    assert resumed.context.trace_id == first_run.context.trace_id
    assert resumed.parent.span_id == first_run.context.span_id
    attributes = dict(resumed.attributes or {})
    assert attributes["job.resumed"] is True
    assert attributes["job.status"] == "canceled"
    assert attributes["error.code"] == ErrorCode.CANCELED.value
    assert attributes["credits.refunded"] == job.cost
    # The resumed run re-attached to the recorded prediction: it waited, created nothing.
    assert _names(_children(exporter, resumed)) == ["job.finish", "prediction.wait"]


async def test_a_signed_webhook_that_ends_a_wait_is_an_event_of_that_wait(
    nursery, db: Database, db_url: str, traces
):
    exporter, traced = traces
    provider = await start_simulator(nursery, webhook_secret=SECRET)
    port = free_port()
    settings = settings_for(
        db_url,
        provider,
        http_port=port,
        public_url=f"http://127.0.0.1:{port}",
        webhook_secret=SECRET,
        webhook_poll_s=30.0,  # no safety-net poll within the test: only the webhook can end it
    )
    await _daemon(nursery, settings, traced)
    await db.grant(USER, 2, plan="pro")
    job_id = await db.submit_job(USER, PROMPT)
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    (root,) = await _job_spans(exporter, job_id)
    (wait,) = [c for c in _children(exporter, root) if c.name == "prediction.wait"]
    assert [e.name for e in wait.events] == ["webhook"]  # woken once, no poll needed
    assert (wait.attributes or {})["prediction.status"] == "succeeded"


async def test_a_job_refused_at_admission_is_a_trace_of_its_admission_alone(
    nursery, db: Database, db_url: str, traces
):
    exporter, traced = traces
    provider = await start_simulator(nursery)
    await _daemon(nursery, settings_for(db_url, provider), traced)
    await db.grant(USER, 1, plan="pro")
    job_id = await db.submit_job(USER, PROMPT, num_outputs=3)  # costs 3, the balance is 1
    (job,) = await wait_terminal(db, [job_id])
    assert job.error_code is ErrorCode.INSUFFICIENT_CREDITS
    (root,) = await _job_spans(exporter, job_id)
    attributes = dict(root.attributes or {})
    assert attributes["job.status"] == "rejected"
    assert attributes["error.code"] == "INSUFFICIENT_CREDITS"
    assert "credits.cost" not in attributes  # never charged
    assert _names(_children(exporter, root)) == ["admission"]


async def test_a_traceparent_must_be_a_w3c_trace_context(db: Database, db_url: str):
    await db.grant(USER, 1, plan="pro")
    bad = [
        "not a traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    ]
    for value in bad:
        with pytest.raises(asyncpg.PostgresError) as refused:
            await pg.fetch(
                db_url,
                "SELECT orchestrator.submit_job($1, 'p', '{}', 1, NULL, $2)",
                USER,
                value,
            )
        assert refused.value.sqlstate == "OR004"
        with pytest.raises(asyncpg.CheckViolationError):
            await pg.fetch(
                db_url,
                "INSERT INTO orchestrator.jobs (user_id, prompt, traceparent) VALUES ($1, 'p', $2)",
                USER,
                value,
            )
    # The short forms still resolve to the one function (no ambiguous overload).
    rows = await pg.fetch(db_url, "SELECT orchestrator.submit_job($1, 'short') AS id", USER)
    assert (await db.job(rows[0]["id"])).traceparent is None  # type: ignore[union-attr]


def test_with_tracing_off_nothing_of_opentelemetry_is_imported():
    """Off (the default), the daemon, the actors and a job's run import no OpenTelemetry."""
    code = """
import sys, trio
import actors, orchestrator.daemon as daemon
from orchestrator.core import Job, JobStatus, NullTracing
from orchestrator.settings import Settings
import uuid

async def main(settings):
    async with daemon.open_tracing(settings) as traces:
        trace = traces.job_trace(Job(uuid.uuid4(), "u", "p", {}, 1, JobStatus.QUEUED))
        with trace.span("admission", {"output.idx": 0}) as span:
            span.event("poll")
        trace.end()
        return type(traces).__name__

on = sys.argv[1] == "on"
name = trio.run(main, Settings(tracing=on, traces_exporter="console" if on else None))
print("RESULT", name, sorted(m for m in sys.modules if m.startswith("opentelemetry"))[:1])
"""
    off = subprocess.run(
        [sys.executable, "-c", code, "off"], capture_output=True, text=True, check=True
    )
    assert off.stdout.splitlines()[-1].split() == ["RESULT", "NullTracing", "[]"]
    # The same check sees the import when tracing is on.
    on = subprocess.run(
        [sys.executable, "-c", code, "on"], capture_output=True, text=True, check=True
    )
    assert on.stdout.splitlines()[-1].startswith("RESULT OtelTracing ['opentelemetry")


def test_settings_turn_tracing_on_by_either_variable_and_off_by_none():
    assert Settings().traces_to is None
    assert Settings(tracing=True).traces_to == "otlp"
    assert Settings(traces_exporter="console").traces_to == "console"
    assert Settings(tracing=True, traces_exporter="none").traces_to is None


def test_a_missing_otlp_exporter_warns_once_and_leaves_tracing_off(monkeypatch):
    monkeypatch.setattr(tracing, "_OTLP_MODULE", "opentelemetry.exporter.not_installed")
    with structlog.testing.capture_logs() as logs:
        assert tracing.provider_for("otlp") is None
    assert [(e["event"], e["log_level"]) for e in logs] == [("tracing.exporter_missing", "warning")]
