"""The CPU floor of a job's building blocks, each measured alone in this process.

    uv run python bench/floor.py [--n 3000]

A paid job in the daemon is, at the least: a few database round trips through the
trio-asyncio bridge, one provider create and one observation over HTTP, one download, one
file written, and a few log lines. This prints the CPU each costs here (process time per
operation, median of three runs), so the daemon's measured CPU per job can be read
against what its parts cost, and so a target below their sum is seen to need other parts.
The simulator answers instantly from its own process; its CPU per request is printed
beside the client's.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
import trio
from _setup import cpu_seconds, free_port, wait_listening

from orchestrator.core import PredictionRequest
from orchestrator.db import ensure_embedded_server, open_database, stop_embedded_server
from orchestrator.logs import configure
from orchestrator.outputs import FileObjects, render_key
from orchestrator.providers import ReplicateProvider
from orchestrator.transport import queued_client


async def _cpu_per_op(n: int, op: Callable[[], Awaitable[object]], concurrency: int = 16) -> float:
    """Microseconds of this process's CPU per call of `op`, `concurrency` at a time."""
    limiter = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            await op()

    runs = []
    for _ in range(3):
        start = time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
        runs.append((time.process_time() - start) / n * 1e6)
    return statistics.median(runs)


async def _measure(n: int, home: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    url = ensure_embedded_server(home)
    async with open_database(url, min_size=4, max_size=4) as db:
        await db.migrate()
        figures["database round trip through the bridge (ping)"] = await _cpu_per_op(n, db.ping)
        await db.grant("floor", 10)
        job_id = await db.submit_job("floor", "a lighthouse")
        figures["database read of a job row"] = await _cpu_per_op(n, lambda: db.job(job_id))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sim = await trio.lowlevel.open_process(
        [sys.executable, "-m", "orchestrator.cli", "simulate-provider", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_listening(port)
        async with queued_client(limit=32, timeout=10.0) as client:
            provider = ReplicateProvider(
                client,
                base_url=base,
                token="t",  # noqa: S106 -- the simulator takes any token
                model="sim/image",
            )
            request = PredictionRequest(uuid.uuid4(), "a lighthouse", {}, 1)
            made = await provider.submit(request)
            done = await provider.get(made.id)
            file_url = done.output[0] if done.output else f"{base}/files/{made.id}/0.png"
            for name, op in (
                ("provider create", lambda: provider.submit(request)),
                ("provider get", lambda: provider.get(made.id)),
                ("download of one PNG", lambda: client.get(file_url)),
            ):
                before = cpu_seconds(sim.pid)
                figures[f"{name} (client)"] = await _cpu_per_op(n, op)
                figures[f"{name} (simulator)"] = (cpu_seconds(sim.pid) - before) / (3 * n) * 1e6
    finally:
        sim.terminate()
        with trio.move_on_after(10):
            await sim.wait()
    storage = FileObjects(home / "objects", base_url="http://bench.test", signing_key=b"k" * 32)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2048
    counter = iter(range(10**9))
    figures["output file written (thread, fsync, rename)"] = await _cpu_per_op(
        n // 4,
        lambda: storage.put(
            render_key(uuid.uuid4(), next(counter), "png"), png, content_type="image/png"
        ),
    )
    configure("info", "json", stream=io.StringIO())
    log = structlog.get_logger("floor")

    async def log_line() -> None:
        log.info("job.finished", job_id="j", user_id="u", status="succeeded", duration_s=1.0)

    figures["one JSON log line"] = await _cpu_per_op(n, log_line)

    async def checkpoint() -> None:
        await trio.lowlevel.checkpoint()

    figures["a Trio task start and checkpoint"] = await _cpu_per_op(n, checkpoint)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="operations per measurement")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="orch-floor-", dir="/tmp"))
    try:
        figures = trio.run(_measure, args.n, home)
    finally:
        stop_embedded_server(home)
    width = max(map(len, figures))
    print(f"CPU per operation in this process, median of 3 runs of {args.n} (µs):")
    for name, micros in figures.items():
        print(f"  {name:<{width}}  {micros:8.0f}")


if __name__ == "__main__":
    main()
