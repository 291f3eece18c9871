"""Serving the simulator over hypercorn's Trio worker, beside its webhook sender and fetcher."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Final

import httpx
import trio

from orchestrator.transport import queued_client

from ._app import SimulatorApp
from ._config import SimulatorConfig
from ._fetcher import FETCH_CONCURRENCY, InputFetcher
from ._state import SimulatorState
from ._webhooks import WebhookSender

_LOGGER: Final = "orchestrator.simulator"
_WEBHOOK_TIMEOUT: Final = 2.0
_WEBHOOK_CONNECTIONS: Final = 64


async def serve_simulator(
    config: SimulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    access_log: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a simulated Replicate or KIE (``config.api``) until cancelled.

    Start it with ``base_url = await nursery.start(serve_simulator, config)``; port 0 (the
    default) picks a free port, and the URL reports the one bound. Hypercorn logs to the
    ``orchestrator.simulator`` logger, so it stays quiet unless the process configures
    logging; the per-request access log is off unless asked for. Predictions created with a
    webhook URL get their events POSTed there by a sender task in the same nursery; the
    ``image_input`` URLs of a prediction are fetched by a fetcher task there too, and what it
    found is at ``GET /_sim/inputs`` (every prediction given inputs) and
    ``GET /_sim/inputs/<prediction id>``.

    Args:
        config: What to simulate.
        host: Interface to bind; keep it on loopback.
        port: TCP port, 0 for any free one.
        access_log: Log every request to ``orchestrator.simulator.access``.
        task_status: Receives the base URL, e.g. ``"http://127.0.0.1:54321"``.
    """
    import hypercorn.config  # noqa: PLC0415  (only serving pays for hypercorn)
    import hypercorn.trio  # noqa: PLC0415

    server_config = hypercorn.config.Config()
    server_config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    server_config.accesslog = logging.getLogger(f"{_LOGGER}.access") if access_log else None
    server_config.errorlog = logging.getLogger(_LOGGER)
    server_config.graceful_timeout = 0.5
    # Inputs get a plain client: the queued one reads whole bodies before the size cap could.
    fetch_limits = httpx.Limits(
        max_connections=FETCH_CONCURRENCY, max_keepalive_connections=FETCH_CONCURRENCY
    )
    async with (
        queued_client(limit=_WEBHOOK_CONNECTIONS, timeout=_WEBHOOK_TIMEOUT) as client,
        httpx.AsyncClient(
            trust_env=False, timeout=config.input_fetch_timeout, limits=fetch_limits
        ) as fetch_client,
        trio.open_nursery() as nursery,
    ):
        sender = WebhookSender(
            client,
            wall_clock=time.time,
            secret=config.webhook_secret,
            delay=config.webhook_delay,
        )
        fetcher = InputFetcher(
            fetch_client, wall_clock=time.time, timeout=config.input_fetch_timeout
        )

        def changed() -> None:
            sender.wake()
            fetcher.wake()

        state = SimulatorState(config, clock=trio.current_time, on_change=changed)
        app = SimulatorApp(state, wall_clock=time.time)
        binds: list[str] = await nursery.start(partial(hypercorn.trio.serve, app, server_config))
        await nursery.start(sender.run, state, partial(app.webhook_body, base=binds[0]))
        await nursery.start(fetcher.run, state)
        task_status.started(binds[0])
