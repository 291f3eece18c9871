"""Helpers for end-to-end tests: the real daemon, the simulator over HTTP, a short deadline."""

from __future__ import annotations

import functools
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import attrs
import trio

from orchestrator.core import Job
from orchestrator.daemon import Daemon, serve
from orchestrator.db import Database
from orchestrator.settings import Settings
from orchestrator.simulator import SimulatorConfig, serve_simulator

DEADLINE_S = 2.0


def settings_for(db_url: str, provider_url: str, **overrides: object) -> Settings:
    base = Settings(
        database_url=db_url,
        replicate_api_base=provider_url,
        replicate_model="sim/image",
        job_deadline_s=DEADLINE_S,
        poll_initial_s=0.05,
        poll_max_s=0.2,
        webhook_poll_s=0.5,
        list_poll_s=0.1,
        # The test process hosts the simulator and the test too: its CPU says nothing
        # about the daemon's, so self-steering is tested on its own (test_capacity).
        lag_target_s=0.0,
        cancel_timeout_s=1.0,
        scan_interval_s=0.5,
        actor_idle_s=5.0,
        grace_s=1.0,
        http_port=0,
        storage_root=Path(tempfile.mkdtemp(prefix="orch-renders-")),
    )
    return attrs.evolve(base, **overrides)  # type: ignore[misc]


async def start_simulator(nursery: trio.Nursery, **config: object) -> str:
    sim = SimulatorConfig(**{"latency": (0.05, 0.1), "seed": 7, **config})  # type: ignore[arg-type]
    url: str = await nursery.start(serve_simulator, sim)
    return url


async def start_daemon(nursery: trio.Nursery, settings: Settings) -> Daemon:
    assert settings.database_url is not None
    daemon: Daemon = await nursery.start(
        functools.partial(serve, settings, settings.database_url, handle_signals=False)
    )
    return daemon


async def wait_terminal(
    db: Database, job_ids: Iterable[uuid.UUID], timeout: float = 15
) -> list[Job]:
    """Poll until every job is terminal; fail after `timeout` seconds."""
    ids = list(job_ids)
    with trio.fail_after(timeout):
        while True:
            jobs = [await db.job(job_id) for job_id in ids]
            if all(job is not None and job.status.terminal for job in jobs):
                return [job for job in jobs if job is not None]
            await trio.sleep(0.05)


async def wait_status(db: Database, job_id: uuid.UUID, status: str, timeout: float = 10) -> Job:
    with trio.fail_after(timeout):
        while True:
            job = await db.job(job_id)
            if job is not None and job.status.value == status:
                return job
            await trio.sleep(0.02)


def storage_env(overrides: dict[str, object]) -> dict[str, str]:
    """The same storage as environment variables, for a CLI or daemon process."""
    names = {
        "storage_root": "ORCHESTRATOR_STORAGE_ROOT",
        "storage_url": "ORCHESTRATOR_STORAGE_URL",
        "aws_endpoint_url": "AWS_ENDPOINT_URL",
        "aws_access_key_id": "AWS_ACCESS_KEY_ID",
        "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "aws_region": "AWS_REGION",
    }
    return {names[key]: str(value) for key, value in overrides.items()}
