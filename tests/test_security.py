"""A hostile submitter cannot borrow the functions' owner's rights.

Postgres resolves an unqualified relation in `pg_temp` first unless the
search path names it, and every role may create temporary objects. So a
SECURITY DEFINER function that wrote `accounts` where it meant
`orchestrator.accounts` would read a submitter's temporary view instead, and
run the submitter's function inside it with the owner's rights.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import asyncpg
import pytest
import trio

from orchestrator.core import ErrorCode, JobStatus
from orchestrator.db import Database

from . import pg

# Every relation a definer function names, shadowed one at a time by a
# temporary view whose columns call `pg_temp.spy()`. The spy says who it ran as
# in a WARNING, which reaches the client even when the statement then fails,
# and tries to make the submitter a superuser.
_SHADOWED = ("accounts", "jobs", "ledger", "meta", "plans", "outputs", "predictions")

_SPY = """
CREATE FUNCTION pg_temp.spy() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RAISE WARNING 'spy ran as %', current_user;
    BEGIN
        EXECUTE 'ALTER ROLE submitter SUPERUSER';
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;
    END;
    RETURN 'mallory';
END
$$;
"""

_COLUMNS = {
    "id": "uuid",
    "job_id": "uuid",
    "user_id": "text",
    "status": "text",
    "kind": "text",
    "ref": "text",
    "key": "text",
    "value": "text",
    "name": "text",
    "prompt": "text",
    "idempotency_key": "text",
    "params": "jsonb",
    "balance": "bigint",
    "amount": "bigint",
    "cost": "bigint",
    "cost_per_output": "bigint",
    "num_outputs": "integer",
    "inflight_seat": "integer",
    "max_inflight": "integer",
    "cancel_requested_at": "timestamptz",
    "retry_of": "uuid",
    "fingerprint": "uuid",
}


def _shadow_view(name: str) -> str:
    columns = ", ".join(
        f"CAST(NULLIF(pg_temp.spy(), pg_temp.spy()) AS {kind}) AS {column}"
        for column, kind in _COLUMNS.items()
    )
    return f"CREATE TEMP VIEW {name} AS SELECT {columns}"


async def _attack(
    url: str, calls: list[tuple[str, tuple[object, ...]]], role: str = "submitter"
) -> list[str]:
    """Shadow each relation in its own session and make every call; return what the spy saw."""
    seen: list[str] = []
    for name in _SHADOWED:
        conn = await asyncpg.connect(url)
        conn.add_log_listener(
            lambda _conn, message, shadow=name: seen.append(f"{shadow}: {message.message}")
        )
        try:
            await conn.execute(f"SET ROLE {role}")
            await conn.execute(_SPY)
            await conn.execute(_shadow_view(name))
            for query, args in calls:
                # A refusal is fine; running as the owner is not.
                with contextlib.suppress(asyncpg.PostgresError):
                    await conn.fetch(query, *args)
        finally:
            await conn.close()
    return seen


async def _attack_in_thread(
    url: str, calls: list[tuple[str, tuple[object, ...]]], role: str = "submitter"
):
    return await trio.to_thread.run_sync(lambda: asyncio.run(_attack(url, calls, role)))


async def test_temporary_objects_never_run_inside_the_definer_functions(db: Database, db_url: str):
    await db.grant("mallory", 3)
    await db.grant("victim", 5)
    job_id = await db.submit_job("victim", "a quiet lake")
    calls: list[tuple[str, tuple[object, ...]]] = [
        ("SELECT orchestrator.submit_job('mallory', 'a cat')", ()),
        ("SELECT orchestrator.submit_job('mallory', 'a dog', '{}', 1, 'k1')", ()),
        ("SELECT orchestrator.submit_job('mallory', 'a dog', '{}', 1, 'k1')", ()),
        ("SELECT orchestrator.request_cancel($1)", (job_id,)),
        ("SELECT orchestrator.grant_credits('mallory', 1000000)", ()),
        (
            "SELECT * FROM orchestrator.submit_jobs($1::jsonb)",
            (
                (
                    '[{"user_id": "mallory", "prompt": "a cow"},'
                    ' {"user_id": "mallory", "prompt": "a dog", "idempotency_key": "k1"},'
                    ' {"user_id": "mallory", "prompt": "an elk", "idempotency_key": "k2"},'
                    ' {"user_id": "nobody", "prompt": "a gnu"}]'
                ),
            ),
        ),
    ]

    witnessed = await _attack_in_thread(db_url, calls)

    assert witnessed == []
    roles = await pg.fetch(db_url, "SELECT rolsuper FROM pg_roles WHERE rolname = 'submitter'")
    assert roles[0]["rolsuper"] is False
    books = await pg.fetch(
        db_url, "SELECT user_id, balance FROM orchestrator.accounts ORDER BY user_id"
    )
    assert [(r["user_id"], r["balance"]) for r in books] == [("mallory", 3), ("victim", 5)]
    ledger = await pg.fetch(db_url, "SELECT count(*) AS n FROM orchestrator.ledger")
    assert ledger[0]["n"] == 2
    # The real tables were used, not the shadows: every session's submissions
    # landed, and the idempotency key held across sessions.
    submitted = await pg.fetch(
        db_url,
        "SELECT prompt, count(*) AS n FROM orchestrator.jobs WHERE user_id = 'mallory'"
        " GROUP BY prompt ORDER BY prompt",
    )
    assert [(r["prompt"], r["n"]) for r in submitted] == [
        ("a cat", len(_SHADOWED)),
        ("a cow", len(_SHADOWED)),
        ("a dog", 1),
        ("an elk", 1),
    ]
    victim = await db.job(job_id)
    assert victim is not None
    assert victim.cancel_requested_at is not None


async def test_temporary_objects_never_run_inside_an_operators_retry(db: Database, db_url: str):
    """The operator's definer functions hold against the operator's own temporary objects."""
    await db.grant("mallory", 3)
    failed = await db.submit_job("mallory", "a broken kite")
    await db.admit(failed, deadline_s=60)
    await db.finish(failed, JobStatus.FAILED, code=ErrorCode.UPSTREAM_ERROR, message="x")
    calls: list[tuple[str, tuple[object, ...]]] = [
        ("SELECT orchestrator.retry_job_v1($1, NULL)", (failed,)),
        ("SELECT orchestrator.retry_job_v1($1, 'again')", (failed,)),
        (
            "SELECT * FROM orchestrator.submit_jobs($1::jsonb)",
            ('[{"user_id": "mallory", "prompt": "a cow", "idempotency_key": "c"}]',),
        ),
    ]

    witnessed = await _attack_in_thread(db_url, calls, role="orchestrator_operator")

    assert witnessed == []
    for role in ("submitter", "orchestrator_operator"):
        rows = await pg.fetch(db_url, "SELECT rolsuper FROM pg_roles WHERE rolname = $1", role)
        assert rows[0]["rolsuper"] is False
    retries = await pg.fetch(
        db_url,
        "SELECT idempotency_key, prompt FROM orchestrator.jobs WHERE retry_of = $1"
        " ORDER BY idempotency_key",
        failed,
    )
    assert [(r["idempotency_key"], r["prompt"]) for r in retries] == [
        ("again", "a broken kite"),
        (f"retry:{failed}", "a broken kite"),
    ]
    cows = await pg.fetch(
        db_url, "SELECT count(*) AS n FROM orchestrator.jobs WHERE prompt = 'a cow'"
    )
    assert cows[0]["n"] == 1
    account = await db.account("mallory")
    assert account is not None
    assert account.balance == 3


async def test_submitter_may_not_grant_credits(db: Database, db_url: str):
    await db.grant("mallory", 3)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pg.fetch(db_url, "SELECT orchestrator.grant_credits('mallory', 10)", role="submitter")
    account = await db.account("mallory")
    assert account is not None
    assert account.balance == 3


async def test_the_schema_and_its_objects_belong_to_a_role_that_is_no_superuser(db_url: str):
    owners = await pg.fetch(
        db_url,
        """
        SELECT 'schema' AS kind, n.nspname AS name, r.rolname AS owner, r.rolsuper
          FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
         WHERE n.nspname = 'orchestrator'
        UNION ALL
        SELECT 'relation', c.relname, r.rolname, r.rolsuper
          FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
         WHERE c.relnamespace = 'orchestrator'::regnamespace AND c.relkind IN ('r', 'v')
        UNION ALL
        SELECT 'function', p.proname, r.rolname, r.rolsuper
          FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
         WHERE p.pronamespace = 'orchestrator'::regnamespace
        """,
    )
    assert len(owners) > 10
    assert {(row["owner"], row["rolsuper"]) for row in owners} == {("orchestrator_owner", False)}
    definers = await pg.fetch(
        db_url,
        """
        SELECT p.proname, p.proconfig FROM pg_proc p
         WHERE p.pronamespace = 'orchestrator'::regnamespace AND p.prosecdef
        """,
    )
    assert definers
    for row in definers:
        assert "search_path=pg_catalog, pg_temp" in row["proconfig"], row["proname"]


async def _as_daemon(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    return await pg.fetch(url, query, *args, role="orchestrator_daemon")


async def test_the_daemon_cannot_choose_what_admission_debits_or_finishing_refunds(
    db: Database, db_url: str
):
    """Whatever the daemon's role passes, the plan sets the debit and stored outputs the refund."""
    await db.grant("vic", 20, plan=await pg.plan(db_url, cost_per_output=3, max_inflight=1))
    whole, part, failed = [await db.submit_job("vic", f"p{i}", num_outputs=2) for i in range(3)]
    admit = "SELECT outcome, cost, balance FROM orchestrator.admit_job_v3($1, $2, $3, NULL)"
    finish = (
        "SELECT refunded, balance FROM orchestrator.finish_job_v4($1, $2, $3, $4, $5, NULL, NULL)"
    )
    five = json.dumps([{"idx": i, "url": u} for i, u in enumerate("abcde")])

    (row,) = await _as_daemon(db_url, admit, whole, 1e9, None)
    assert (row["outcome"], row["cost"], row["balance"]) == ("admitted", 6, 14)
    (row,) = await _as_daemon(db_url, admit, part, 60.0, None)
    assert row["outcome"] == "no_seat"  # the plan's one seat, not a caller's number
    (row,) = await _as_daemon(db_url, finish, whole, "succeeded", None, "x", five)
    assert (row["refunded"], row["balance"]) == (0, 14)  # five outputs, two paid for and kept

    await _as_daemon(db_url, admit, part, 60.0, None)
    (row,) = await _as_daemon(
        db_url, finish, part, "succeeded", None, "x", '[{"idx": 0, "url": "a"}]'
    )
    assert (row["refunded"], row["balance"]) == (3, 11)
    (row,) = await _as_daemon(db_url, finish, part, "failed", "UPSTREAM_ERROR", "x", None)
    assert row["refunded"] == 0  # finished already: nothing more

    await _as_daemon(db_url, admit, failed, 60.0, None)
    (row,) = await _as_daemon(db_url, finish, failed, "failed", "UPSTREAM_ERROR", "x", five)
    assert (row["refunded"], row["balance"]) == (6, 11)  # a failure keeps no outputs
    assert await db.stored_outputs(failed) == []

    account = await db.account("vic")
    assert account is not None
    assert account.balance == 20 - 6 - 3
    assert (await db.audit()).ok


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM orchestrator.admit_job_v1($1, 0, 1000, 60)",
        "SELECT * FROM orchestrator.finish_job_v1($1, 'failed', 'UPSTREAM_ERROR', 'x', 1000)",
        "SELECT * FROM orchestrator.admit_job_v2($1, 60, NULL)",
        "SELECT * FROM orchestrator.finish_job_v2($1, 'failed', 'UPSTREAM_ERROR', 'x', NULL)",
        "SELECT * FROM orchestrator.finish_job_v3($1, 'failed', 'x', 'x', NULL, NULL, NULL)",
    ],
)
async def test_the_superseded_money_functions_are_gone(db: Database, db_url: str, query: str):
    """Older shapes (amounts from the caller, no fence) cannot be reached by any role."""
    await db.grant("vic", 5)
    job_id = await db.submit_job("vic", "free ride")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await _as_daemon(db_url, query, job_id)
    job = await db.job(job_id)
    assert job is not None
    assert job.cost is None
