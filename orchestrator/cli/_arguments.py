"""Argument types: each refuses bad input with a message, before any database is opened."""

from __future__ import annotations

import argparse
import json
import re
import uuid
from pathlib import Path
from typing import Final

from orchestrator.core import MAX_OUTPUTS


def job_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (a UUID)") from None


_WHOLE: Final = re.compile(r"[+-]?[0-9]+")
_MAX_WHOLE: Final = 2**63 - 1  # a bigint, as the ledger stores it
_USER_ID: Final = re.compile(r"[A-Za-z0-9._@:+-]{1,128}")  # the rule jobs.user_id is held to


def whole(text: str, what: str) -> int:
    """ASCII digits only: ``int()`` also reads Arabic-Indic, fullwidth and ``1_000``."""
    if _WHOLE.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number of {what}")
    if len(text.lstrip("+-")) > len(str(_MAX_WHOLE)) or abs(int(text)) > _MAX_WHOLE:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is too large a number of {what}")
    return int(text)


def credit_count(text: str) -> int:
    value = whole(text, "credits")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"credits must be positive, got {value}")
    return value


def adjustment(text: str) -> int:
    value = whole(text, "credits")
    if value == 0:
        raise argparse.ArgumentTypeError("an adjustment must not be zero")
    return value


def output_count(text: str) -> int:
    try:
        value = whole(text, "outputs")
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of outputs") from None
    if not 1 <= value <= MAX_OUTPUTS:
        raise argparse.ArgumentTypeError(f"outputs must be 1 to {MAX_OUTPUTS}, got {value}")
    return value


def new_user_id(text: str) -> str:
    """A grant creates the account: refuse an id no job could ever be submitted for."""
    if _USER_ID.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(
            "a user id must be 1 to 128 characters of A-Z a-z 0-9 . _ @ : + -"
        )
    return text


def audit_note(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the note must say why, for the audit trail")
    return text


def positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def seq(text: str) -> int:
    """A position in the event feed: 0 (before the first) or above."""
    value = whole(text, "events")
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seq is 0 or more, got {value}")
    return value


def positive_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not 0 < value <= 24 * 365:
        raise argparse.ArgumentTypeError(f"hours must be in (0, 8760], got {text}")
    return value


def json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--params is not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError):  # a number too long or nesting too deep for Python
        raise argparse.ArgumentTypeError("--params cannot be read: too deep or too long") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--params must be a JSON object")
    return value


def jobs_file(text: str) -> str:
    """A readable file of JSON lines, or '-' for standard input; opened only by the command."""
    if text != "-" and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a readable file")
    return text


def readable_file(text: str) -> Path:
    """A regular file that exists; read by the command itself."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a readable file")
    return path
