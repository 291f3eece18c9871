"""Fixtures: one real Postgres per session, one fresh database per test.

With DATABASE_URL set, that server is used; otherwise an embedded Postgres is
started in a temporary directory and stopped at the end. The schema is
migrated once into a template database, and every test gets its own copy
(CREATE DATABASE ... TEMPLATE), so tests never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from orchestrator.db import Database, ensure_embedded_server, open_database, stop_embedded_server

from . import pg, s3server


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    home = Path(tempfile.mkdtemp(prefix="orch-test-", dir="/tmp"))
    try:
        yield ensure_embedded_server(home)
    finally:
        stop_embedded_server(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(server_url: str) -> Iterator[str]:
    name = f"orch_template_{uuid.uuid4().hex[:12]}"
    pg.fetch_sync(server_url, f"CREATE DATABASE {name}")

    async def migrate() -> None:
        async with open_database(pg.with_database(server_url, name), min_size=1, max_size=1) as db:
            await db.migrate()

    trio.run(migrate)
    try:
        yield name
    finally:
        pg.fetch_sync(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(server_url: str, template_database: str) -> Iterator[str]:
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    pg.fetch_sync(server_url, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    try:
        yield pg.with_database(server_url, name)
    finally:
        pg.fetch_sync(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    async with open_database(db_url, min_size=2, max_size=20) as database:
        yield database


@pytest.fixture(scope="session")
def moto() -> Iterator[s3server.MotoServer]:
    """One S3-compatible server (moto) on loopback for the session; see tests/s3server.py."""
    with s3server.running_moto() as server:
        yield server


@pytest.fixture(params=["files", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    """Settings overrides for each place outputs may live: files (the default), or a bucket.

    The bucket is fresh per test, its `public/` readable anonymously (a bucket policy),
    as a deployment that serves outputs straight from the bucket has it.
    """
    if request.param == "files":
        return {"storage_root": tmp_path / "objects"}
    server: s3server.MotoServer = request.getfixturevalue("moto")
    bucket = f"orch-{uuid.uuid4().hex[:12]}"
    s3server.make_bucket(server.endpoint, bucket)
    return {
        "storage_url": f"s3://{bucket}",
        "aws_endpoint_url": server.endpoint,
        "aws_access_key_id": s3server.ACCESS_KEY_ID,
        "aws_secret_access_key": s3server.SECRET_ACCESS_KEY,
        "aws_region": s3server.REGION,
    }
