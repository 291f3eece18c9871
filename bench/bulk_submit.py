"""Bulk submit against one-at-a-time submits: jobs per second into the database.

    uv run python bench/bulk_submit.py [--jobs 5000] [--batch 1000] [--runs 3]

Both sides go through the SQL API submitters use, on one connection, with an
idempotency key per job: `submit_job` once per job, and `submit_jobs` with
`--batch` items per call. Nothing runs the jobs. Each run uses a fresh set of
users; the figures are medians over `--runs`, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

import asyncpg
from _setup import fresh_database


async def _users(conn: asyncpg.Connection, run: str, count: int) -> list[str]:
    users = [f"bulk-{run}-{n}" for n in range(count)]
    for user in users:
        await conn.execute("SELECT orchestrator.grant_credits($1, 1000000, $2)", user, f"g-{user}")
    return users


def _items(users: list[str], jobs: int, tag: str) -> list[dict[str, object]]:
    return [
        {
            "user_id": users[n % len(users)],
            "prompt": f"a lighthouse, take {n}",
            "idempotency_key": f"{tag}-{n}",
        }
        for n in range(jobs)
    ]


async def _one_at_a_time(conn: asyncpg.Connection, items: list[dict[str, object]]) -> float:
    started = time.perf_counter()
    for item in items:
        await conn.fetchval(
            "SELECT orchestrator.submit_job($1, $2, '{}', 1, $3)",
            item["user_id"],
            item["prompt"],
            item["idempotency_key"],
        )
    return time.perf_counter() - started


async def _bulk(conn: asyncpg.Connection, items: list[dict[str, object]], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        rows = await conn.fetch(
            "SELECT job_id, code FROM orchestrator.submit_jobs($1::jsonb)",
            json.dumps(items[start : start + batch]),
        )
        refused = [row["code"] for row in rows if row["code"] is not None]
        if refused:
            print(f"refused in bulk: {refused[:3]}")
    return time.perf_counter() - started


async def _run(url: str, args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(url)
    singles: list[float] = []
    bulks: list[float] = []
    try:
        for run in range(args.runs):
            tag = uuid.uuid4().hex[:6]
            users = await _users(conn, f"{tag}{run}", 50)
            singles.append(
                args.jobs / await _one_at_a_time(conn, _items(users, args.jobs, "s" + tag))
            )
            bulks.append(
                args.jobs / await _bulk(conn, _items(users, args.jobs, "b" + tag), args.batch)
            )
    finally:
        await conn.close()
    single, bulk = statistics.median(singles), statistics.median(bulks)

    def runs(values: list[float]) -> str:
        return ", ".join(f"{value:,.0f}" for value in values)

    print(f"{args.jobs} jobs per side, {args.runs} runs, 50 users, batches of {args.batch}")
    print(f"submit_job, one per call:  {single:,.0f} jobs/s (runs: {runs(singles)})")
    print(f"submit_jobs, bulk:         {bulk:,.0f} jobs/s (runs: {runs(bulks)})")
    print(f"bulk / one at a time:      {bulk / single:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with fresh_database() as url:
        asyncio.run(_run(url, args))


if __name__ == "__main__":
    main()
