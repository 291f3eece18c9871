"""The event feed: every ending once, NOTIFY without personal data, and no gaps for readers.

The gap-free guarantee is the outbox visibility problem: a seq is taken before its
transaction commits, so transactions can commit out of seq order, and a reader that
resumes after the highest seq it saw skips every smaller one committed later. The
schema takes each seq under a lock held until commit (`append_job_event`). The
property test below drives transactions through every interleaving of "take a seq",
"commit" and "read" that Hypothesis finds, and checks that a resuming reader sees
every event once, in seq order; run against the same trigger without the lock it
finds a lost event, so the test has teeth.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import asyncpg
import attrs
import pytest
import trio
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from orchestrator.core import ErrorCode, JobStatus, StoredOutput
from orchestrator.db import Database, EventsPruned, InvalidRequest, schema_text

from . import pg

_LOCK_LINE = "    LOCK TABLE orchestrator.job_event_clock IN EXCLUSIVE MODE;\n"
_BLOCKED_S = 0.1


async def test_the_feed_and_the_notify_carry_each_ending_without_personal_data(
    db: Database, db_url: str
):
    """One NOTIFY per ending, with seq, job_id, status and code only; the feed has the user."""
    await db.grant("ana", 10, plan="pro")
    done, refused = [await db.submit_job("ana", f"secret prompt {n}") for n in range(2)]
    async with db.listen("orchestrator_job_events") as listener:
        await db.admit(done, deadline_s=60)
        await db.finish(
            done, JobStatus.SUCCEEDED, outputs=(StoredOutput(idx=0, url="https://cdn.test/0.png"),)
        )
        await db.reject(refused, ErrorCode.LIMIT_EXCEEDED, "month used up")
        heard = []
        with trio.fail_after(5):
            while len(heard) < 2:
                note = await listener.notifications.receive()
                heard.append(json.loads(note.payload))
    events = await db.job_events_after(0)
    assert [(e.job_id, e.status, e.error_code) for e in events] == [
        (done, JobStatus.SUCCEEDED, None),
        (refused, JobStatus.REJECTED, ErrorCode.LIMIT_EXCEEDED),
    ]
    assert heard == [
        {"seq": e.seq, "job_id": str(e.job_id), "status": e.status.value, "code": e.error_code}
        for e in events
    ]
    assert all(set(payload) == {"seq", "job_id", "status", "code"} for payload in heard)
    assert all(e.user_id == "ana" for e in events)
    assert await db.job_events_head() == events[-1].seq
    assert await db.job_events_after(events[-1].seq) == []


async def test_a_submitter_reads_the_feed_and_nothing_else_of_it(db: Database, db_url: str):
    """`job_events_after` and `job_events_head` are granted to submitter; the table is not."""
    await db.grant("bea", 5)
    job_id = await db.submit_job("bea", "x")
    await db.reject(job_id, ErrorCode.VALIDATION_ERROR, "no")
    rows = await pg.fetch(
        db_url, "SELECT * FROM orchestrator.job_events_after(0, 10)", role="submitter"
    )
    assert [(r["job_id"], r["status"], r["error_code"]) for r in rows] == [
        (job_id, "rejected", "VALIDATION_ERROR")
    ]
    assert set(rows[0].keys()) == {
        "seq",
        "job_id",
        "user_id",
        "status",
        "error_code",
        "finished_at",
    }
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pg.fetch(db_url, "SELECT * FROM orchestrator.job_events", role="submitter")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pg.fetch(db_url, "SELECT * FROM orchestrator.job_event_clock", role="submitter")


@pytest.mark.parametrize("role", ["submitter", "orchestrator_daemon", "orchestrator_operator"])
async def test_no_role_but_the_owner_can_take_the_feeds_lock_and_stall_endings(
    db_url: str, role: str
):
    """A login that could hold the commit-order lock could stop every job from ending."""
    for mode in ("ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pg.script(
                db_url,
                f"BEGIN; SET LOCAL ROLE {role};"
                f" LOCK TABLE orchestrator.job_event_clock IN {mode} MODE; COMMIT;",
            )


@pytest.mark.parametrize(("after", "limit"), [(-1, 10), (0, 0), (0, 10_001)])
async def test_a_read_outside_the_limits_is_refused(db: Database, after: int, limit: int):
    with pytest.raises(InvalidRequest):
        await db.job_events_after(after, limit=limit)


async def test_a_reader_behind_the_retention_is_told_instead_of_skipping(db: Database, db_url: str):
    """Pruned events raise EventsPruned for a cursor before them; later cursors read on."""
    await db.grant("cy", 10)
    jobs = [await db.submit_job("cy", f"p{n}") for n in range(3)]
    for job_id in jobs:
        await db.reject(job_id, ErrorCode.VALIDATION_ERROR, "no")
    events = await db.job_events_after(0)
    await pg.execute(
        db_url,
        "UPDATE orchestrator.job_events SET created_at = now() - interval '2 days' WHERE seq <= $1",
        events[1].seq,
    )
    assert await db.prune_job_events(older_than_s=86400) == 2
    with pytest.raises(EventsPruned):
        await db.job_events_after(0)
    with pytest.raises(EventsPruned):
        await db.job_events_after(events[0].seq)
    assert await db.job_events_after(events[1].seq) == [events[2]]


async def test_a_new_reader_of_a_feed_pruned_empty_starts_where_reads_work(
    db: Database, db_url: str
):
    """After a quiet spell longer than the retention the head is the pruned mark, not 0."""
    await db.grant("eli", 5)
    job_id = await db.submit_job("eli", "x")
    await db.reject(job_id, ErrorCode.VALIDATION_ERROR, "no")
    (event,) = await db.job_events_after(0)
    await pg.execute(
        db_url, "UPDATE orchestrator.job_events SET created_at = now() - interval '9 days'"
    )
    assert await db.prune_job_events(older_than_s=86400) == 1
    head = await db.job_events_head()
    assert head == event.seq
    assert await db.job_events_after(head) == []
    later = await db.submit_job("eli", "y")
    await db.reject(later, ErrorCode.VALIDATION_ERROR, "no")
    assert [e.job_id for e in await db.job_events_after(head)] == [later]


async def test_pruning_keeps_an_event_whose_callback_is_still_owed(db: Database, db_url: str):
    await db.grant("dee", 10)
    owed = await db.submit_job("dee", "x", callback_url="https://app.test/hook")
    plain = await db.submit_job("dee", "y")
    for job_id in (owed, plain):
        await db.reject(job_id, ErrorCode.VALIDATION_ERROR, "no")
    await pg.execute(
        db_url, "UPDATE orchestrator.job_events SET created_at = now() - interval '30 days'"
    )
    assert await db.prune_job_events(older_than_s=86400) == 1
    left = await pg.fetch(db_url, "SELECT job_id FROM orchestrator.job_events")
    assert [row["job_id"] for row in left] == [owed]
    (owed_row,) = await db.callbacks(failed=False)
    assert owed_row.job_id == owed
    assert await db.prune_job_events(older_than_s=86400) == 0  # still owed: still kept


# --- the gap-free property ---------------------------------------------------------


@attrs.frozen
class Step:
    """One move of the schedule: a transaction ends its job, takes its seq, commits; or a read."""

    kind: str  # "end", "seal", "commit" or "read"
    tx: int = -1


@st.composite
def schedules(draw: st.DrawFn) -> list[Step]:
    """Interleavings of 2 to 4 transactions' end → seal → commit, with reads anywhere."""
    count = draw(st.integers(2, 4))
    pending = {tx: ["end", "seal", "commit"] for tx in range(count)}
    steps: list[Step] = []
    while pending:
        choices = [("tx", tx) for tx in sorted(pending)] + [("read", -1)]
        kind, tx = draw(st.sampled_from(choices))
        if kind == "read":
            steps.append(Step("read"))
            continue
        steps.append(Step(pending[tx].pop(0), tx))
        if not pending[tx]:
            del pending[tx]
    return [*steps, Step("read")]


async def _run_schedule(url: str, steps: list[Step]) -> tuple[list[int], list[int]]:
    """Run the schedule on real connections; (seqs the reader saw, seqs the feed holds).

    "seal" is SET CONSTRAINTS ALL IMMEDIATE: the deferred trigger runs there, so the
    transaction holds its seq while still uncommitted, the window every commit has.
    A step that blocks on a lock is left running; that transaction's later steps
    wait behind it, and everything is finished after the schedule.
    """
    reader = await asyncpg.connect(url)
    transactions: dict[int, asyncpg.Connection] = {}
    running: dict[int, asyncio.Task[object]] = {}
    try:
        user = f"u{uuid.uuid4().hex[:8]}"
        await reader.execute("SELECT orchestrator.grant_credits($1, 100)", user)
        txs = {step.tx for step in steps if step.tx >= 0}
        jobs = {
            tx: await reader.fetchval("SELECT orchestrator.submit_job($1, $2)", user, f"job {tx}")
            for tx in txs
        }
        cursor = await reader.fetchval("SELECT orchestrator.job_events_head()")
        start = cursor
        seen: list[int] = []
        for step in steps:
            if step.kind == "read":
                rows = await reader.fetch(
                    "SELECT seq FROM orchestrator.job_events_after($1, 1000)", cursor
                )
                seen.extend(row["seq"] for row in rows)
                if rows:
                    cursor = rows[-1]["seq"]
                continue
            conn = transactions.get(step.tx)
            if conn is None:
                conn = transactions[step.tx] = await asyncpg.connect(url)
            statement = {
                "end": "BEGIN; UPDATE orchestrator.jobs SET status = 'rejected',"
                " error_code = 'VALIDATION_ERROR', error_message = 'x',"
                f" finished_at = clock_timestamp() WHERE id = '{jobs[step.tx]}'",
                "seal": "SET CONSTRAINTS ALL IMMEDIATE",
                "commit": "COMMIT",
            }[step.kind]
            before = running.get(step.tx)
            running[step.tx] = asyncio.ensure_future(_after(before, conn.execute(statement)))
            await asyncio.wait([running[step.tx]], timeout=_BLOCKED_S)
        await asyncio.wait_for(asyncio.gather(*running.values()), timeout=10)
        rows = await reader.fetch("SELECT seq FROM orchestrator.job_events_after($1, 1000)", cursor)
        seen.extend(row["seq"] for row in rows)
        held = await reader.fetch(
            "SELECT seq FROM orchestrator.job_events WHERE seq > $1 ORDER BY seq", start
        )
        return seen, [row["seq"] for row in held]
    finally:
        for task in running.values():
            task.cancel()
        for conn in transactions.values():
            conn.terminate()
        await reader.close()


async def _after(before: asyncio.Task[object] | None, then: object) -> object:
    if before is not None:
        await before
    return await then  # type: ignore[misc]


def _resumes_without_loss(url: str, steps: list[Step]) -> bool:
    seen, held = asyncio.run(_run_schedule(url, steps))
    return seen == held and seen == sorted(set(seen))


def _without_the_lock(url: str) -> None:
    """Replace the feed's trigger function with the same one minus its commit-order lock."""
    match = re.search(
        r"CREATE OR REPLACE FUNCTION orchestrator\.append_job_event\(\).*?\n\$\$;\n",
        schema_text(),
        re.DOTALL,
    )
    assert match is not None
    assert _LOCK_LINE in match.group(0)
    pg.fetch_sync(url, match.group(0).replace(_LOCK_LINE, ""))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=schedules())
def test_a_resuming_reader_never_misses_an_event_whatever_the_commit_order(
    db_url: str, steps: list[Step]
):
    assert _resumes_without_loss(db_url, steps)


def test_without_the_commit_order_lock_a_resuming_reader_loses_an_event(db_url: str):
    """The same property fails against the trigger minus its lock: the test has teeth."""
    _without_the_lock(db_url)
    lost = find(
        schedules(),
        lambda steps: not _resumes_without_loss(db_url, steps),
        settings=settings(max_examples=200, deadline=None, database=None),
    )
    kinds = [(step.kind, step.tx) for step in lost]
    assert ("read", -1) in kinds
