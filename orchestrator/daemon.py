"""`orchestrator run`: the composition root of the long-running daemon.

It owns every nursery. Start-up: database (migrated), provider client, the
actor registry, then intake (recovery first) and the sweeper. Shutdown on
SIGTERM/SIGINT or `Daemon.stop()`: intake and sweeper stop at once, running
jobs get the grace period, and whatever still runs after it is left in
flight for the next start's recovery. SIGKILL at any instant loses nothing
either: that is what recovery is for.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import httpx
import structlog
import trio

from actors import ActorConfig, Registry
from orchestrator.db import Database, open_database
from orchestrator.intake import Intake
from orchestrator.providers import Provider, ReplicateProvider
from orchestrator.settings import Settings, SettingsError
from orchestrator.sweeper import Sweeper

log = structlog.get_logger("orchestrator.daemon")

_PUBLIC_REPLICATE: Final = "api.replicate.com"


class Daemon:
    """A running daemon's handle: its parts, for tests and the HTTP endpoints."""

    def __init__(self, db: Database, registry: Registry, intake: Intake, sweeper: Sweeper) -> None:
        self.db = db
        self.registry = registry
        self.intake = intake
        self.sweeper = sweeper
        self._stop = trio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()


def actor_config(settings: Settings) -> ActorConfig:
    return ActorConfig(
        deadline_s=settings.job_deadline_s,
        poll_initial_s=settings.poll_initial_s,
        poll_multiplier=settings.poll_multiplier,
        poll_max_s=settings.poll_max_s,
        cancel_timeout_s=settings.cancel_timeout_s,
        idle_s=settings.actor_idle_s,
        mailbox_size=settings.mailbox_size,
        provider_name=settings.provider,
    )


@asynccontextmanager
async def open_provider(settings: Settings) -> AsyncIterator[Provider]:
    """The configured provider over one pooled HTTP client.

    Raises:
        SettingsError: the real Replicate without a token.
    """
    token = settings.replicate_api_token
    if token is None and _PUBLIC_REPLICATE in settings.replicate_api_base:
        raise SettingsError("REPLICATE_API_TOKEN is required to use Replicate")
    timeout = httpx.Timeout(10.0, connect=5.0)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        yield ReplicateProvider(
            client,
            base_url=settings.replicate_api_base,
            token=token or "unset",
            model=settings.replicate_model,
        )


async def serve(
    settings: Settings,
    database_url: str,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until stopped; `task_status` receives its handle once intake runs."""
    async with (
        open_database(database_url, min_size=2, max_size=settings.db_pool_size) as db,
        open_provider(settings) as provider,
    ):
        await db.migrate()
        config = actor_config(settings)
        registry = Registry(store=db, provider=provider, config=config)
        intake = Intake(db, registry, scan_interval_s=settings.scan_interval_s)
        sweeper = Sweeper(
            db,
            provider,
            registry,
            stuck_after_s=settings.stuck_after_s,
            cancel_timeout_s=settings.cancel_timeout_s,
        )
        daemon = Daemon(db, registry, intake, sweeper)
        async with trio.open_nursery() as root:
            await root.start(registry.run)
            services = trio.CancelScope()

            async def run_services(*, task_status: trio.TaskStatus[None]) -> None:
                with services:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(intake.run)
                        nursery.start_soon(sweeper.run)
                        task_status.started()

            await root.start(run_services)
            if handle_signals:
                root.start_soon(_stop_on_signal, daemon)
            log.info("daemon.started", deadline_s=settings.job_deadline_s)
            task_status.started(daemon)
            await daemon.wait_stopped()
            log.info("daemon.stopping", grace_s=settings.grace_s)
            services.cancel()
            left = await registry.drain(settings.grace_s)
            root.cancel_scope.cancel()
        log.info("daemon.stopped", jobs_left_for_recovery=left)


async def _stop_on_signal(daemon: Daemon) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("daemon.signal", signal=signal.Signals(signum).name)
            daemon.stop()
            return
