"""Every log event the code emits is listed in ops/LOG_EVENTS.md, and nothing more."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def _emitted() -> set[str]:
    """Event names passed as the first argument of `log.<level>(...)` in our packages."""
    names = set()
    for path in [*(ROOT / "orchestrator").rglob("*.py"), *(ROOT / "actors").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.add(node.args[0].value)
    return names


def _documented() -> set[str]:
    text = (ROOT / "ops" / "LOG_EVENTS.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", text, flags=re.MULTILINE))


def test_every_emitted_log_event_is_documented():
    assert sorted(_emitted() - _documented()) == []


def test_every_documented_log_event_is_still_emitted():
    assert sorted(_documented() - _emitted()) == []


def test_the_scan_finds_the_events_it_should():
    emitted = _emitted()
    assert {"job.admitted", "job.finished", "lease.lost", "webhook.rejected"} <= emitted
    assert len(emitted) > 50
