"""Database errors, mapped once from asyncpg at the bridge.

    DbError
     ├── DbUnavailable          the server cannot be reached or went away
     ├── RoleUnavailable        the login may not act as its least-privilege role
     ├── SchemaNotCurrent       the schema is behind and this login may not migrate
     ├── PermissionDenied       the role may not do that (42501): least privilege held
     ├── UnknownUser            no account with that user id (SQLSTATE OR001)
     ├── UnknownJob             no job with that id (OR002)
     ├── IdempotencyConflict    a key reused for a different request (OR003)
     ├── InvalidRequest         an argument the database refuses (OR004, 22xxx)
     ├── Fenced                 the partition lease the write carried is not
     │                          held any more (OR008): drop the job, settle nothing
     ├── EventsPruned           the feed no longer holds events after that seq
     │                          (OR009): catch up from the jobs, then resume
     └── IntegrityViolation     a guard of the money invariants fired
                                (OR005-OR007, 23xxx): a bug or an attack,
                                never a normal outcome

Callers catch a branch or a leaf; nothing above `orchestrator.db` sees asyncpg.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from orchestrator.core import ExpectedFault, FencedOff


class DbError(Exception):
    """Something the database refused or could not do."""


class DbUnavailable(DbError, ExpectedFault):
    """The server went away or refused service for now; retrying later works."""


class RoleUnavailable(DbError):
    """The login may not act as the role it should drop to: not a member, or not migrated."""


class SchemaNotCurrent(DbError):
    """The schema is behind the code and this login may not migrate it."""


class PermissionDenied(DbError):
    """The connection's role lacks the privilege; for the daemon's role, a bug to report."""


class UnknownUser(DbError):
    pass


class UnknownJob(DbError):
    pass


class IdempotencyConflict(DbError):
    pass


class InvalidRequest(DbError):
    pass


class IntegrityViolation(DbError):
    pass


class EventsPruned(DbError):
    """Events after the reader's seq are past the retention: it must catch up from the jobs."""


class Fenced(DbError, FencedOff):
    """The write carried a lease epoch that is no longer the slot's live one."""


_BY_SQLSTATE: Final[dict[str, type[DbError]]] = {
    "42501": PermissionDenied,
    "OR001": UnknownUser,
    "OR002": UnknownJob,
    "OR003": IdempotencyConflict,
    "OR004": InvalidRequest,
    "OR005": IntegrityViolation,
    "OR006": IntegrityViolation,
    "OR007": IntegrityViolation,
    "OR008": Fenced,
    "OR009": EventsPruned,
}

_BY_CLASS: Final[dict[str, type[DbError]]] = {
    "08": DbUnavailable,  # connection exception
    "22": InvalidRequest,  # data exception: bad uuid, out of range, ...
    "23": IntegrityViolation,  # integrity constraint violation
    "53": DbUnavailable,  # insufficient resources
    "57": DbUnavailable,  # operator intervention: shutdown, cancel
}


def map_error(exc: BaseException) -> DbError | None:
    """The DbError for a driver exception, or None when it is not a database error."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        kind = _BY_SQLSTATE.get(sqlstate) or _BY_CLASS.get(sqlstate[:2], DbError)
        return kind(_message(exc))
    if isinstance(
        exc,
        asyncpg.InterfaceError | OSError | ConnectionError | TimeoutError,
    ):
        return DbUnavailable(f"database unavailable: {type(exc).__name__}: {exc}")
    return None


def error_name(sqlstate: str) -> str:
    """The name of the `DbError` a SQLSTATE maps to, for errors reported as values."""
    kind = _BY_SQLSTATE.get(sqlstate) or _BY_CLASS.get(sqlstate[:2], DbError)
    return kind.__name__


def _message(exc: asyncpg.PostgresError) -> str:
    message = str(getattr(exc, "message", None) or exc)
    hint = getattr(exc, "hint", None)
    return f"{message} ({hint})" if hint else message
