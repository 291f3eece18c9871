"""Bad argument vectors for the `orchestrator` command, run as users run it.

Every file in tests/corpus/cli/ is one argv (`{"$repeat": s, "times": n}` for long
arguments, `{"$concat": [...]}` to join them) and the exit code it must end with, plus
fragments its stderr must hold. Each runs as a subprocess against the test database
(non-UTF-8 bytes in argv arrive as surrogate escapes, as they would from a shell). It must
end with that code and one error line (argparse adds its usage line above), never a
traceback; afterwards no balance moved, no job was made and the audit is clean.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import trio

from orchestrator.db import Database

from . import pg
from .test_cli import run

CORPUS = Path(__file__).parent / "corpus" / "cli"


def _expand(value: Any) -> Any:
    if isinstance(value, dict):
        if "$repeat" in value:
            return value["$repeat"] * value["times"]
        if "$concat" in value:
            return "".join(_expand(part) for part in value["$concat"])
    return value


def _cases() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for path in sorted(CORPUS.glob("*.json")):
        raw = json.loads(path.read_text())
        assert set(raw) <= {"why", "argv", "exit", "stderr"}, path.name
        assert raw["why"], path.name
        raw["argv"] = [_expand(arg) for arg in raw["argv"]]
        cases.append((path.stem, raw))
    return cases


CASES = _cases()


def test_the_corpus_covers_every_ledger_and_job_command():
    assert len(CASES) >= 40
    commands = {case["argv"][0] for _, case in CASES if case["argv"]}
    assert {"grant", "adjust", "cancel", "submit", "accounts", "jobs", "status"} <= commands


async def _books(db_url: str) -> tuple[list[asyncpg.Record], ...]:
    return (
        await pg.fetch(db_url, "SELECT * FROM orchestrator.accounts ORDER BY user_id"),
        await pg.fetch(db_url, "SELECT count(*) AS n FROM orchestrator.ledger"),
        await pg.fetch(db_url, "SELECT count(*) AS n FROM orchestrator.jobs"),
    )


def _check(db_url: str, name: str, case: dict[str, Any]) -> str | None:
    result = run(db_url, *case["argv"], check=False)
    where = f"{name}: exit {result.returncode}, stderr {result.stderr[-500:]!r}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # argparse puts its usage (wrapped over lines) above the one error line.
    usage = [line for line in lines[:-1] if not line.startswith(("usage:", " "))]
    if case["exit"] == 0:
        problems = [result.returncode != 0 and "wrong exit code", lines and "a message"]
    else:
        problems = [
            result.returncode != case["exit"] and "wrong exit code",
            not lines and "no message",
            bool(usage) and "more than one error line",
            bool(lines) and "error:" not in lines[-1] and "the last line is not the error",
        ]
    problems += ["Traceback" in result.stderr and "a traceback"]
    problems += [frag not in result.stderr and f"no {frag!r}" for frag in case["stderr"]]
    found = [problem for problem in problems if problem]
    return f"{where}: {', '.join(found)}" if found else None


async def test_every_bad_argv_exits_with_its_code_in_one_line_and_moves_nothing(
    db: Database, db_url: str
):
    await db.grant("ann", 100, plan="pro")
    before = await _books(db_url)

    def check_all() -> list[str]:
        with ThreadPoolExecutor(8) as pool:
            outcomes = pool.map(lambda case: _check(db_url, *case), CASES)
            return [outcome for outcome in outcomes if outcome]

    failures = await trio.to_thread.run_sync(check_all)
    assert not failures, "\n".join(failures)
    assert await _books(db_url) == before
    assert (await db.audit()).ok
