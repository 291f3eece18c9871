"""Expected faults cost one warning line; bugs keep their traceback."""

from __future__ import annotations

import io
import json
import logging

import asyncpg
import structlog
import trio

from orchestrator import logs
from orchestrator.core import ProviderUnavailable
from orchestrator.db import DbUnavailable, IntegrityViolation, map_error


def _lines_logged_for(exc: BaseException) -> list[dict[str, object]]:
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    log = structlog.get_logger("test")

    def fail() -> None:
        raise exc

    try:
        fail()
    except BaseException:
        log.exception("job.settle_failed", job="j1")
    structlog.reset_defaults()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_postgres_restart_logs_one_warning_line_without_a_traceback():
    (line,) = _lines_logged_for(DbUnavailable("database unavailable: ConnectionResetError"))
    assert line["level"] == "warning"
    assert line["error"] == "DbUnavailable: database unavailable: ConnectionResetError"
    assert "exception" not in line
    assert line["job"] == "j1"


def test_provider_faults_timeouts_and_dropped_sockets_are_one_line_each():
    faults = [
        ProviderUnavailable("HTTP 503"),
        trio.TooSlowError(),
        ConnectionResetError("reset by peer"),
        ExceptionGroup("both", [ProviderUnavailable("HTTP 502"), OSError("gone")]),
    ]
    for fault in faults:
        (line,) = _lines_logged_for(fault)
        assert line["level"] == "warning", fault
        assert "exception" not in line, fault
        assert str(line["error"]).startswith(type(fault).__name__)


def test_a_bug_keeps_its_traceback_and_its_error_level():
    for bug in [KeyError("seat"), IntegrityViolation("refund exceeds debit")]:
        (line,) = _lines_logged_for(bug)
        assert line["level"] == "error"
        assert "Traceback" in str(line["exception"])
    (line,) = _lines_logged_for(ExceptionGroup("mixed", [OSError("gone"), KeyError("seat")]))
    assert "Traceback" in str(line["exception"])


def test_a_line_without_an_exception_passes_through_unchanged():
    event = {"event": "job.admitted", "level": "info", "exc_info": False}
    assert logs.expected_faults_on_one_line(None, "info", dict(event)) == event


async def test_asyncio_transport_errors_under_the_pool_log_one_warning_line(db):
    """A socket Postgres resets as it restarts is reported by asyncio itself, without a stack."""
    loop = db._connector._loop
    with structlog.testing.capture_logs() as logged:
        loop.call_exception_handler(
            {
                "message": "Fatal read error on socket transport",
                "exception": ConnectionResetError(104, "reset"),
            }
        )
    assert logged == [
        {
            "event": "db.loop_error",
            "log_level": "warning",
            "message": "Fatal read error on socket transport",
            "error": "ConnectionResetError: [Errno 104] reset",
        }
    ]


def _record(exc: BaseException, msg: str) -> logging.LogRecord:
    return logging.LogRecord(
        "asyncpg.pool", logging.WARNING, __file__, 1, msg, None, (type(exc), exc, None)
    )


def test_a_librarys_stdlib_warning_about_a_reset_connection_is_one_line():
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    handler = logging.getLogger().handlers[0]
    structlog.reset_defaults()
    closed = RuntimeError("connection was closed in the middle of operation")
    closed.__cause__ = ConnectionResetError(104, "reset by peer")

    handler.handle(_record(closed, "Failed to restore the pool"))
    handler.handle(_record(KeyError("seat"), "a bug"))

    first, second = stream.getvalue().split("\n", 1)
    assert first == (
        "WARNING:asyncpg.pool:Failed to restore the pool"
        " (RuntimeError: connection was closed in the middle of operation)"
    )
    assert second == "WARNING:asyncpg.pool:a bug\nKeyError: 'seat'\n"  # formatted, not flattened


def test_postgres_starting_up_logged_by_the_asyncpg_pool_is_one_warning_line():
    """57P03 while Postgres restarts: the pool's reconnect warning is one line, no traceback."""
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    handler = logging.getLogger().handlers[0]
    structlog.reset_defaults()
    starting = asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
    assert isinstance(map_error(starting), DbUnavailable)

    handler.handle(_record(starting, "Failed to reconnect"))

    assert stream.getvalue() == (
        "WARNING:asyncpg.pool:Failed to reconnect"
        " (CannotConnectNowError: the database system is starting up)\n"
    )


def test_postgres_starting_up_is_an_expected_fault_wrapped_or_raw():
    starting = asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
    for fault in (map_error(starting) or starting, starting):
        (line,) = _lines_logged_for(fault)
        assert line["level"] == "warning", fault
        assert "exception" not in line, fault
