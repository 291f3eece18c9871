"""Serving the simulator over real HTTP with hypercorn's Trio worker."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Final

import hypercorn.config
import hypercorn.trio
import trio

from ._app import SimulatorApp
from ._config import SimulatorConfig
from ._state import SimulatorState

_LOGGER: Final = "orchestrator.simulator"


async def serve_simulator(
    config: SimulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    access_log: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a simulated Replicate until cancelled.

    Start it with ``base_url = await nursery.start(serve_simulator, config)``; port 0 (the
    default) picks a free port, and the URL reports the one bound. Hypercorn logs to the
    ``orchestrator.simulator`` logger, so it stays quiet unless the process configures
    logging; the per-request access log is off unless asked for.

    Args:
        config: What to simulate.
        host: Interface to bind; keep it on loopback.
        port: TCP port, 0 for any free one.
        access_log: Log every request to ``orchestrator.simulator.access``.
        task_status: Receives the base URL, e.g. ``"http://127.0.0.1:54321"``.
    """
    server_config = hypercorn.config.Config()
    server_config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    server_config.accesslog = logging.getLogger(f"{_LOGGER}.access") if access_log else None
    server_config.errorlog = logging.getLogger(_LOGGER)
    server_config.graceful_timeout = 0.5
    app = SimulatorApp(SimulatorState(config, clock=trio.current_time), wall_clock=time.time)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(hypercorn.trio.serve, app, server_config))
        task_status.started(binds[0])
