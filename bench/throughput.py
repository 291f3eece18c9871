"""End-to-end paid jobs per second through the real daemon, and admission latency.

Three processes on loopback: the provider simulator answering instantly, the
daemon (`orchestrator run`), and this submitter, which calls
`orchestrator.submit_job` from many connections as external submitters would.
A job counts when it is terminal (debit, provider round trip, finish and
ledger included).

Phase 1 (throughput): submit `--jobs` as fast as possible; jobs/s is from the
first submission to the last terminal status.
Phase 2 (latency): submit at each of `--rates` jobs/s for `--seconds`; admission
latency is `admitted_at - created_at` per job (the submission's commit to the
job's move to `starting`, both on the database clock).

    uv run python bench/throughput.py [--jobs 5000] [--users 200] [--rates 500,200] [--seconds 6]
        [--daemons N]

`--daemons N` runs N daemon processes on the one database; they split the
partition slots between them before the phases start, and the CPU figure is
their sum.

`--profile FILE` attaches py-spy (`uv pip install py-spy`) to the daemon during
phase 1 and writes collapsed stacks, to see where the daemon's time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
from _setup import admin, cpu_seconds, free_port, fresh_database

ROOT = Path(__file__).resolve().parents[1]


def _postgres_cpu_s() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(entry.name))
            except OSError:
                continue
    return total


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_now(daemons: list[subprocess.Popen[bytes]], sim: int) -> tuple[float, ...]:
    """CPU so far of the daemons (summed), the simulator, Postgres and this submitter."""
    daemon = sum(cpu_seconds(d.pid) for d in daemons)
    return daemon, cpu_seconds(sim), _postgres_cpu_s(), time.process_time()


async def _slots_split(url: str, daemons: int, limit_s: float) -> float:
    """Seconds until `daemons` members each own their share of the 1024 slots (or the limit)."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        try:
            conn = await asyncpg.connect(url)
            try:
                owners = await conn.fetch(
                    "SELECT owner, count(*) AS n FROM orchestrator.partition_leases"
                    " WHERE expires_at > clock_timestamp() GROUP BY owner"
                )
            finally:
                await conn.close()
            shares = [r["n"] for r in owners]
            if len(shares) == daemons and sum(shares) == 1024 and min(shares) > 512 / daemons:
                break
        except (OSError, asyncpg.PostgresError):
            pass
        await asyncio.sleep(0.2)
    return time.perf_counter() - started


async def _prepare(url: str, users: int) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO orchestrator.plans VALUES ('bench', 1000000000, 1000, 0, 1)"
            " ON CONFLICT DO NOTHING"
        )
        names = [f"bench-{n}" for n in range(users)]
        for name in names:
            await conn.execute("SELECT orchestrator.grant_credits($1, 1000000)", name)
        await conn.execute("UPDATE orchestrator.accounts SET plan = 'bench'")
    finally:
        await conn.close()
    return names


async def _submit(pool: asyncpg.Pool, users: list[str], count: int, rate: float | None) -> float:
    """Submit `count` jobs round-robin over users; returns when the last one committed."""
    interval = 1 / rate if rate else 0.0
    started = time.perf_counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)

    async def worker() -> None:
        while True:
            try:
                n = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if interval:
                delay = started + n * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await pool.fetchval(
                "SELECT orchestrator.submit_job($1, $2)", users[n % len(users)], f"bench {n}"
            )

    await asyncio.gather(*(worker() for _ in range(32)))
    return time.perf_counter() - started


async def _wait_all_terminal(
    conn: asyncpg.Connection, marker: str, limit_s: float
) -> tuple[float, int]:
    """When the last job ended (or the limit), and how many had not by then."""
    deadline = time.perf_counter() + limit_s
    left = -1
    while time.perf_counter() < deadline:
        left = await conn.fetchval(
            "SELECT count(*) FROM orchestrator.jobs WHERE prompt LIKE $1"
            " AND status NOT IN ('succeeded', 'failed', 'timed_out', 'canceled', 'rejected')",
            marker,
        )
        if left == 0:
            break
        await asyncio.sleep(0.05)
    return time.perf_counter(), left


async def _phase(url: str, users: list[str], count: int, rate: float | None, tag: str):
    pool = await asyncpg.create_pool(url, min_size=32, max_size=32)
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        submit_s = await _submit(pool, users, count, rate)
        # the prompts are "bench N"; tag phases by id range through created_at ordering
        done, unfinished = await _wait_all_terminal(conn, "bench %", limit_s=120)
        rows = await conn.fetch(
            "SELECT status, extract(epoch FROM admitted_at - created_at) * 1000 AS ms"
            " FROM orchestrator.jobs WHERE prompt LIKE 'bench %' AND id NOT IN"
            " (SELECT job_id FROM bench_seen)"
        )
        await conn.execute(
            "INSERT INTO bench_seen SELECT id FROM orchestrator.jobs WHERE prompt LIKE 'bench %'"
            " ON CONFLICT DO NOTHING"
        )
    finally:
        await conn.close()
        await pool.close()
    latencies = sorted(r["ms"] for r in rows if r["ms"] is not None)
    succeeded = sum(r["status"] == "succeeded" for r in rows)
    elapsed = done - started
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else p50
    ended = "all terminal" if unfinished == 0 else f"{unfinished} NOT FINISHED, gave up"
    print(
        f"{tag}: {len(rows)} jobs ({succeeded} succeeded) submitted in {submit_s:.2f} s,"
        f" {ended} after {elapsed:.2f} s -> {succeeded / elapsed:.0f} paid jobs/s end to end;"
        f" admission latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument(
        "--rates", default="500,200", help="comma-separated submission rates (jobs/s) for phase 2"
    )
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--profile", type=Path, help="record the daemon with py-spy (collapsed stacks) to this file"
    )
    parser.add_argument("--daemons", type=int, default=1, help="daemon processes (default 1)")
    args = parser.parse_args()
    sim_port = free_port()
    with fresh_database() as url:
        users = asyncio.run(_prepare(url, args.users))
        asyncio.run(admin(url, "CREATE TABLE bench_seen (job_id uuid PRIMARY KEY)"))
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "REPLICATE_API_BASE": f"http://127.0.0.1:{sim_port}",
            "ORCHESTRATOR_MODEL": "sim/image",
            "ORCHESTRATOR_POLL_INITIAL": "0.05",
            "ORCHESTRATOR_DB_POOL_SIZE": "20",
            "ORCHESTRATOR_LOG_LEVEL": "warning",
            # Split the slots in one round rather than gradually, before measuring.
            "ORCHESTRATOR_MAX_SLOT_MOVES": "1024",
        }
        cli = [sys.executable, "-m", "orchestrator.cli"]
        sim = subprocess.Popen(
            [*cli, "simulate-provider", "--port", str(sim_port), "--latency", "0", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        daemons = [
            subprocess.Popen(
                [*cli, "run"], env={**env, "ORCHESTRATOR_HTTP_PORT": str(free_port())}, cwd=ROOT
            )
            for _ in range(args.daemons)
        ]
        daemon = daemons[0]
        profiler = None
        try:
            split_s = asyncio.run(_slots_split(url, args.daemons, limit_s=60))
            print(f"{args.daemons} daemon(s) split the 1024 slots after {split_s:.1f} s")
            if args.profile:
                profiler = subprocess.Popen(
                    [
                        *("py-spy", "record", "--pid", str(daemon.pid), "--format", "raw"),
                        *("--rate", "200", "--nonblocking", "--output", str(args.profile)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)
            before = _cpu_now(daemons, sim.pid)
            asyncio.run(_phase(url, users, args.jobs, None, "throughput"))
            after = _cpu_now(daemons, sim.pid)
            spent = [b - a for a, b in zip(before, after, strict=True)]
            per_k = [1000 * x / args.jobs for x in spent]
            print(
                "CPU seconds per 1000 jobs in the throughput phase: "
                f"daemon {per_k[0]:.2f}, simulator {per_k[1]:.2f}, postgres {per_k[2]:.2f}, "
                f"submitter {per_k[3]:.2f}"
            )
            for rate in (float(r) for r in args.rates.split(",")):
                asyncio.run(_phase(url, users, int(rate * args.seconds), rate, f"at {rate:g}/s"))
            peak = max(_peak_rss_mib(d.pid) for d in daemons)
            print(f"daemon peak RSS {peak:.0f} MiB (the largest of {len(daemons)})")
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
            for each in daemons:
                each.send_signal(signal.SIGTERM)
            sim.send_signal(signal.SIGTERM)
            for each in daemons:
                each.wait(60)
            sim.wait(30)


if __name__ == "__main__":
    main()
