# ruff: noqa: INP001  (a standalone script an app developer copies, not a package of ours)
"""An app backend's side of the generation orchestrator, written against its SQL contract.

It uses only the contract in schema.sql (submit_jobs, job_events_after, job_events_head,
outputs, NOTIFY orchestrator_job_events), with asyncpg and httpx on plain asyncio: what an
app would write, importing nothing of the orchestrator's. The same program as
examples/node/src/submitter.ts, with the same summary line.

It submits a batch of jobs in one round trip, follows their endings through the event
feed, drops its LISTEN connection halfway and catches up from its cursor, fetches every
output by its public URL and checks its sha256 and size, then prints one JSON summary
line. The rules it shows:

- the cursor is the seq of the last feed row handled, never a NOTIFY payload: a
  notification is only a wake-up, and the feed decides what ended;
- LISTEN comes before the read that catches up, so nothing that ends in between goes
  unheard until the safety timer;
- an ending is handled (here: its outputs verified) before the cursor moves past it, so a
  crash or a reconnect reads it again rather than losing it.

Configuration (environment):
    DATABASE_URL           a login granted `submitter` (required)
    EXAMPLE_JOBS           jobs to submit, the refused one included (default 30)
    EXAMPLE_USERS          comma-separated users with accounts and credits
                           (default app-ana,app-bo,app-cy)
    EXAMPLE_BROKE_USER     a user whose balance cannot cover EXAMPLE_BROKE_OUTPUTS outputs:
                           its one job must end `rejected` (default app-broke; empty: none)
    EXAMPLE_BROKE_OUTPUTS  outputs that user's job asks for (default 5)
    EXAMPLE_TIMEOUT_S      give up after this many seconds (default 60)
    EXAMPLE_AWAY_S         seconds without a LISTEN connection halfway (default 1)
    EXAMPLE_POLL_S         safety timer: read the feed at least this often (default 1)

Exit status: 0 when every submitted job's ending was seen exactly once, in strictly
increasing seq order, and every output matched; 1 otherwise (the summary's `problems` say
why); 2 for a configuration error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final, Literal

import asyncpg
import httpx

CHANNEL: Final = "orchestrator_job_events"
PAGE: Final = 100
QUERY_TIMEOUT_S: Final = 10.0
FETCH_TIMEOUT_S: Final = 10.0
AWAY_POLL_S: Final = 0.1

HEAD: Final = "SELECT orchestrator.job_events_head()"
SUBMIT: Final = "SELECT ordinal, job_id, code, message FROM orchestrator.submit_jobs($1::jsonb)"
EVENTS_AFTER: Final = (
    "SELECT seq, job_id, user_id, status, error_code, finished_at"
    " FROM orchestrator.job_events_after($1, $2)"
)
OUTPUTS: Final = (
    "SELECT idx, public_url, sha256, size_bytes FROM orchestrator.outputs"
    " WHERE job_id = $1 AND deleted_at IS NULL ORDER BY idx"
)
NOW: Final = "SELECT clock_timestamp()"

Reason = Literal["submit", "notify", "timer", "catch_up"]


class ConfigError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Config:
    database_url: str
    jobs: int
    users: tuple[str, ...]
    broke_user: str | None
    broke_outputs: int
    timeout_s: float
    away_s: float
    poll_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Read the settings.

        Raises:
            ConfigError: DATABASE_URL missing, no users, or a knob that is not positive.
        """
        url = env.get("DATABASE_URL")
        if not url:
            raise ConfigError("DATABASE_URL is required: a login granted the submitter role")
        users = tuple(
            u.strip() for u in env.get("EXAMPLE_USERS", "app-ana,app-bo,app-cy").split(",")
        )
        users = tuple(u for u in users if u)
        if not users:
            raise ConfigError("EXAMPLE_USERS names no user")
        broke = env.get("EXAMPLE_BROKE_USER", "app-broke").strip()
        return cls(
            database_url=url,
            jobs=_whole(env, "EXAMPLE_JOBS", 30),
            users=users,
            broke_user=broke or None,
            broke_outputs=_whole(env, "EXAMPLE_BROKE_OUTPUTS", 5),
            timeout_s=_positive(env, "EXAMPLE_TIMEOUT_S", 60),
            away_s=_positive(env, "EXAMPLE_AWAY_S", 1),
            poll_s=_positive(env, "EXAMPLE_POLL_S", 1),
        )


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "")
    if not text:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number, got {text!r}")
    return value


def _whole(env: Mapping[str, str], name: str, default: int) -> int:
    value = _positive(env, name, default)
    if not value.is_integer():
        raise ConfigError(f"{name} must be a whole number, got {value}")
    return int(value)


def batch(config: Config, run_id: str) -> tuple[list[dict[str, Any]], str]:
    """The batch: ordinary jobs (some with several outputs), one refused later, one unknown user."""
    ordinary = config.jobs if config.broke_user is None else config.jobs - 1
    items: list[dict[str, Any]] = [
        {
            "user_id": config.users[(i - 1) % len(config.users)],
            "prompt": f"a lighthouse at dusk, study {i} ({run_id})",
            "params": {"seed": i},
            "num_outputs": (1, 2, 1, 3)[i % 4],
            "idempotency_key": f"{run_id}:{i}",
        }
        for i in range(1, ordinary + 1)
    ]
    if config.broke_user is not None:
        items.append(
            {
                "user_id": config.broke_user,
                "prompt": f"more than the balance covers ({run_id})",
                "params": {},
                "num_outputs": config.broke_outputs,
                "idempotency_key": f"{run_id}:broke",
            }
        )
    unknown = f"nobody-{run_id}"
    items.append(
        {
            "user_id": unknown,
            "prompt": f"a user without an account ({run_id})",
            "params": {},
            "num_outputs": 1,
            "idempotency_key": f"{run_id}:unknown",
        }
    )
    return items, unknown


@dataclasses.dataclass(frozen=True)
class Expected:
    user_id: str
    num_outputs: int
    meant_to_be_refused: bool


class GaveUpError(Exception):
    pass


@dataclasses.dataclass
class Run:
    """Everything one run saw; the summary is made from it."""

    timeout_s: float
    started: float = dataclasses.field(default_factory=time.monotonic)
    cursor: int = 0
    items: int = 0
    expected: dict[uuid.UUID, Expected] = dataclasses.field(default_factory=dict)
    refused_at_submit: list[dict[str, object]] = dataclasses.field(default_factory=list)
    refused_by_daemon: list[dict[str, object]] = dataclasses.field(default_factory=list)
    seen: dict[uuid.UUID, int] = dataclasses.field(default_factory=dict)
    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    events: list[tuple[int, str, str, str | None]] = dataclasses.field(default_factory=list)
    outputs: list[tuple[str, int, int, str]] = dataclasses.field(default_factory=list)
    mismatches: list[dict[str, object]] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    wakeups: Counter[str] = dataclasses.field(default_factory=Counter)
    heard_live: int = 0
    caught_up: int = 0
    ended_while_away: int = 0
    reconnects: int = 0
    notifications: int = 0
    foreign_events: int = 0
    seqs_in_order: bool = True
    duplicates: int = 0
    outputs_short: int = 0
    halfway_done: bool = False
    away_from: dt.datetime | None = None
    away_until: dt.datetime | None = None

    def pending(self) -> int:
        return len(self.expected) - len(self.seen)

    def halfway_due(self) -> bool:
        return (
            not self.halfway_done
            and self.pending() > 0
            and len(self.seen) >= len(self.expected) / 2
        )

    def remaining_s(self) -> float:
        return self.started + self.timeout_s - time.monotonic()

    def check_deadline(self) -> None:
        """Raises: GaveUpError: the run's time is up."""
        if self.remaining_s() <= 0:
            raise GaveUpError(
                f"gave up after {time.monotonic() - self.started:.1f} s: "
                f"{len(self.seen)} of {len(self.expected)} endings seen"
            )

    def summary(self) -> dict[str, object]:
        return {
            "example": "python",
            "ok": not self.problems and not self.mismatches,
            "items": self.items,
            "submitted": len(self.expected),
            "refused_at_submit": self.refused_at_submit,
            "endings": len(self.seen),
            "statuses": dict(sorted(self.statuses.items())),
            "refused_by_daemon": self.refused_by_daemon,
            "heard_live": self.heard_live,
            "caught_up": self.caught_up,
            "ended_while_away": self.ended_while_away,
            "reconnects": self.reconnects,
            "notifications": self.notifications,
            "wakeups": {"notify": self.wakeups["notify"], "timer": self.wakeups["timer"]},
            "foreign_events": self.foreign_events,
            "seqs_in_order": self.seqs_in_order,
            "duplicates": self.duplicates,
            "outputs_fetched": len(self.outputs),
            "outputs_short": self.outputs_short,
            "mismatches": self.mismatches,
            "problems": self.problems,
            "elapsed_s": round(time.monotonic() - self.started, 2),
            "events": self.events,
            "outputs": self.outputs,
        }


class Listener:
    """The LISTEN connection, on a connection of its own (a pooled one is handed to others)."""

    def __init__(self, conn: asyncpg.Connection, wake: asyncio.Event, run: Run) -> None:
        self.lost = False
        self._closing = False
        self._conn = conn
        self._wake = wake
        self._run = run

    @classmethod
    async def open(cls, url: str, wake: asyncio.Event, run: Run) -> Listener:
        conn = await asyncpg.connect(url, timeout=QUERY_TIMEOUT_S, command_timeout=QUERY_TIMEOUT_S)
        listener = cls(conn, wake, run)
        conn.add_termination_listener(listener.on_lost)
        try:
            await conn.add_listener(CHANNEL, listener.on_notify)
        except BaseException:
            await listener.close()
            raise
        return listener

    def on_notify(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        self._run.notifications += 1
        self._wake.set()

    def on_lost(self, _conn: object) -> None:
        if not self._closing:
            self.lost = True
            self._wake.set()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            await asyncio.wait_for(self._conn.close(), QUERY_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError):
            self._conn.terminate()  # already broken: drop it


class App:
    def __init__(
        self, config: Config, pool: asyncpg.Pool, http: httpx.AsyncClient, run: Run
    ) -> None:
        self._config = config
        self._pool = pool
        self._http = http
        self._run = run
        self._wake = asyncio.Event()
        self._listener: Listener | None = None

    async def main(self) -> None:
        self._run.cursor = await self._pool.fetchval(HEAD)
        listener = self._listener = await self._listen()
        await self._submit()
        reason: Reason = "submit"
        while self._run.pending() > 0:
            self._run.check_deadline()
            if listener.lost:
                # The connection broke under us: a new one, LISTEN first, then catch up.
                await listener.close()
                listener = self._listener = await self._listen()
                self._run.reconnects += 1
                reason = "catch_up"
            if await self._drain(reason) == "halfway":
                listener = await self._go_away_and_come_back(listener)
                reason = "catch_up"
                continue
            if self._run.pending() == 0:
                break
            reason = await self._wait()
            self._run.wakeups[reason] += 1

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()

    async def _wait(self) -> Reason:
        timeout = max(0.001, min(self._config.poll_s, self._run.remaining_s()))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return "timer"
        self._wake.clear()
        return "notify"

    async def _submit(self) -> None:
        run_id = uuid.uuid4().hex[:8]
        items, unknown = batch(self._config, run_id)
        self._run.items = len(items)
        rows = await self._pool.fetch(SUBMIT, json.dumps(items))
        for row in sorted(rows, key=lambda r: r["ordinal"]):
            item = items[row["ordinal"] - 1]
            refusal = {
                "ordinal": row["ordinal"],
                "user_id": item["user_id"],
                "code": row["code"],
                "message": row["message"],
            }
            if item["user_id"] == unknown:
                self._run.refused_at_submit.append(refusal)
                if row["code"] != "OR001":
                    self._run.problems.append(
                        f"a user without an account was answered {row['code'] or row['job_id']},"
                        " not OR001"
                    )
            elif row["job_id"] is None:
                self._run.refused_at_submit.append(refusal)
                self._run.problems.append(
                    f"{item['user_id']}'s job was refused at submit: {row['code']} {row['message']}"
                )
            else:
                self._run.expected[row["job_id"]] = Expected(
                    user_id=item["user_id"],
                    num_outputs=item["num_outputs"],
                    meant_to_be_refused=item["user_id"] == self._config.broke_user,
                )

    async def _drain(self, reason: Reason) -> Literal["halfway", "empty"]:
        """Read the feed from the cursor until it is empty, handling each row in seq order.

        Returns "halfway" as soon as half the endings are handled (once): the rest of that
        page is dropped unhandled, as a crash mid-page would, and read again by the
        catch-up, because the cursor only ever moves past a row once that row was handled.
        """
        while True:
            rows = await self._pool.fetch(EVENTS_AFTER, self._run.cursor, PAGE)
            if not rows:
                return "empty"
            for row in rows:
                self._run.check_deadline()
                if row["seq"] <= self._run.cursor:
                    self._run.seqs_in_order = False
                    self._run.problems.append(f"seq {row['seq']} came after {self._run.cursor}")
                    continue
                await self._handle(row, reason)
                self._run.cursor = row["seq"]
                if self._run.halfway_due():
                    self._run.halfway_done = True
                    return "halfway"

    async def _handle(self, row: asyncpg.Record, reason: Reason) -> None:
        run = self._run
        job_id: uuid.UUID = row["job_id"]
        job = run.expected.get(job_id)
        if job is None:
            run.foreign_events += 1  # another submitter's job: the feed is every ending
            return
        if job_id in run.seen:
            run.duplicates += 1
            run.problems.append(
                f"job {job_id} ended twice: seq {run.seen[job_id]} and {row['seq']}"
            )
            return
        run.seen[job_id] = row["seq"]
        run.events.append((row["seq"], str(job_id), row["status"], row["error_code"]))
        run.statuses[row["status"]] += 1
        if reason == "catch_up":
            run.caught_up += 1
            if (
                run.away_from
                and run.away_until
                and run.away_from < row["finished_at"] <= run.away_until
            ):
                run.ended_while_away += 1
        else:
            run.heard_live += 1
        if row["status"] == "rejected":
            run.refused_by_daemon.append(
                {
                    "job_id": str(job_id),
                    "user_id": row["user_id"],
                    "code": row["error_code"],
                }
            )
        if job.meant_to_be_refused and row["status"] != "rejected":
            run.problems.append(f"the job meant to be refused ended {row['status']}")
        if row["status"] == "succeeded":
            await self._verify_outputs(job_id, job.num_outputs)

    async def _verify_outputs(self, job_id: uuid.UUID, asked: int) -> None:
        rows = await self._pool.fetch(OUTPUTS, job_id)
        self._run.outputs_short += max(0, asked - len(rows))  # a partial success delivers fewer
        if not rows:
            self._run.problems.append(f"job {job_id} succeeded with no outputs")
        for output in rows:
            fault = await self._fetch_and_check(job_id, output)
            if fault is not None:
                self._run.mismatches.append(
                    {
                        "job_id": str(job_id),
                        "idx": output["idx"],
                        "reason": fault,
                    }
                )

    async def _fetch_and_check(self, job_id: uuid.UUID, output: asyncpg.Record) -> str | None:
        """Fetch one output by its public URL; None when its bytes match its sha256 and size."""
        if output["public_url"] is None:
            return "no public_url"
        try:
            response = await self._http.get(output["public_url"])
        except httpx.HTTPError as exc:
            return f"GET failed: {exc!r}"
        if response.status_code != httpx.codes.OK:
            return f"GET answered {response.status_code}"
        body = response.content
        sha256 = hashlib.sha256(body).hexdigest()
        self._run.outputs.append((str(job_id), output["idx"], len(body), sha256))
        if sha256 != output["sha256"]:
            return f"sha256 {sha256}, the row says {output['sha256']}"
        if len(body) != output["size_bytes"]:
            return f"{len(body)} bytes, the row says {output['size_bytes']}"
        return None

    async def _go_away_and_come_back(self, listener: Listener) -> Listener:
        """Halfway: no LISTEN connection for a while, as after a deploy or a network blip.

        Away for EXAMPLE_AWAY_S, and on until the feed's head has moved past the cursor, so
        that the catch-up always has something to show; the head is only looked at, and the
        cursor still moves only through rows read.

        Raises:
            GaveUpError: the run's time ran out while away.
        """
        await listener.close()
        self._run.away_from = await self._pool.fetchval(NOW)
        await asyncio.sleep(min(self._config.away_s, max(0.0, self._run.remaining_s())))
        while await self._pool.fetchval(HEAD) <= self._run.cursor:
            self._run.check_deadline()
            await asyncio.sleep(AWAY_POLL_S)
        listener = self._listener = await self._listen()  # LISTEN before the catch-up read
        self._run.away_until = await self._pool.fetchval(NOW)
        self._run.reconnects += 1
        return listener

    async def _listen(self) -> Listener:
        """A new LISTEN connection, retried with backoff until the deadline."""
        backoff = 0.2
        while True:
            try:
                return await Listener.open(self._config.database_url, self._wake, self._run)
            except (OSError, TimeoutError, asyncpg.PostgresError):
                if self._run.remaining_s() <= backoff:
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)


async def run_app(config: Config) -> Run:
    run = Run(timeout_s=config.timeout_s)
    try:
        # A few seconds past the run's own deadline: whatever hangs, the summary still comes.
        async with asyncio.timeout(config.timeout_s + 15):
            await _serve(config, run)
    except GaveUpError as exc:
        run.problems.append(str(exc))
    except TimeoutError:
        run.problems.append("did not finish within the timeout plus its grace; stopped")
    except Exception as exc:  # noqa: BLE001  (the top of the program: the summary says what broke)
        run.problems.append(f"failed: {exc!r}")
    return run


async def _serve(config: Config, run: Run) -> None:
    async with (
        asyncpg.create_pool(
            config.database_url,
            min_size=1,
            max_size=4,
            timeout=QUERY_TIMEOUT_S,
            command_timeout=QUERY_TIMEOUT_S,
        ) as pool,
        httpx.AsyncClient(timeout=FETCH_TIMEOUT_S) as http,
    ):
        app = App(config, pool, http, run)
        try:
            await app.main()
        finally:
            await app.close()


def main() -> int:
    try:
        config = Config.from_env(os.environ)
    except ConfigError as exc:
        sys.stderr.write(f"submitter: {exc}\n")
        return 2
    run = asyncio.run(run_app(config))
    summary = run.summary()
    sys.stdout.write(json.dumps(summary) + "\n")
    if not summary["ok"]:
        reasons = [*run.problems, *(json.dumps(m) for m in run.mismatches)]
        sys.stderr.write(f"submitter: {'; '.join(reasons)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
