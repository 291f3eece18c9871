"""Shared set-up for benchmarks: a real Postgres and a fresh, migrated database."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import trio

from orchestrator.db import ensure_embedded_server, open_database, stop_embedded_server


def _with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


async def admin(url: str, sql: str) -> None:
    """Run fixed set-up SQL on its own connection."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_database() -> Iterator[str]:
    """DATABASE_URL's server or a temporary embedded one; a new migrated database on it."""
    home = None
    server = os.environ.get("DATABASE_URL")
    if server is None:
        home = Path(tempfile.mkdtemp(prefix="orch-bench-", dir="/tmp"))
        server = ensure_embedded_server(home)
    name = f"orch_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(server, f"CREATE DATABASE {name}"))
    url = _with_database(server, name)

    async def migrate() -> None:
        async with open_database(url, min_size=1, max_size=1) as db:
            await db.migrate()

    trio.run(migrate)
    try:
        yield url
    finally:
        asyncio.run(admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        if home is not None:
            stop_embedded_server(home)
            shutil.rmtree(home, ignore_errors=True)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_listening(port: int, timeout_s: float = 20.0) -> None:
    """Return once something accepts TCP connections on loopback `port`."""
    with trio.fail_after(timeout_s):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.1)
            else:
                await stream.aclose()
                return
