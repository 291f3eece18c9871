"""A bounded chaos soak: mixed traffic while the daemon and Postgres are killed and restarted.

    uv run python bench/soak.py [--seconds 60] [--users 40] [--rate 25]

The daemon and the simulator run as processes; the simulator fails, hangs,
rate-limits, answers garbage, and duplicates, reorders and drops webhooks. A
schedule SIGKILLs the daemon, SIGTERMs it, and crash-stops Postgres (SIGQUIT to
the postmaster: an immediate shutdown, crash recovery on restart), restarting
each. Traffic: duplicate bursts under one idempotency key, multi-output jobs,
cancels, rows the database or the daemon must refuse. At the end it waits a
bounded time for every job to end and prints what held: jobs left, the audit,
net charges against delivered outputs, duplicate runs, predictions left
running upstream, upstream successes never delivered, faults and recovery times.
It never raises on a shortfall: it reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import asyncpg
from _setup import free_port

from orchestrator.db import ensure_embedded_server, stop_embedded_server
from orchestrator.db._embedded import data_dir

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orchestrator.cli"]
SECRET = "whsec_" + base64.b64encode(b"soak-webhook-secret-of-32-bytes!").decode()
DEADLINE_S = 4.0


def _wait_gone(pid: int, limit_s: float = 15.0) -> None:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _get_json(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
            return json.loads(response.read())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


class Rig:
    """The processes under test and the faults done to them."""

    def __init__(self, home: Path, url: str, logs: Path, *, calm: bool = False) -> None:
        self.calm = calm
        self.home = home
        self.url = url
        self.logs = logs
        self.sim_port = free_port()
        self.http_port = free_port()
        self.daemon: subprocess.Popen[bytes] | None = None
        self.sim: subprocess.Popen[bytes] | None = None
        self.faults: dict[str, int] = {}
        self.recoveries: dict[str, list[float]] = {}

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.url,
            "REPLICATE_API_BASE": f"http://127.0.0.1:{self.sim_port}",
            "ORCHESTRATOR_MODEL": "sim/image",
            "ORCHESTRATOR_JOB_DEADLINE": str(DEADLINE_S),
            "ORCHESTRATOR_POLL_INITIAL": "0.1",
            "ORCHESTRATOR_POLL_MAX": "0.5",
            "ORCHESTRATOR_WEBHOOK_POLL": "1",
            "ORCHESTRATOR_SCAN_INTERVAL": "1",
            "ORCHESTRATOR_ORPHAN_GRACE": "3",
            # Sweeps (and reconciliation passes) every 2 s.
            "ORCHESTRATOR_STUCK_AFTER": "20",
            "ORCHESTRATOR_GRACE": "2",
            "ORCHESTRATOR_HTTP_PORT": str(self.http_port),
            "ORCHESTRATOR_PUBLIC_URL": f"http://127.0.0.1:{self.http_port}",
            "ORCHESTRATOR_WEBHOOK_SECRET": SECRET,
            "ORCHESTRATOR_LOG_FORMAT": "json",
            "ORCHESTRATOR_STORAGE_ROOT": str(self.home / "renders"),
        }

    def start_simulator(self) -> None:
        faults = [
            "--latency", "0.2", "2.0",
            "--failure-rate", "0.05", "--hang-rate", "0.03", "--rate-limit-rate", "0.05",
            "--server-error-rate", "0.05", "--malformed-rate", "0.02",
            "--webhook-duplicate-rate", "0.2",
            "--webhook-reorder-rate", "0.2", "--webhook-failure-rate", "0.1",
        ]  # fmt: skip
        behaved = ["--latency", "0.05", "0.8"]
        args = [
            *CLI, "simulate-provider", "--port", str(self.sim_port), "--seed", "5",
            "--webhook-secret", SECRET, *(behaved if self.calm else faults),
        ]  # fmt: skip
        self.sim = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def start_daemon(self) -> None:
        log = (self.logs / "daemon.log").open("ab")
        self.daemon = subprocess.Popen(
            [*CLI, "run"], env=self.env(), cwd=ROOT, stdout=log, stderr=log
        )

    def ready(self) -> bool:
        return _get_json(f"http://127.0.0.1:{self.http_port}/readyz") is not None  # 200 only

    def wait_ready(self, kind: str, since: float, limit_s: float = 30.0) -> None:
        while time.monotonic() - since < limit_s:
            if self.ready():
                self.recoveries.setdefault(kind, []).append(time.monotonic() - since)
                return
            time.sleep(0.1)
        self.recoveries.setdefault(kind, []).append(float("inf"))

    def fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1
        since = time.monotonic()
        if kind in {"daemon SIGKILL", "daemon SIGTERM"} and self.daemon is not None:
            self.daemon.send_signal(signal.SIGKILL if "KILL" in kind else signal.SIGTERM)
            try:
                self.daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
            self.start_daemon()
        elif kind == "postgres crash":
            pid = int((data_dir(self.home) / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown, as `pg_ctl -m immediate`
            _wait_gone(pid)
            env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
            for _ in range(10):  # a fresh process: the embedded package caches its server
                restart = subprocess.run(
                    [*CLI, "db", "url"],
                    env={**env, "ORCHESTRATOR_HOME": str(self.home)},
                    capture_output=True,
                    check=False,
                )
                if restart.returncode == 0:
                    break
                time.sleep(1.0)
        self.wait_ready(kind, since)

    def stop(self) -> None:
        for proc in (self.daemon, self.sim):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


async def _one(
    conn: asyncpg.Connection, rng: random.Random, user: str, counts: dict[str, int]
) -> None:
    """One action of the mix: a click burst, a multi-output job, a cancel, a bad row, a job."""
    roll = rng.random()
    if roll < 0.15:  # a burst of identical clicks
        key = uuid.uuid4().hex
        for _ in range(5):
            await conn.fetchval(
                "SELECT orchestrator.submit_job($1, 'a burst', '{}', 1, $2)", user, key
            )
        counts["duplicates"] += 4
    elif roll < 0.25:
        await conn.fetchval("SELECT orchestrator.submit_job($1, 'several', '{}', $2)", user, 3)
    elif roll < 0.32:
        await conn.execute(
            "SELECT orchestrator.request_cancel(id) FROM orchestrator.jobs"
            " WHERE user_id = $1 AND status IN ('queued', 'starting', 'processing')"
            " ORDER BY created_at DESC LIMIT 1",
            user,
        )
        counts["cancels"] += 1
        return
    elif roll < 0.37:
        bad = rng.choice([("x" * 5000, "{}"), ("ok", '{"num_images": 8}'), ("ok", '{"x": [1, 2]}')])
        try:
            await conn.fetchval("SELECT orchestrator.submit_job($1, $2, $3::jsonb)", user, *bad)
        except asyncpg.PostgresError:
            counts["refused_bad"] += 1
    else:
        await conn.fetchval("SELECT orchestrator.submit_job($1, 'a lake')", user)
    counts["submitted"] += 1


async def _traffic(url: str, users: list[str], seconds: float, rate: float) -> dict[str, int]:
    """Submit mixed work for `seconds`, surviving a database that comes and goes."""
    counts = dict.fromkeys(("submitted", "duplicates", "cancels", "refused_bad", "db_errors"), 0)
    rng = random.Random(3)
    end = time.monotonic() + seconds
    conn: asyncpg.Connection | None = None
    while time.monotonic() < end:
        await asyncio.sleep(rng.expovariate(rate))
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(url, timeout=2)
            await _one(conn, rng, rng.choice(users), counts)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            counts["db_errors"] += 1
            conn = None
            await asyncio.sleep(0.5)
    if conn is not None and not conn.is_closed():
        await conn.close()
    return counts


_CHECKS = {
    "jobs not terminal": "SELECT count(*) FROM orchestrator.jobs j"
    " JOIN orchestrator.job_statuses s USING (status) WHERE NOT s.terminal",
    "jobs whose net charge is not delivered x unit": """
        SELECT count(*) FROM orchestrator.jobs j
         WHERE j.cost IS NOT NULL AND j.status <> 'queued'
           AND -(SELECT coalesce(sum(l.amount), 0) FROM orchestrator.ledger l
                  WHERE l.job_id = j.id)
               <> (SELECT count(*) FROM orchestrator.outputs o WHERE o.job_id = j.id)
                  * (j.cost / j.num_outputs)""",
    "identical clicks that made two jobs": "SELECT count(*) FROM (SELECT 1 FROM orchestrator.jobs"
    " WHERE idempotency_key IS NOT NULL GROUP BY user_id, idempotency_key HAVING count(*) > 1) d",
    "users over their seats (now)": """
        SELECT count(*) FROM (
            SELECT j.user_id FROM orchestrator.jobs j
              JOIN orchestrator.accounts a USING (user_id)
              JOIN orchestrator.plans p ON p.name = a.plan
             WHERE j.status IN ('starting', 'processing')
             GROUP BY j.user_id, p.max_inflight HAVING count(*) > p.max_inflight) o""",
    "outputs stored": "SELECT count(*) FROM orchestrator.outputs",
}


async def _verdict(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {name: int(await conn.fetchval(sql)) for name, sql in _CHECKS.items()}
    finally:
        await conn.close()


async def _wait_terminal(url: str, limit_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        try:
            conn = await asyncpg.connect(url, timeout=2)
            try:
                left = await conn.fetchval(_CHECKS["jobs not terminal"])
            finally:
                await conn.close()
            if left == 0:
                break
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            pass
        await asyncio.sleep(0.5)
    return time.monotonic() - start


async def _setup(url: str, users: list[str]) -> None:
    conn = await asyncpg.connect(url)
    try:
        for user in users:
            await conn.fetchval("SELECT orchestrator.grant_credits($1, 1000)", user)
            await conn.execute(
                "UPDATE orchestrator.accounts SET plan = 'pro' WHERE user_id = $1", user
            )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--rate", type=float, default=25.0, help="submissions per second")
    parser.add_argument("--fault-every", type=float, default=8.0)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument(
        "--calm",
        action="store_true",
        help="no faults: a well-behaved simulator and no kills (the mixed load of issue 10)",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="orch-soak-", dir="/tmp"))
    url = ensure_embedded_server(home)
    subprocess.run([*CLI, "migrate"], env={**os.environ, "DATABASE_URL": url}, check=True)
    users = [f"soak-{n}" for n in range(args.users)]
    asyncio.run(_setup(url, users))
    rig = Rig(home, url, home, calm=args.calm)
    rig.start_simulator()
    rig.start_daemon()
    rig.wait_ready("start", time.monotonic())
    kinds = [] if args.calm else ["daemon SIGKILL", "postgres crash", "daemon SIGTERM"]
    started = time.monotonic()
    try:

        async def run() -> tuple[dict[str, int], float]:
            traffic = asyncio.create_task(_traffic(url, users, args.seconds, args.rate))
            n = 0
            while kinds and not traffic.done():
                await asyncio.sleep(args.fault_every)
                if not traffic.done():
                    await asyncio.to_thread(rig.fault, kinds[n % len(kinds)])
                    n += 1
            counts = await traffic
            for kind in kinds[n:]:  # every kind at least once, however slow recovery was
                await asyncio.to_thread(rig.fault, kind)
            return counts, await _wait_terminal(url, limit_s=DEADLINE_S * 10 + 30)

        counts, drain_s = asyncio.run(run())
        upstream_s = _wait_upstream_settled(rig, limit_s=30.0)
        verdict = asyncio.run(_verdict(url))
        stray = asyncio.run(_as_we_knew_them(url, _listed_running(rig)))
        causes = asyncio.run(_undelivered_by_cause(url, _listed(rig, {"succeeded"})))
        audit = subprocess.run(
            [*CLI, "audit"],
            env={**os.environ, "DATABASE_URL": url},
            capture_output=True,
            text=True,
            check=False,
        )
        sim = _get_json(f"http://127.0.0.1:{rig.sim_port}/_sim/stats") or {}
        upstream = sim.get("statuses", {}) if isinstance(sim.get("statuses"), dict) else {}
    finally:
        rig.stop()
        stop_embedded_server(home)
    figures = _figures(args, counts, drain_s, upstream_s, verdict, audit.returncode, upstream, rig)
    figures["still running upstream, as we knew them"] = stray
    figures["undelivered successes by cause"] = causes
    if args.json:
        print(json.dumps(figures | {"wall time (s)": round(time.monotonic() - started, 1)}))
    else:
        _report(args, counts, drain_s, verdict, audit.returncode, upstream, rig, started)


def _listed_running(rig: Rig) -> list[dict[str, object]]:
    """The simulator's predictions still starting or processing, from its listing."""
    return _listed(rig, {"starting", "processing"})


def _listed(rig: Rig, statuses: set[str]) -> list[dict[str, object]]:
    """The simulator's predictions in one of `statuses`, from its listing."""
    listed: list[dict[str, object]] = []
    page: object = f"http://127.0.0.1:{rig.sim_port}/v1/predictions"
    while isinstance(page, str) and len(listed) < 20000:
        read = _listing_page(page)
        if read is None:
            break
        results, page = read
        listed += [e for e in results if isinstance(e, dict) and e.get("status") in statuses]
    return listed


def _listing_page(url: str) -> tuple[list[object], object] | None:
    """One page's results and the next page's URL, or None after three tries.

    A busy simulator may miss the timeout or answer garbage (the soak asks it to).
    """
    request = urllib.request.Request(url, headers={"Authorization": "Bearer soak"})  # noqa: S310
    for _attempt in range(3):
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                body = json.loads(response.read())
        except (OSError, ValueError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("results"), list):
            return body["results"], body.get("next")
        time.sleep(1.0)
    return None


def _job_and_idx(entry: dict[str, object]) -> tuple[str | None, int]:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(str(entry.get("webhook") or "")).query)
    return (query.get("job_id") or [None])[0], int((query.get("idx") or ["0"])[0])


async def _undelivered_by_cause(url: str, succeeded: list[dict[str, object]]) -> dict[str, int]:
    """Why upstream successes were not delivered: the ending of the job each was made for."""
    conn = await asyncpg.connect(url)
    causes: dict[str, int] = {}
    try:
        for entry in succeeded:
            job_id, idx = _job_and_idx(entry)
            row = (
                await conn.fetchrow(
                    "SELECT j.status, j.error_code,"
                    " EXISTS (SELECT 1 FROM orchestrator.outputs o"
                    "   WHERE o.job_id = j.id AND o.idx = $2) AS delivered,"
                    " (SELECT p.prediction_id FROM orchestrator.predictions p"
                    "   WHERE p.job_id = j.id AND p.idx = $2) AS recorded"
                    " FROM orchestrator.jobs j WHERE j.id = $1::uuid",
                    job_id,
                    idx,
                )
                if job_id
                else None
            )
            if row is None:
                cause = "no such job"
            elif row["recorded"] == entry["id"] and row["delivered"]:
                continue
            elif row["delivered"]:
                cause = "a second run of a delivered output"
            else:
                code = f" ({row['error_code']})" if row["error_code"] else ""
                cause = f"job {row['status']}{code}"
                cause += "" if row["recorded"] == entry["id"] else ", prediction not recorded"
            causes[cause] = causes.get(cause, 0) + 1
    finally:
        await conn.close()
    return causes | {"listed as succeeded": len(succeeded)}


async def _as_we_knew_them(url: str, listed: list[dict[str, object]]) -> list[dict[str, object]]:
    """For a few predictions still running upstream: their job, and what we knew of them."""
    if not listed:
        return []
    conn = await asyncpg.connect(url)
    try:
        found = []
        for entry in listed[:5]:
            job_id, idx = _job_and_idx(entry)
            row = (
                await conn.fetchrow(
                    "SELECT j.status, j.error_code, j.num_outputs, $2 AS idx,"
                    " j.finished_at IS NOT NULL AS finished,"
                    " EXISTS (SELECT 1 FROM orchestrator.outputs o"
                    "   WHERE o.job_id = j.id AND o.idx = $2) AS delivered,"
                    " (SELECT prediction_id FROM orchestrator.predictions p"
                    "   WHERE p.job_id = j.id AND p.idx = $2) AS recorded,"
                    " (SELECT found_by || ':' || coalesce(status, '-') || ':' ||"
                    "         (cancel_sent_at IS NOT NULL)::text"
                    "    FROM orchestrator.upstream_predictions u"
                    "   WHERE u.prediction_id = $3) AS noted"
                    " FROM orchestrator.jobs j WHERE j.id = $1::uuid",
                    job_id,
                    idx,
                    entry["id"],
                )
                if job_id
                else None
            )
            found.append({"prediction": entry["id"], "job": job_id, **(dict(row) if row else {})})
        return found
    finally:
        await conn.close()


def _running(upstream: dict[str, object]) -> int:
    return int(upstream.get("starting", 0)) + int(upstream.get("processing", 0))  # type: ignore[call-overload]


def _wait_upstream_settled(rig: Rig, limit_s: float) -> float:
    """Give reconciliation a bounded time to cancel what still runs upstream."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        stats = _get_json(f"http://127.0.0.1:{rig.sim_port}/_sim/stats") or {}
        statuses = stats.get("statuses")
        if isinstance(statuses, dict) and _running(statuses) == 0:
            break
        time.sleep(0.5)
    return time.monotonic() - start


def _log_counts(path: Path) -> tuple[int, int]:
    text = path.read_text("utf-8", errors="replace") if path.exists() else ""
    return text.count('"level": "warning"'), text.count("Traceback")


def _figures(
    args, counts, drain_s, upstream_s, verdict, audit_rc, upstream, rig
) -> dict[str, object]:
    """The figures the report prints, as machine-readable values (for the suite's soak)."""
    warnings, tracebacks = _log_counts(rig.logs / "daemon.log")
    return {
        "seconds": args.seconds,
        **counts,
        "drain (s)": round(drain_s, 1),
        "upstream settle (s)": round(upstream_s, 1),
        **verdict,
        "audit clean": audit_rc == 0,
        "predictions still running upstream": _running(upstream),
        "upstream successes never delivered": max(
            int(upstream.get("succeeded", 0)) - verdict["outputs stored"], 0
        ),
        "upstream succeeded": int(upstream.get("succeeded", 0)),
        "faults": dict(rig.faults),
        "ready after (s, worst)": {k: round(max(v), 1) for k, v in rig.recoveries.items()},
        "warnings": warnings,
        "tracebacks": tracebacks,
    }


def _report(args, counts, drain_s, verdict, audit_rc, upstream, rig, started) -> None:
    running = _running(upstream)
    succeeded = int(upstream.get("succeeded", 0))
    warnings, tracebacks = _log_counts(rig.logs / "daemon.log")
    rows = [
        ("soak seconds / users / rate", f"{args.seconds:.0f} / {args.users} / {args.rate:.0f}/s"),
        *((name, str(value)) for name, value in counts.items()),
        ("drain after traffic (s)", f"{drain_s:.1f}"),
        *((name, str(value)) for name, value in verdict.items()),
        ("audit", "clean" if audit_rc == 0 else f"VIOLATIONS (exit {audit_rc})"),
        ("predictions still running upstream", str(running)),
        ("upstream successes never delivered", str(max(succeeded - verdict["outputs stored"], 0))),
        *((f"fault: {kind}", str(n)) for kind, n in rig.faults.items()),
        *(
            (
                f"ready after {kind} (s, median of {len(times)})",
                f"{sorted(times)[len(times) // 2]:.1f}",
            )
            for kind, times in rig.recoveries.items()
        ),
        ("daemon log: warnings / tracebacks", f"{warnings} / {tracebacks}"),
        ("wall time (s)", f"{time.monotonic() - started:.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
