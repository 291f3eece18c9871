"""Debits per second through the orchestrator's own code, beside raw asyncpg.

All sides run the same named statement (`debit_account`) against the same
server in the same run, with the same concurrency, each debit on its own job
spread over many accounts: the project's side goes Trio -> trio-asyncio
bridge (one crossing per debit) -> asyncpg pool; the raw side is asyncpg on
plain asyncio, once with asyncpg's default pool (which sends a reset query on
every release) and once with the same no-op reset hook the orchestrator uses,
so the bridge's own cost shows. Each round runs the sides in a rotated order
and the medians are reported, because this machine is noisy.

    uv run python bench/ledger.py [--debits 4000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import asyncpg
import trio
from _setup import fresh_database

from orchestrator.db import open_database
from orchestrator.db._queries import queries

USERS = 64


async def _prepare(url: str, count: int) -> list[tuple[str, uuid.UUID]]:
    """Accounts with plenty of credits, and one queued job per debit to come."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO orchestrator.accounts (user_id)"
            " SELECT 'u' || g FROM generate_series(1, $1) g ON CONFLICT DO NOTHING",
            USERS,
        )
        await conn.execute(
            "INSERT INTO orchestrator.ledger (user_id, kind, amount, ref)"
            " SELECT 'u' || g, 'grant', 1000000, 'bench:' || gen_random_uuid()"
            " FROM generate_series(1, $1) g",
            USERS,
        )
        await conn.execute("UPDATE orchestrator.accounts SET balance = balance + 1000000")
        rows = await conn.fetch(
            "INSERT INTO orchestrator.jobs (user_id, prompt)"
            " SELECT 'u' || (g % $2 + 1), 'bench' FROM generate_series(1, $1) g"
            " RETURNING user_id, id",
            count,
            USERS,
        )
    finally:
        await conn.close()
    return [(row["user_id"], row["id"]) for row in rows]


def project_side(url: str, work: list[tuple[str, uuid.UUID]], concurrency: int) -> float:
    async def main() -> float:
        async with open_database(url, min_size=concurrency, max_size=concurrency) as db:
            pending = iter(work)
            started = time.perf_counter()

            async def worker() -> None:
                for user, job in pending:
                    if await db.debit(user, job, 1) is None:
                        raise RuntimeError("debit refused")

            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(worker)
            return len(work) / (time.perf_counter() - started)

    return trio.run(main)


async def _no_reset(_conn: asyncpg.Connection) -> None:
    return None


def raw_side(
    url: str, work: list[tuple[str, uuid.UUID]], concurrency: int, *, skip_reset: bool = False
) -> float:
    statement = queries()["debit_account"]

    async def main() -> float:
        pool = await asyncpg.create_pool(
            url,
            min_size=concurrency,
            max_size=concurrency,
            reset=_no_reset if skip_reset else None,
        )
        try:
            pending = iter(work)
            started = time.perf_counter()

            async def worker() -> None:
                for user, job in pending:
                    if await pool.fetchval(statement, user, job, 1) is None:
                        raise RuntimeError("debit refused")

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return len(work) / (time.perf_counter() - started)
        finally:
            await pool.close()

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debits", type=int, default=4000, help="debits per side per round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sides = {
        "orchestrator": lambda url, work: project_side(url, work, args.concurrency),
        "raw asyncpg": lambda url, work: raw_side(url, work, args.concurrency),
        "raw asyncpg, no reset": lambda url, work: raw_side(
            url, work, args.concurrency, skip_reset=True
        ),
    }
    names = list(sides)
    rates: dict[str, list[float]] = {name: [] for name in names}
    with fresh_database() as url:
        for round_no in range(args.rounds):
            order = names[round_no % 3 :] + names[: round_no % 3]
            work = asyncio.run(_prepare(url, len(order) * args.debits))
            for n, name in enumerate(order):
                chunk = work[n * args.debits : (n + 1) * args.debits]
                rates[name].append(sides[name](url, chunk))
            print(
                f"round {round_no + 1}: " + "   ".join(f"{k} {rates[k][-1]:6.0f}/s" for k in names)
            )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name in names:
        print(f"median {name:<22} {medians[name]:8.0f} debits/s")
    for baseline in names[1:]:
        ratios = [o / r for o, r in zip(rates["orchestrator"], rates[baseline], strict=True)]
        print(
            f"ratio orchestrator / {baseline}: median {statistics.median(ratios):.2f}"
            f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )
    print(
        f"({args.debits} debits per side per round, "
        f"concurrency {args.concurrency}, {USERS} accounts)"
    )


if __name__ == "__main__":
    main()
