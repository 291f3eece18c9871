"""Partition leases and membership: the statements behind `orchestrator.leases`."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import attrs

from ._queries import queries

# The pool for reads by the CLI; a lease session's own connection for rounds.
Pool = asyncpg.Pool | asyncpg.Connection


@attrs.frozen
class HeldSlot:
    """A slot a member holds after a round, under `epoch`, valid `valid_s` more seconds."""

    slot: int
    epoch: int
    taken: bool
    valid_s: float


@attrs.frozen
class MemberRow:
    member_id: str
    info: Mapping[str, Any]
    alive: bool
    heartbeat_age_s: float
    slots: tuple[int, ...]
    max_epoch: int


@attrs.frozen
class OwnerSummary:
    """The slots one owner holds (None: nobody) and the work waiting in them."""

    owner: str | None
    slots: int
    max_epoch: int
    queued: int
    in_flight: int
    oldest_queued_s: float | None


async def lease_round(
    pool: Pool,
    member: str,
    ttl_s: float,
    keep: Sequence[int],
    take: Sequence[int],
    info: Mapping[str, Any],
) -> list[HeldSlot]:
    rows = await pool.fetch(
        queries()["lease_round"], member, ttl_s, list(keep), list(take), dict(info)
    )
    return [HeldSlot(r["slot"], r["epoch"], r["taken"], r["valid_s"]) for r in rows]


async def live_members(pool: Pool) -> tuple[list[str], int]:
    row = await pool.fetchrow(queries()["live_members"])
    assert row is not None  # noqa: S101  (an aggregate always returns a row)
    return list(row["members"]), row["unowned"]


async def leave(pool: Pool, member: str) -> int:
    released: int = await pool.fetchval(queries()["leave_cluster"], member)
    return released


async def prune(pool: Pool, older_than_s: float) -> int:
    pruned: int = await pool.fetchval(queries()["prune_lease_history"], older_than_s)
    return pruned


async def notify_slot(pool: Pool, job_id: uuid.UUID) -> None:
    await pool.execute(queries()["notify_slot"], job_id)


async def members(pool: Pool) -> list[MemberRow]:
    rows = await pool.fetch(queries()["cluster_members"])
    return [
        MemberRow(
            member_id=r["member_id"],
            info=dict(r["info"]),
            alive=r["alive"],
            heartbeat_age_s=r["heartbeat_age_s"],
            slots=tuple(r["slots"]),
            max_epoch=r["max_epoch"],
        )
        for r in rows
    ]


async def owners(pool: Pool) -> list[OwnerSummary]:
    rows = await pool.fetch(queries()["cluster_slots"])
    return [
        OwnerSummary(
            owner=r["owner"],
            slots=r["slots"],
            max_epoch=r["max_epoch"],
            queued=r["queued"],
            in_flight=r["in_flight"],
            oldest_queued_s=r["oldest_queued_s"],
        )
        for r in rows
    ]
