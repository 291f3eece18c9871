"""Configure structlog once: JSON lines in production, readable on a terminal.

Events are stable dotted names (`job.admitted`, `job.timed_out`) with their
data in keys; user, job and prediction ids arrive through context variables
bound by the actors. Prompts, tokens and signatures are never logged; the
`redact_secrets` processor is a last line of defence for keys that should
never have been passed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import asyncpg
import structlog

from orchestrator.core import clean_text, is_expected
from orchestrator.db import DbUnavailable, map_error

_SECRET_KEYS: Final = frozenset(
    {"prompt", "token", "authorization", "signature", "secret", "password", "api_key"}
)


def redact_secrets(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in _SECRET_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def expected_faults_on_one_line(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Turn a caught expected fault into one warning line; leave a bug's traceback.

    Call sites log every caught failure with ``exc_info``; this processor alone
    decides what deserves a traceback, so a Postgres restart costs one line per
    failure instead of thousands of tracebacks, and a real bug still shows its stack.
    """
    exc = _exception(event_dict.get("exc_info"))
    if exc is None or not (is_expected(exc) or _server_unavailable(exc)):
        return event_dict
    del event_dict["exc_info"]
    event_dict.setdefault("error", f"{type(exc).__name__}: {clean_text(str(exc), 300)}")
    if event_dict.get("level") in {"error", "critical", "exception"}:
        event_dict["level"] = "warning"
    return event_dict


def _exception(exc_info: object) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, tuple) and len(exc_info) == 3:  # noqa: PLR2004
        value = exc_info[1]
        return value if isinstance(value, BaseException) else None
    return None


class _OneLineForExpectedFaults(logging.Filter):
    """The same rule for libraries' stdlib logging (asyncpg's pool retrying a connection)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _caused_by_expected(exc):
            record.msg = (
                f"{record.getMessage()} ({type(exc).__name__}: {clean_text(str(exc), 300)})"
            )
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _caused_by_expected(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if is_expected(seen) or _server_unavailable(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _server_unavailable(exc: BaseException) -> bool:
    """A Postgres error a library logs raw that we map to DbUnavailable (57P03 at a restart)."""
    return isinstance(exc, asyncpg.PostgresError) and isinstance(map_error(exc), DbUnavailable)


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog (and stdlib logging beneath it) for the whole process.

    `fmt` is "json", "console", or "auto": console when the stream is a terminal.
    """
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            redact_secrets,
            expected_faults_on_one_line,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=out, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OneLineForExpectedFaults())
