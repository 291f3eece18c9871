"""The README's submitter snippet runs as written, as a `submitter` login, against a daemon."""

from __future__ import annotations

import re
import secrets
import sys
from pathlib import Path

import pytest
import trio

from orchestrator.db import Database

from . import pg
from .e2e import settings_for, start_daemon, start_simulator

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    section = README.read_text(encoding="utf-8").split("## For submitters", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the submitter section has no python block"
    return match.group(1)


@pytest.fixture
async def submitter_url(db_url: str):
    """A login role granted `submitter` (roles are cluster-wide: a fresh one, dropped after)."""
    name = f"app_{secrets.token_hex(4)}"
    password = secrets.token_hex(12)
    await pg.execute(db_url, f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE submitter")
    try:
        yield pg.as_login(db_url, name, password)
    finally:
        await pg.execute(db_url, f"DROP ROLE IF EXISTS {name}")


async def test_the_readme_snippet_hears_its_jobs_ending_and_prints_its_outputs(
    nursery, db: Database, db_url: str, submitter_url: str, tmp_path
):
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("alice", 5, plan="pro")
    script = tmp_path / "snippet.py"
    script.write_text(_snippet() + "\nimport sys\nasyncio.run(main(sys.argv[1]))\n")
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, str(script), submitter_url],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    line = done.stdout.decode().strip()
    assert line.startswith("succeeded ")
    assert line.count("'public_url': 'http") == 2
    assert line.count("'sha256': '") == 2
