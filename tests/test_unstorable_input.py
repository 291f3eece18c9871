"""Input Postgres or Python cannot take as it comes: it ends a job cleanly, never stalls it.

Provider text may hold NUL (which Postgres `text` refuses) and be of any length; `params`
may be jsonb Postgres accepts but `json.loads` cannot read (deep nesting, huge integers).
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from orchestrator.core import MAX_STORED_TEXT, ErrorCode, JobStatus, clean_text, safe_summary
from orchestrator.db import Database
from orchestrator.db._connector import UndecodableJson, decode_jsonb

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal

DEEP_PARAMS = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
LONG_INTEGER_PARAMS = '{"seed": ' + "7" * 5000 + "}"


def test_clean_text_drops_nul_and_control_characters_but_keeps_newline_and_tab():
    assert clean_text("a\x00b\x07c\x1b[0m\r\nd\te\x7f\x85f\ud800") == "abc[0m\nd\tef"


def test_clean_text_caps_the_length_with_an_ellipsis():
    cleaned = clean_text("x" * 10_000)
    assert len(cleaned) == MAX_STORED_TEXT
    assert cleaned.endswith("…")
    assert clean_text("short") == "short"
    assert clean_text("abcdef", limit=4) == "abc…"


def test_clean_text_output_is_utf8_encodable_and_nul_free():
    cleaned = clean_text("".join(chr(c) for c in range(0xE000)))
    cleaned.encode("utf-8")
    assert "\x00" not in cleaned


def test_safe_summary_drops_nul_from_provider_text_and_still_redacts():
    summary = safe_summary("boom\x00 bearer\x00 abcdefghijk the prompt", secrets=("the prompt",))
    assert "\x00" not in summary
    assert "abcdefghijk" not in summary
    assert "the prompt" not in summary


def test_decode_jsonb_turns_what_python_cannot_read_into_a_value():
    assert decode_jsonb('{"a": [1]}') == {"a": [1]}
    deep = decode_jsonb(DEEP_PARAMS)
    assert isinstance(deep, UndecodableJson)
    assert "nested too deeply" in deep.problem
    long_int = decode_jsonb(LONG_INTEGER_PARAMS)
    assert isinstance(long_int, UndecodableJson)
    assert "too many digits" in long_int.problem


@pytest.mark.parametrize("api", ["replicate", "kie"])
async def test_nul_in_provider_error_still_finishes_and_refunds(nursery, db: Database, api: str):
    """A failure text with NUL, escapes and 5,000 characters ends the job failed and refunded."""
    provider = await start_simulator(nursery, api=api)
    overrides: dict[str, object] = (
        {"provider": "kie", "kie_api_base": provider, "kie_model": "sim/image"}
        if api == "kie"
        else {}
    )
    await start_daemon(nursery, settings_for(db.url, provider, **overrides))
    await db.grant("nul", 2, plan="pro")
    job_id = await db.submit_job("nul", "a picture", params={"simulate": "fail_garbled"})
    (job,) = await wait_terminal(db, [job_id], timeout=10)
    assert job.status is JobStatus.FAILED
    assert job.error_code is ErrorCode.UPSTREAM_ERROR
    assert job.error_message is not None
    assert "garbled" in job.error_message
    assert "\x00" not in job.error_message
    assert "\x1b" not in job.error_message
    assert len(job.error_message) <= MAX_STORED_TEXT
    account = await db.account("nul")
    assert account is not None
    assert account.balance == 2
    assert (await db.audit()).ok


async def _insert(db_url: str, params: str) -> uuid.UUID:
    rows = await pg.fetch(
        db_url,
        "INSERT INTO orchestrator.jobs (user_id, prompt, params) VALUES ($1, $2, $3::jsonb)"
        " RETURNING id",
        "deep",
        "plain insert",
        params,
    )
    job_id: uuid.UUID = rows[0]["id"]
    return job_id


async def _submit(db_url: str, params: str) -> uuid.UUID:
    rows = await pg.fetch(
        db_url,
        "SELECT orchestrator.submit_job($1, $2, $3::jsonb) AS id",
        "deep",
        f"submitted {len(params)}",
        params,
        role="submitter",
    )
    job_id: uuid.UUID = rows[0]["id"]
    return job_id


async def test_params_python_cannot_decode_are_rejected_within_one_scan(
    nursery, db: Database, db_url: str
):
    """5,000-digit integers, by INSERT and by submit_job, end VALIDATION_ERROR.

    Nesting 5,000 deep is refused at the entrance now (jobs_params_depth); a row that
    predates that check, inserted with the trigger disabled, still ends VALIDATION_ERROR.
    They are queued before the daemon starts, so only its startup scan can find them; the
    wait is shorter than a second scan would take to matter. A valid job still succeeds.
    """
    await db.grant("deep", 5, plan="pro")
    for entrance in (_insert, _submit):
        with pytest.raises(asyncpg.PostgresError, match="nested more than 32 levels"):
            await entrance(db_url, DEEP_PARAMS)
    await pg.script(db_url, "ALTER TABLE orchestrator.jobs DISABLE TRIGGER jobs_check_submission")
    predating = await _insert(db_url, DEEP_PARAMS)
    await pg.script(db_url, "ALTER TABLE orchestrator.jobs ENABLE TRIGGER jobs_check_submission")
    ids = [
        predating,
        await _insert(db_url, LONG_INTEGER_PARAMS),
        await _submit(db_url, LONG_INTEGER_PARAMS),
    ]
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider, scan_interval_s=30.0))
    jobs = await wait_terminal(db, ids, timeout=5)
    for job in jobs:
        assert job.status is JobStatus.REJECTED
        assert job.error_code is ErrorCode.VALIDATION_ERROR
        assert job.error_message is not None
        assert job.error_message.startswith("params cannot be read")
        assert not job.cost
    good = await db.submit_job("deep", "a fine request")
    (done,) = await wait_terminal(db, [good], timeout=10)
    assert done.status is JobStatus.SUCCEEDED
    account = await db.account("deep")
    assert account is not None
    assert account.balance == 4
    assert (await db.audit()).ok
