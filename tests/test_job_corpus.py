"""Bad job rows and submit_job arguments, each through the real entrance, with a live daemon.

Every file in tests/corpus/jobs/ is one submission and what each entrance must answer:
a clear SQL error at INSERT (`{"error": SQLSTATE}`; 22000 is asyncpg refusing to send
a value, such as a lone surrogate or an integer out of range), or a job that ends with the given status and code. Long
strings are written `{"$repeat": s, "times": n}` and joined with `{"$concat": [...]}`.

Also Hypothesis: `params` fuzzed through submit_job into a running daemon, bounded in
count; every accepted row ends as the admission rule says, and nothing stalls.
"""

from __future__ import annotations

import functools
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from orchestrator.core import COST_MULTIPLIERS, ErrorCode, JobStatus, validate
from orchestrator.db import Database, open_database

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal

CORPUS = Path(__file__).parent / "corpus" / "jobs"
ENTRANCES = ("insert", "submit_job")
_SQL = {
    "insert": "INSERT INTO orchestrator.jobs (user_id, prompt, params, num_outputs, idempotency_key)"
    " VALUES ($1, $2, $3::text::jsonb, $4, $5) RETURNING id",
    "submit_job": "SELECT orchestrator.submit_job($1, $2, $3::text::jsonb, $4, $5) AS id",
}
_USERS = {"insert": "corpus-insert", "submit_job": "corpus-submit"}


def _expand(value: Any) -> Any:
    if isinstance(value, dict):
        if "$repeat" in value:
            return _expand(value["$repeat"]) * value["times"]
        if "$concat" in value:
            return "".join(_expand(part) for part in value["$concat"])
        return {key: _expand(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item) for item in value]
    return value


@attrs.frozen
class Case:
    name: str
    user_id: str | None
    prompt: str | None
    params_text: str
    num_outputs: int
    idempotency_key: str | None
    expect: dict[str, dict[str, str]]

    def arguments(self, entrance: str) -> tuple[object, ...]:
        user = self.user_id if self.user_id is not None else _USERS[entrance]
        prompt = self.prompt if self.prompt is not None else f"corpus {self.name} by {entrance}"
        return (user, prompt, self.params_text, self.num_outputs, self.idempotency_key)


def _case(path: Path) -> Case:
    raw = json.loads(path.read_text())
    assert set(raw) <= {
        "why",
        "user_id",
        "prompt",
        "params",
        "params_text",
        "num_outputs",
        "idempotency_key",
        "expect",
    }, path.name
    assert raw["why"], path.name
    assert raw["expect"], path.name
    assert set(raw["expect"]) <= set(ENTRANCES), path.name
    params_text = (
        _expand(raw["params_text"])
        if "params_text" in raw
        else json.dumps(_expand(raw.get("params", {})))
    )
    return Case(
        name=path.stem,
        user_id=_expand(raw.get("user_id")),
        prompt=_expand(raw.get("prompt")),
        params_text=params_text,
        num_outputs=raw.get("num_outputs", 1),
        idempotency_key=_expand(raw.get("idempotency_key")),
        expect=raw["expect"],
    )


CASES = [_case(path) for path in sorted(CORPUS.glob("*.json"))]


def test_the_corpus_covers_every_kind_of_bad_job():
    """Enough files, each readable, with both clean outcomes represented."""
    assert len(CASES) >= 40
    outcomes = {next(iter(e)) for case in CASES for e in case.expect.values()}
    assert outcomes == {"error", "status"}


async def _enter(db_url: str, case: Case, entrance: str) -> uuid.UUID | asyncpg.PostgresError:
    try:
        rows = await pg.fetch(db_url, _SQL[entrance], *case.arguments(entrance), role="submitter")
    except asyncpg.PostgresError as exc:
        return exc
    job_id: uuid.UUID = rows[0]["id"]
    return job_id


async def _grant_corpus_users(db: Database) -> None:
    named = {
        case.user_id
        for case in CASES
        if case.user_id and case.name != "user_id_unknown"
        if any("status" in expected for expected in case.expect.values())
    }
    for user in {*_USERS.values(), *named}:
        await db.grant(user, 1000, plan="pro")


async def test_every_corpus_job_gets_a_clean_code_and_the_daemon_lives(
    nursery, db: Database, db_url: str, capfd: pytest.CaptureFixture[str]
):
    """Each file by INSERT and by submit_job: the expected SQL error, or the expected end.

    One at a time, so identical good submissions never meet as duplicates. After all of
    them the daemon is ready, runs a good job, logged no traceback, and the audit is clean.
    """
    provider = await start_simulator(nursery)
    daemon = await start_daemon(nursery, settings_for(db_url, provider))
    await _grant_corpus_users(db)
    tried = 0
    for case in CASES:
        for entrance, expected in case.expect.items():
            tried += 1
            where = f"{case.name} by {entrance}"
            outcome = await _enter(db_url, case, entrance)
            if "error" in expected:
                assert isinstance(outcome, asyncpg.PostgresError), f"{where} was accepted"
                assert outcome.sqlstate == expected["error"], f"{where}: {outcome!r}"
                continue
            assert isinstance(outcome, uuid.UUID), f"{where} was refused: {outcome!r}"
            (job,) = await wait_terminal(db, [outcome], timeout=10)
            assert job.status.value == expected["status"], f"{where}: {job.error_message}"
            assert (job.error_code.value if job.error_code else None) == expected.get("code")
            if job.status is JobStatus.REJECTED:
                assert job.cost is None
                assert job.error_message is not None
                assert job.error_message.isprintable(), where
                assert len(job.error_message) < 500, where
    assert tried >= 100
    assert await daemon.readiness() == {
        "database": True,
        "schema": True,
        "listener": True,
        "leases": True,
    }
    good = await db.submit_job("corpus-submit", "after the corpus", params={"seed": 1})
    (done,) = await wait_terminal(db, [good])
    assert done.status is JobStatus.SUCCEEDED
    assert (await db.audit()).ok
    logged = capfd.readouterr()
    assert "Traceback" not in logged.out + logged.err


# Fuzzing params through the database: keys the model declares, cost multipliers,
# arbitrary text; values of every JSON kind, sometimes large.
_FUZZ_ALLOWED = ("seed", "style", "variation")
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.text(min_size=4000, max_size=9000, alphabet="xé"),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_FUZZ_KEYS = st.sampled_from([*_FUZZ_ALLOWED, *sorted(COST_MULTIPLIERS), "prompt"]) | st.text(
    max_size=12
)
_FUZZ_PARAMS = st.dictionaries(_FUZZ_KEYS, _VALUES, max_size=4)


def test_fuzzed_params_through_submit_job_end_as_the_admission_rule_says(db_url: str):
    """Bounded: 60 examples submitted, then one daemon settles them all within seconds.

    The database refuses only what breaks its outer limits; every accepted row ends
    rejected VALIDATION_ERROR exactly when the rule says so, and succeeds otherwise.
    """
    seats = trio.run(functools.partial(pg.plan, db_url, max_inflight=1000))
    pg.fetch_sync(db_url, "SELECT orchestrator.grant_credits('fuzz', 10000)")
    pg.fetch_sync(
        db_url, "UPDATE orchestrator.accounts SET plan = $1 WHERE user_id = 'fuzz'", seats
    )
    accepted: list[uuid.UUID] = []
    refused: list[str] = []

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(params=_FUZZ_PARAMS)
    def submit(params: dict[str, object]) -> None:
        prompt = f"fuzz {len(accepted) + len(refused)}"
        text = json.dumps(params)
        outcome = _submit_sync(db_url, prompt, text)
        if isinstance(outcome, uuid.UUID):
            accepted.append(outcome)
            return
        refused.append(outcome.sqlstate)
        if outcome.sqlstate == "22P05":  # jsonb holds no NUL
            assert "\\u0000" in text
        else:
            assert outcome.sqlstate == "OR004", repr(outcome)
            assert len(json.dumps(params, ensure_ascii=False).encode()) > 15_000 or (
                _depth(params) > 30
            )

    submit()
    trio.run(_settle_fuzzed, db_url, accepted)
    assert len(accepted) >= 10


def _submit_sync(db_url: str, prompt: str, params: str) -> uuid.UUID | asyncpg.PostgresError:
    try:
        rows = pg.fetch_sync(
            db_url, _SQL["submit_job"], "fuzz", prompt, params, 1, None, role="submitter"
        )
    except asyncpg.PostgresError as exc:
        return exc
    job_id: uuid.UUID = rows[0]["id"]
    return job_id


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


async def _settle_fuzzed(db_url: str, ids: list[uuid.UUID]) -> None:
    async with trio.open_nursery() as nursery:
        async with open_database(db_url) as db:
            provider = await start_simulator(nursery)
            fuzz_settings = settings_for(db_url, provider, params_allowed=_FUZZ_ALLOWED)
            await start_daemon(nursery, fuzz_settings)
            jobs = await wait_terminal(db, ids, timeout=30)
            for job in jobs:
                expected = validate(job, frozenset(_FUZZ_ALLOWED))
                if expected is None:
                    assert job.status is JobStatus.SUCCEEDED, job.error_message
                else:
                    assert job.status is JobStatus.REJECTED
                    assert job.error_code is ErrorCode.VALIDATION_ERROR
                    assert job.error_message == expected.message
            assert (await db.audit()).ok
        nursery.cancel_scope.cancel()
