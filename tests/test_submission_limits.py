"""Submission limits: what a submitter may send, refused at the entrance or at admission.

The database refuses an oversized prompt, user id or params at INSERT, by plain INSERT
and through `submit_job`, with SQLSTATE OR004 and a named limit. Rows that predate those
checks, and params keys the model does not declare (image counts, batch sizes, step
counts), end `rejected` with VALIDATION_ERROR at admission: never charged, never sent.
"""

from __future__ import annotations

import json
import uuid

import asyncpg
import httpx
import pytest

from orchestrator.core import ErrorCode, JobStatus
from orchestrator.db import Database

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal

_INSERT = (
    "INSERT INTO orchestrator.jobs (user_id, prompt, params, num_outputs)"
    " VALUES ($1, $2, $3::jsonb, $4) RETURNING id"
)
_SUBMIT = "SELECT orchestrator.submit_job($1, $2, $3::jsonb, $4) AS id"


def _nested(depth: int) -> str:
    return '{"seed": ' + "[" * depth + "]" * depth + "}"


async def _sim_stats(provider_url: str) -> dict[str, object]:
    async with httpx.AsyncClient(trust_env=False) as client:
        return (await client.get(f"{provider_url}/_sim/stats")).json()  # type: ignore[no-any-return]


async def _job_count(db_url: str) -> int:
    rows = await pg.fetch(db_url, "SELECT count(*) AS n FROM orchestrator.jobs")
    return int(rows[0]["n"])


COST_MULTIPLIERS = [
    {"num_outputs": 50},
    {"batch_size": 8},
    {"num_images": 4},
    {"num_inference_steps": 50},
    {"n": 10},
]


async def test_params_the_model_does_not_declare_are_rejected_uncharged_and_never_sent(
    nursery, db: Database, db_url: str
):
    """Image counts, batch sizes and step counts in params end VALIDATION_ERROR, naming the key.

    By submit_job and by plain INSERT; the balance does not move and the simulator sees no
    prediction. A declared input (seed) still runs.
    """
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("pia", 10, plan="pro")
    ids = [await db.submit_job("pia", "sneaky", params=params) for params in COST_MULTIPLIERS]
    for params in COST_MULTIPLIERS:
        rows = await pg.fetch(
            db_url, _INSERT, "pia", "inserted", json.dumps(params), 1, role="submitter"
        )
        ids.append(rows[0]["id"])
    jobs = await wait_terminal(db, ids)
    for job, params in zip(jobs, COST_MULTIPLIERS * 2, strict=True):
        assert job.status is JobStatus.REJECTED
        assert job.error_code is ErrorCode.VALIDATION_ERROR
        assert job.error_message is not None
        (key,) = params
        assert repr(key) in job.error_message
        assert job.cost is None
    account = await db.account("pia")
    assert account is not None
    assert account.balance == 10
    assert (await _sim_stats(provider))["predictions"] == 0
    good = await db.submit_job("pia", "a seeded picture", params={"seed": 7})
    (done,) = await wait_terminal(db, [good])
    assert done.status is JobStatus.SUCCEEDED
    assert (await db.audit()).ok


@pytest.mark.parametrize(
    ("user_id", "prompt", "params", "limit"),
    [
        ("lim", "x" * 4001, "{}", "jobs_prompt_length"),
        ("lim", "", "{}", "jobs_prompt_length"),
        ("u" * 129, "a picture", "{}", "jobs_user_id_format"),
        ("a b", "a picture", "{}", "jobs_user_id_format"),
        ("../etc", "a picture", "{}", "jobs_user_id_format"),
        ("", "a picture", "{}", "jobs_user_id_format"),
        ("lim", "a picture", json.dumps({"seed": "x" * 16_384}), "jobs_params_size"),
        ("lim", "a picture", _nested(40), "jobs_params_depth"),
    ],
)
@pytest.mark.parametrize("entrance", ["insert", "submit_job"])
async def test_the_database_refuses_oversized_submissions_at_the_entrance(
    db: Database, db_url: str, entrance: str, user_id: str, prompt: str, params: str, limit: str
):
    """A plain INSERT and submit_job, as the submitter, get OR004 naming the limit; nothing queued."""
    await db.grant("lim", 5)
    query = _INSERT if entrance == "insert" else _SUBMIT
    with pytest.raises(asyncpg.PostgresError) as refused:
        await pg.fetch(db_url, query, user_id, prompt, params, 1, role="submitter")
    assert refused.value.sqlstate == "OR004"
    assert getattr(refused.value, "constraint_name", None) == limit
    assert limit.removeprefix("jobs_").split("_")[0] in str(refused.value)
    assert await _job_count(db_url) == 0


async def test_submissions_at_the_limits_are_accepted(db: Database, db_url: str):
    """4,000 characters of prompt, 128 of user id, 16 KiB of params and 32 levels all go in."""
    user = "u" * 127 + "9"
    await db.grant(user, 5)
    blob = json.dumps({"seed": "x" * (16_384 - len('{"seed": ""}'))})
    assert len(blob.encode()) == 16_384
    for prompt, params in [
        ("x" * 4000, "{}"),
        ("é" * 4000, "{}"),
        ("ok", blob),
        ("ok", _nested(31)),
    ]:
        await pg.fetch(db_url, _INSERT, user, prompt, params, 1, role="submitter")
        await pg.fetch(db_url, _SUBMIT, user, prompt, params, 1, role="submitter")
    assert await _job_count(db_url) == 8


async def test_rows_that_predate_the_limits_are_rejected_at_admission(
    nursery, db: Database, db_url: str
):
    """Rows inserted before the checks existed end VALIDATION_ERROR, uncharged, not stuck."""
    await db.grant("old", 5, plan="pro")
    await db.grant("o" * 150, 5, plan="pro")
    await pg.script(db_url, "ALTER TABLE orchestrator.jobs DISABLE TRIGGER jobs_check_submission")
    rows = [
        ("old", "x" * 4001, "{}"),
        ("o" * 150, "long user", "{}"),
        ("old", "big params", json.dumps({"seed": "x" * 20_000})),
        ("old", "deep params", _nested(40)),
    ]
    ids: list[uuid.UUID] = []
    for user, prompt, params in rows:
        found = await pg.fetch(db_url, _INSERT, user, prompt, params, 1)
        ids.append(found[0]["id"])
    await pg.script(db_url, "ALTER TABLE orchestrator.jobs ENABLE TRIGGER jobs_check_submission")
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider))
    jobs = await wait_terminal(db, ids, timeout=5)
    for job in jobs:
        assert job.status is JobStatus.REJECTED
        assert job.error_code is ErrorCode.VALIDATION_ERROR
        assert job.cost is None
    assert (await _sim_stats(provider))["predictions"] == 0
    assert (await db.audit()).ok
