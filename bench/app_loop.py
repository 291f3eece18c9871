"""What the app's side of the loop costs per job: the event feed, and callbacks.

Three measurements on one real Postgres, each ending the same jobs with the feed's
trigger on ("events") and off ("today", as before the feed existed), in interleaved
repetitions, medians printed:

- group-committed finishes (`finish_jobs`, 64 a statement, as the daemon sends them):
  jobs/s, Postgres CPU and WAL bytes per job;
- single-job endings from 8 connections at once (`reject_job_v2`, each its own
  transaction): jobs/s and Postgres CPU per job, where the feed's commit-order lock
  and its NOTIFY serialize commits that were free to run side by side before;
- callbacks: the daemon's `CallbackSender` delivering every ending of jobs that named
  a callback URL to a receiver in another process: callbacks/s, the sender's CPU
  and Postgres CPU per callback.

    uv run python bench/app_loop.py [--jobs 2000] [--reps 3]

Postgres CPU is read from /proc for every process `pg_stat_activity` lists, so it
needs the server on this host (the embedded one by default). A shortfall is
reported, never raised.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import trio
from _setup import cpu_seconds, free_port, fresh_database, wait_listening

from orchestrator.callbacks import CallbackSender
from orchestrator.core import CallbackPolicy, HostList
from orchestrator.db import open_database
from orchestrator.logs import configure

SECRET = "whsec_" + "YmVuY2htYXJrLW9ubHktc2VjcmV0LTI0Ynl0ZXM="
_PER_USER = 500  # admitted at once per user: under a plan's 1000 seats
_RECEIVER = """
import sys, trio, hypercorn.config, hypercorn.trio
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            await send({"type": event["type"] + ".complete"})
            if event["type"] == "lifespan.shutdown":
                return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
config = hypercorn.config.Config()
config.bind = [f"127.0.0.1:{sys.argv[1]}"]
config.accesslog = None
trio.run(hypercorn.trio.serve, app, config)
"""


async def _postgres_cpu(conn: asyncpg.Connection) -> float:
    """CPU seconds so far of every Postgres process the server lists (this host only)."""
    total = 0.0
    for row in await conn.fetch("SELECT pid FROM pg_stat_activity"):
        try:
            total += cpu_seconds(row["pid"])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


async def _wal(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"))


async def _feed(conn: asyncpg.Connection, *, on: bool) -> None:
    state = "ENABLE" if on else "DISABLE"
    await conn.execute(f"ALTER TABLE orchestrator.jobs {state} TRIGGER jobs_append_event")


async def _queued(
    conn: asyncpg.Connection, n: int, *, callback: str | None = None, admit: bool
) -> list[uuid.UUID]:
    """`n` jobs of fresh users (admitted, unless not `admit`), each with `callback` if given."""
    plan = f"bench-{uuid.uuid4().hex[:6]}"
    await conn.execute(
        "INSERT INTO orchestrator.plans (name, monthly_generations, max_inflight,"
        " min_seconds_between, cost_per_output) VALUES ($1, 100000000, 1000, 0, 1)",
        plan,
    )
    ids: list[uuid.UUID] = []
    for start in range(0, n, _PER_USER):
        user = f"u{uuid.uuid4().hex[:10]}"
        await conn.execute("SELECT orchestrator.grant_credits($1, 1000000)", user)
        await conn.execute(
            "UPDATE orchestrator.accounts SET plan = $2 WHERE user_id = $1", user, plan
        )
        items = [
            {"user_id": user, "prompt": f"p{k}", "callback_url": callback}
            for k in range(start, min(n, start + _PER_USER))
        ]
        rows = await conn.fetch(
            "SELECT job_id FROM orchestrator.submit_jobs($1::jsonb) ORDER BY ordinal",
            json.dumps(items),
        )
        ids += [row["job_id"] for row in rows]
    if admit:
        for job_id in ids:
            await conn.fetchrow(
                "SELECT * FROM orchestrator.admit_job_v3($1, 600, NULL, NULL)", job_id
            )
    return ids


async def _measured(
    conn: asyncpg.Connection, n: int, work: Callable[[], Awaitable[None]]
) -> dict[str, float]:
    cpu, wal, start = await _postgres_cpu(conn), await _wal(conn), time.perf_counter()
    await work()
    elapsed = time.perf_counter() - start
    return {
        "jobs_per_s": n / elapsed,
        "pg_cpu_us_per_job": (await _postgres_cpu(conn) - cpu) / n * 1e6,
        "wal_bytes_per_job": (await _wal(conn) - wal) / n,
    }


async def _group_finishes(url: str, n: int, *, on: bool) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    try:
        await _feed(conn, on=on)
        ids = await _queued(conn, n, admit=True)
        batches = [ids[i : i + 64] for i in range(0, n, 64)]

        async def work() -> None:
            for batch in batches:
                payload = [
                    {"id": str(j), "status": "failed", "code": "UPSTREAM_ERROR", "message": "x"}
                    for j in batch
                ]
                await conn.fetch(
                    "SELECT f.* FROM jsonb_array_elements($1::jsonb) a(item) CROSS JOIN LATERAL"
                    " orchestrator.finish_job_v4((a.item->>'id')::uuid, a.item->>'status',"
                    " a.item->>'code', a.item->>'message', NULL, NULL, NULL) f",
                    json.dumps(payload),
                )

        return await _measured(conn, n, work)
    finally:
        await conn.close()


async def _concurrent_endings(url: str, n: int, *, on: bool, writers: int = 8) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    try:
        await _feed(conn, on=on)
        ids = await _queued(conn, n, admit=False)
        pool = await asyncpg.create_pool(url, min_size=writers, max_size=writers)
        try:

            async def writer(share: list[uuid.UUID]) -> None:
                async with pool.acquire() as mine:
                    for job_id in share:
                        await mine.fetchval(
                            "SELECT orchestrator.reject_job_v2($1, 'VALIDATION_ERROR', 'x',"
                            " NULL, NULL)",
                            job_id,
                        )

            async def work() -> None:
                await asyncio.gather(*(writer(ids[k::writers]) for k in range(writers)))

            return await _measured(conn, n, work)
        finally:
            await pool.close()
    finally:
        await conn.close()


async def _callbacks(url: str, n: int) -> dict[str, float]:
    port = free_port()
    receiver = await trio.lowlevel.open_process(
        [sys.executable, "-c", _RECEIVER, str(port)], stderr=subprocess.DEVNULL
    )
    try:
        await trio.to_thread.run_sync(lambda: asyncio.run(_ready_callbacks(url, n, port)))
        async with (
            open_database(url, min_size=2, max_size=8) as db,
            httpx.AsyncClient(trust_env=False, follow_redirects=False) as client,
        ):
            await wait_listening(port)
            sender = CallbackSender(
                db,
                client,
                member="bench",
                secret=SECRET,
                hosts=HostList.parse([f"http://127.0.0.1:{port}"]),
                policy=CallbackPolicy(),
            )
            pg_before = await trio.to_thread.run_sync(lambda: asyncio.run(_pg_cpu(url)))
            cpu, start = time.process_time(), time.perf_counter()
            with trio.move_on_after(120) as limit:
                while sender.attempts < n:
                    if not await sender.deliver_due():
                        await trio.sleep(0.01)
            elapsed = time.perf_counter() - start
            sender_cpu = time.process_time() - cpu
            pg_after = await trio.to_thread.run_sync(lambda: asyncio.run(_pg_cpu(url)))
        done = sender.attempts
        return {
            "callbacks_per_s": done / elapsed,
            "sender_cpu_ms_per_callback": sender_cpu / max(done, 1) * 1e3,
            "pg_cpu_us_per_callback": (pg_after - pg_before) / max(done, 1) * 1e6,
            "delivered": float(done),
            "unfinished": float(limit.cancelled_caught),
        }
    finally:
        receiver.terminate()
        with trio.move_on_after(10):
            await receiver.wait()


async def _ready_callbacks(url: str, n: int, port: int) -> None:
    """`n` ended jobs owing a callback, in slots the member "bench" holds."""
    conn = await asyncpg.connect(url)
    try:
        await _feed(conn, on=True)
        await conn.execute(
            "UPDATE orchestrator.partition_leases SET owner = 'bench', epoch = epoch + 1,"
            " taken_at = now(), expires_at = now() + interval '1 hour'"
        )
        ids = await _queued(conn, n, callback=f"http://127.0.0.1:{port}/hook", admit=False)
        await conn.execute(
            "SELECT orchestrator.reject_job_v2(id, 'VALIDATION_ERROR', 'x', NULL, NULL)"
            " FROM unnest($1::uuid[]) id",
            ids,
        )
    finally:
        await conn.close()


async def _pg_cpu(url: str) -> float:
    conn = await asyncpg.connect(url)
    try:
        return await _postgres_cpu(conn)
    finally:
        await conn.close()


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _print(title: str, today: dict[str, float], events: dict[str, float]) -> None:
    print(f"\n{title}")
    print(f"  {'':<22}{'today':>12}{'events':>12}{'events/today':>14}")
    for key, before in today.items():
        ratio = events[key] / before if before else float("nan")
        print(f"  {key:<22}{before:>12.1f}{events[key]:>12.1f}{ratio:>14.2f}")


def main() -> None:
    configure("warning", "json", stream=io.StringIO())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per measurement")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    args = parser.parse_args()
    with fresh_database() as url:
        runs: dict[str, list[dict[str, float]]] = {
            key: [] for key in ("group_today", "group_events", "single_today", "single_events")
        }
        for _ in range(args.reps):
            for on in (False, True):
                tag = "events" if on else "today"
                runs[f"group_{tag}"].append(asyncio.run(_group_finishes(url, args.jobs, on=on)))
                runs[f"single_{tag}"].append(
                    asyncio.run(_concurrent_endings(url, args.jobs, on=on))
                )
        medians = {key: _median(value) for key, value in runs.items()}
        print(f"{args.jobs} jobs per run, medians of {args.reps} interleaved runs")
        _print(
            "group-committed finishes (64 a statement)",
            medians["group_today"],
            medians["group_events"],
        )
        _print(
            "single-job endings, 8 connections", medians["single_today"], medians["single_events"]
        )
        callbacks = [trio.run(_callbacks, url, args.jobs) for _ in range(args.reps)]
        figures = _median(callbacks)
        print("\ncallbacks delivered by one sender to a receiver in another process")
        for key, value in figures.items():
            print(f"  {key:<30}{value:>12.2f}")
        if figures["unfinished"]:
            print("  (some runs did not deliver every callback within 120 s)")


if __name__ == "__main__":
    main()
