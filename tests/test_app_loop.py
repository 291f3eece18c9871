"""The app's side of the loop, end to end, on files and on an S3-compatible bucket.

A nano-banana job edits a user's private input photo: the daemon checks it before the
debit and hands the provider (the simulator, which fetches it as Replicate does) a URL
that expires within minutes; another user's photo is refused, uncharged. Every output
is fetched back from its `public_url`, with the sha256 and size its row records.
The node-postgres and asyncpg example apps: tests/test_examples.py.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.parse
from datetime import UTC, datetime

import httpx
import pytest
import trio

from orchestrator.core import ErrorCode, JobStatus
from orchestrator.daemon import object_store, serve
from orchestrator.db import Database
from orchestrator.settings import SettingsError

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, storage_env, wait_terminal

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
NANO = "google/nano-banana"


async def _cli(db_url: str, storage: dict[str, object], *args: str) -> str:
    """The CLI as an operator runs it; its stdout. Fails the test on a non-zero exit."""
    env = {**os.environ, "DATABASE_URL": db_url, **storage_env(storage)}
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "orchestrator.cli", *args],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def _image(tmp_path, name: str = "face.png") -> str:
    path = tmp_path / name
    await trio.Path(path).write_bytes(PNG)
    return str(path)


async def _given_to_provider(simulator: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"{simulator}/_sim/inputs")
    response.raise_for_status()
    given: list[dict[str, object]] = response.json()["predictions"]
    return given


def _expiry(url: str) -> float:
    """When a presigned URL stops working (Unix seconds), whichever store signed it."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    if "expires" in query:  # the daemon's own HMAC-signed /inputs URL
        return float(query["expires"][0])
    signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return signed.timestamp() + float(query["X-Amz-Expires"][0])


async def test_a_nano_banana_job_edits_a_private_input_through_a_short_lived_url(
    nursery, db: Database, db_url: str, storage: dict[str, object], tmp_path
):
    provider = await start_simulator(nursery)
    settings = settings_for(db_url, provider, replicate_model=NANO, **storage)
    await start_daemon(nursery, settings)
    await db.grant("ana", 5, plan="pro")
    key = (await _cli(db_url, storage, "upload", "ana", await _image(tmp_path))).strip()
    assert key.startswith("private/ana/inputs/")
    assert key.endswith(".png")
    job_id = await db.submit_job(
        "ana", "make the sky violet", params={"image_input": [key], "output_format": "png"}
    )
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED, job.error_message
    (given,) = await _given_to_provider(provider)
    (url,) = given["image_input"]  # type: ignore[misc]
    (fetch,) = given["fetches"]  # type: ignore[misc]
    assert fetch["ok"], fetch
    assert fetch["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert "X-Amz-Signature=" in url or "sig=" in url  # signed, never the bare key
    lifetime = _expiry(url) - fetch["started_at"]
    assert 0 < lifetime <= 300  # ORCHESTRATOR_INPUT_URL_TTL's default, well within 15 min
    stored = (await db.job(job_id)).params["image_input"]  # type: ignore[union-attr]
    assert stored == [key]  # the job keeps the key; only the provider sees a URL
    account = await db.account("ana")
    assert account is not None
    assert account.balance == 4


async def test_another_users_input_or_a_missing_one_is_refused_and_nothing_is_charged(
    nursery, db: Database, db_url: str, storage: dict[str, object], tmp_path
):
    provider = await start_simulator(nursery)
    settings = settings_for(db_url, provider, replicate_model=NANO, **storage)
    await start_daemon(nursery, settings)
    for user in ("ana", "bob"):
        await db.grant(user, 5, plan="pro")
    bobs = (await _cli(db_url, storage, "upload", "bob", await _image(tmp_path))).strip()
    theft = await db.submit_job("ana", "x", params={"image_input": [bobs]})
    missing = await db.submit_job(
        "ana", "y", params={"image_input": ["private/ana/inputs/none.png"]}
    )
    for job in await wait_terminal(db, [theft, missing]):
        assert (job.status, job.error_code, job.cost) == (
            JobStatus.REJECTED,
            ErrorCode.VALIDATION_ERROR,
            None,
        )
    messages = {
        job.id: job.error_message or "" for job in await wait_terminal(db, [theft, missing])
    }
    assert "neither one of this user's inputs" in messages[theft]
    assert "does not exist" in messages[missing]
    assert await _given_to_provider(provider) == []
    account = await db.account("ana")
    assert account is not None
    assert account.balance == 5


async def test_every_output_is_fetched_from_its_public_url_with_its_hash_and_size(
    nursery, db: Database, db_url: str, storage: dict[str, object]
):
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider, **storage))
    await db.grant("cy", 10, plan="pro")
    job_id = await db.submit_job("cy", "three lighthouses", num_outputs=3)
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    rows = await pg.fetch(
        db_url,
        "SELECT idx, public_url, sha256, size_bytes, content_type, path"
        " FROM orchestrator.outputs WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    assert [row["idx"] for row in rows] == [0, 1, 2]
    async with httpx.AsyncClient(trust_env=False) as client:
        for row in rows:
            assert row["public_url"].startswith("http")
            assert f"public/renders/{job_id}/{row['idx']}." in (row["path"] or "")
            response = await client.get(row["public_url"])
            assert response.status_code == 200, row["public_url"]
            assert hashlib.sha256(response.content).hexdigest() == row["sha256"]
            assert len(response.content) == row["size_bytes"]
            assert response.headers["content-type"] == row["content_type"]


@pytest.mark.parametrize("storage", ["files"], indirect=True)
async def test_a_file_mode_input_url_is_refused_unsigned_tampered_or_for_another_key(
    nursery, db: Database, db_url: str, storage: dict[str, object], tmp_path
):
    """The daemon's /inputs route serves a private input only under its own valid signature."""
    provider = await start_simulator(nursery)
    settings = settings_for(db_url, provider, replicate_model=NANO, **storage)
    daemon = await start_daemon(nursery, settings)
    await db.grant("ana", 5, plan="pro")
    key = (await _cli(db_url, storage, "upload", "ana", await _image(tmp_path))).strip()
    job_id = await db.submit_job("ana", "x", params={"image_input": [key]})
    await wait_terminal(db, [job_id])
    (given,) = await _given_to_provider(provider)
    (url,) = given["image_input"]  # type: ignore[misc]
    assert url.startswith(daemon.http_url + "/inputs/ana/")
    bare = url.partition("?")[0]
    other = url.replace("/inputs/ana/", "/inputs/bob/")
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    async with httpx.AsyncClient(trust_env=False) as client:
        assert (await client.get(url)).content == PNG
        for refused in (bare, other, tampered):
            assert (await client.get(refused)).status_code == 403, refused


async def test_orchestrator_delete_removes_the_objects_and_the_urls_stop_serving(
    nursery, db: Database, db_url: str, storage: dict[str, object]
):
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider, **storage))
    await db.grant("di", 5, plan="pro")
    job_id = await db.submit_job("di", "two to delete", num_outputs=2)
    await wait_terminal(db, [job_id])
    stored = (await db.job_outputs([job_id]))[job_id]
    assert len(stored) == 2
    settings = settings_for(db_url, provider, **storage)
    store, _routes = object_store(settings, "http://127.0.0.1:9", signs=False)
    keys = [f"public/renders/{job_id}/{o.idx}.png" for o in stored]
    assert [await store.head(key) is not None for key in keys] == [True, True]
    said = await _cli(db_url, storage, "delete", str(job_id))
    assert "2 objects removed, 2 outputs marked deleted" in said
    assert [await store.head(key) for key in keys] == [None, None]  # gone, not hidden
    async with httpx.AsyncClient(trust_env=False) as client:
        for output in stored:
            assert output.public_url is not None
            # S3 answers an anonymous read of a missing key 403 (no ListBucket), files 404.
            assert (await client.get(output.public_url)).status_code in {403, 404}
    assert (await db.job_outputs([job_id]))[job_id] == []


async def test_files_served_on_every_interface_need_the_daemons_public_url(db_url: str):
    """Bound to 0.0.0.0 with no public URL, every stored output URL would name 0.0.0.0."""
    settings = settings_for(db_url, "http://127.0.0.1:9", http_host="0.0.0.0")  # noqa: S104
    with pytest.raises(SettingsError, match="ORCHESTRATOR_PUBLIC_URL"):
        await serve(settings, db_url, handle_signals=False)
