"""schema.sql as a contract: idempotent, and refusing what must never happen."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import asyncpg
import pytest

from orchestrator.core import AdmissionOutcome, ErrorCode, JobStatus
from orchestrator.db import Database, schema_text
from orchestrator.db._queries import parse

from . import pg

ROOT = Path(__file__).resolve().parents[1]


async def test_migrating_twice_changes_nothing(db: Database, db_url: str):
    """schema.sql is idempotent: a second migrate keeps every row and object as it was."""
    await db.grant("alice", 5)
    await db.submit_job("alice", "a cat")
    snapshot_query = """
        SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'orchestrator') AS relations,
               (SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'orchestrator' AND NOT t.tgisinternal) AS triggers,
               (SELECT count(*) FROM orchestrator.plans) AS plans,
               (SELECT count(*) FROM orchestrator.jobs) AS jobs,
               (SELECT count(*) FROM orchestrator.ledger) AS ledger"""
    before = await pg.fetch(db_url, snapshot_query)
    await db.migrate()
    await db.migrate()
    after = await pg.fetch(db_url, snapshot_query)
    assert dict(before[0]) == dict(after[0])
    assert await db.schema_is_current()


async def test_a_database_without_the_stamp_is_not_current(db: Database, db_url: str):
    """Readiness can tell a stale schema from a current one."""
    await pg.execute(
        db_url, "UPDATE orchestrator.meta SET value = 'old' WHERE key = 'schema_sha256'"
    )
    assert not await db.schema_is_current()


async def test_error_codes_and_statuses_match_the_schema(db_url: str):
    """The Python enums and schema.sql's reference tables never drift apart."""
    codes = await pg.fetch(db_url, "SELECT code FROM orchestrator.error_codes")
    assert {r["code"] for r in codes} == {c.value for c in ErrorCode}
    statuses = await pg.fetch(
        db_url, "SELECT status, terminal, in_flight FROM orchestrator.job_statuses"
    )
    assert {r["status"]: (r["terminal"], r["in_flight"]) for r in statuses} == {
        s.value: (s.terminal, s.in_flight) for s in JobStatus
    }


async def test_an_output_past_num_outputs_is_refused(db: Database, db_url: str):
    """Seed 002: the database itself refuses over-delivery."""
    await db.grant("bob", 5)
    job_id = await db.submit_job("bob", "thirty photos", num_outputs=2)
    insert = "INSERT INTO orchestrator.outputs (job_id, idx, num_outputs) VALUES ($1, $2, $3)"
    await pg.execute(db_url, insert, job_id, 0, 2)
    await pg.execute(db_url, insert, job_id, 1, 2)
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute(db_url, insert, job_id, 2, 2)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pg.execute(db_url, insert, job_id, 2, 3)  # lying about num_outputs
    with pytest.raises(asyncpg.UniqueViolationError):
        await pg.execute(db_url, insert, job_id, 1, 2)  # the same index twice
    rows = await pg.fetch(
        db_url, "SELECT count(*) AS n FROM orchestrator.outputs WHERE job_id = $1", job_id
    )
    assert rows[0]["n"] == 2


async def test_a_jobs_submission_is_immutable(db: Database, db_url: str):
    """num_outputs cannot grow after submission, so outputs cannot be smuggled in."""
    await db.grant("carol", 5)
    job_id = await db.submit_job("carol", "one photo")
    with pytest.raises(asyncpg.PostgresError, match="immutable"):
        await pg.execute(
            db_url, "UPDATE orchestrator.jobs SET num_outputs = 30 WHERE id = $1", job_id
        )


async def test_a_terminal_job_stays_terminal(db: Database, db_url: str):
    """A finished job cannot be revived to run (and be paid for) again."""
    await db.grant("dave", 5)
    job_id = await db.submit_job("dave", "a dog")
    await pg.execute(
        db_url,
        "UPDATE orchestrator.jobs SET status = 'rejected', error_code = 'DUPLICATE' WHERE id = $1",
        job_id,
    )
    with pytest.raises(asyncpg.PostgresError, match="cannot become"):
        await pg.execute(
            db_url, "UPDATE orchestrator.jobs SET status = 'queued' WHERE id = $1", job_id
        )


async def test_in_flight_seats_cap_jobs_per_user_in_the_database(db: Database, db_url: str):
    """Two daemons cannot both take a user's last seat: the partial unique index refuses."""
    await db.grant("erin", 5)
    first = await db.submit_job("erin", "one")
    second = await db.submit_job("erin", "two")
    take_seat = "UPDATE orchestrator.jobs SET status = 'starting', inflight_seat = 1, cost = 1 WHERE id = $1"
    await pg.execute(db_url, take_seat, first)
    with pytest.raises(asyncpg.UniqueViolationError):
        await pg.execute(db_url, take_seat, second)
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute(
            db_url,
            "UPDATE orchestrator.jobs SET status = 'starting', cost = 1 WHERE id = $1",
            second,
        )


async def test_the_submitter_role_cannot_touch_money(db: Database, db_url: str):
    """Submitters may submit, cancel and read jobs; balances and the ledger are out of reach."""
    await db.grant("frank", 5)
    job_id = (
        await pg.fetch(db_url, "SELECT orchestrator.submit_job('frank', 'x')", role="submitter")
    )[0][0]
    assert isinstance(job_id, uuid.UUID)
    rows = await pg.fetch(
        db_url, "SELECT status FROM orchestrator.jobs WHERE id = $1", job_id, role="submitter"
    )
    assert rows[0]["status"] == "queued"
    assert (
        await pg.fetch(db_url, "SELECT orchestrator.request_cancel($1)", job_id, role="submitter")
    )[0][0]
    await pg.execute(
        db_url,
        "INSERT INTO orchestrator.jobs (user_id, prompt) VALUES ('frank', 'plain insert')",
        role="submitter",
    )
    refused = [
        "SELECT * FROM orchestrator.ledger",
        "SELECT * FROM orchestrator.accounts",
        "UPDATE orchestrator.accounts SET balance = 1000000 WHERE user_id = 'frank'",
        "INSERT INTO orchestrator.ledger (user_id, kind, amount, ref) VALUES ('frank', 'grant', 9, 'x')",
        "SELECT orchestrator.grant_credits('frank', 1000)",
        "UPDATE orchestrator.jobs SET status = 'succeeded'",
        "INSERT INTO orchestrator.jobs (user_id, prompt, status) VALUES ('frank', 'p', 'succeeded')",
    ]
    for statement in refused:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pg.execute(db_url, statement, role="submitter")
    account = await db.account("frank")
    assert account is not None
    assert account.balance == 5


def test_every_named_query_is_used_and_every_used_query_exists():
    """queries.sql holds no dead statement, and the code names no missing one."""
    defined = set(parse((ROOT / "orchestrator/db/queries.sql").read_text()))
    code = "\n".join(p.read_text() for p in (ROOT / "orchestrator").rglob("*.py"))
    used = set(re.findall(r'q(?:ueries\(\))?\["([a-z_]+)"\]', code))
    used |= set(re.findall(r'"(audit_[a-z_]+)": "', code))
    assert defined == used


def test_the_queries_parser_refuses_duplicates_and_empty_blocks():
    """A broken queries file fails loudly at load, not at first use."""
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(ValueError, match="no statement"):
        parse("-- name: a\n-- only a comment\n")
    assert parse("-- name: a\n-- says why\nSELECT 1;\n") == {"a": "SELECT 1;"}


def test_admission_outcomes_are_exactly_what_admit_job_v3_answers():
    """The enum the actors match on and the function's answers cannot drift apart."""
    schema = schema_text()
    start = schema.index("CREATE OR REPLACE FUNCTION orchestrator.admit_job_v3(")
    body = schema[start : schema.index("$$;", schema.index("AS $$", start))]
    answered = set(re.findall(r"SELECT '([a-z_]+)'::text", body))
    assert answered == {outcome.value for outcome in AdmissionOutcome}


def test_fragments_are_written_once_and_expanded_everywhere_they_are_used():
    """The job's column list lives in one fragment; no query keeps a `{{…}}` unexpanded."""
    text = (ROOT / "orchestrator/db/queries.sql").read_text()
    queries = parse(text)
    assert not any("{{" in sql for sql in queries.values())
    assert "j.finished_at, j.slot" in queries["admission_context"]
    assert "slot" in queries["get_job"]
    assert text.count("idempotency_key, prediction_id") == 1  # the fragment, nothing else
    parsed = parse("-- fragment: cols\na, b\n-- name: q\nSELECT {{t.cols}} FROM t;\n")
    assert parsed == {"q": "SELECT t.a, t.b FROM t;"}
    with pytest.raises(ValueError, match="not defined"):
        parse("-- name: q\nSELECT {{missing}};\n")


def _status_lists(sql: str) -> list[frozenset[str]]:
    """The members of every `status IN (...)` / `status NOT IN (...)` list in `sql`."""
    return [
        frozenset(re.findall(r"'([a-z_]+)'", inner))
        for inner in re.findall(r"\bstatus\s+(?:NOT\s+)?IN\s*\(([^)]*)\)", sql)
    ]


def test_every_job_status_set_in_the_sql_is_one_of_the_named_sets():
    """queries.sql names its sets; schema.sql (literals, for its indexes) must match one."""
    from orchestrator.db._statuses import STATUS_SETS, sql_list  # noqa: PLC0415

    named = {frozenset(s.value for s in members) for members in STATUS_SETS.values()}
    job_statuses = {s.value for s in JobStatus}
    prediction_only = {"aborted"}
    queries = parse((ROOT / "orchestrator/db/queries.sql").read_text())
    lists = _status_lists(schema_text()) + [
        found for sql in queries.values() for found in _status_lists(sql)
    ]
    job_lists = [found for found in lists if found <= job_statuses]
    assert len(job_lists) >= 20
    assert [found for found in job_lists if found not in named] == []
    assert any(found & prediction_only for found in lists)  # the upstream sets stay as they are
    assert sql_list("in_flight") == "'starting', 'processing'"
    assert "status IN ('starting', 'processing')" in queries["in_flight_jobs"]
    with pytest.raises(ValueError, match="status set 'nope'"):
        parse("-- name: q\nSELECT 1 WHERE status IN ({{statuses:nope}});\n")
