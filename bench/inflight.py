"""Many jobs in flight at a realistic provider latency: timeouts, settles, CPU, memory.

    uv run python bench/inflight.py [--jobs 2000] [--users 200] [--latency 20 30]
                                    [--mode poll|webhook] [--deadline 120] [--json]
                                    [--env ORCHESTRATOR_X=Y ...]

Three processes on loopback, as an operator runs them: the provider simulator
(`orchestrator simulate-provider --latency LO HI`), the daemon (`orchestrator
run`) and this driver, on an embedded Postgres in a temporary home. Every user
is on a plan with enough seats for its share of the jobs and plenty of credits,
so nothing should be refused. All jobs are submitted at once through
`orchestrator.submit_job` (batched), then the driver waits, bounded by deadline
+ latency + 60 s, for every job to end, sampling each second: jobs by status,
the CPU time of the daemon, the simulator and Postgres (all processes of its data
directory), the daemon's RSS and its `orchestrator_jobs_running` gauge.

In `--mode webhook` the daemon gets ORCHESTRATOR_PUBLIC_URL (its own HTTP port)
and a signing secret, which the simulator signs with; in `--mode poll` it has
neither and polls. `--env KEY=VALUE` passes extra settings to the daemon.

It prints jobs by final status, timeouts (the target is 0), settles retried
(`job.settle_failed`) and abandoned (`job.settle_abandoned`, from the daemon's
JSON log), peak in flight, daemon CPU per in-flight job per second, CPU per job
of each process, peak RSS, and the wall time from the first submission to the
last terminal job (of those that ended) against the ideal (the admission span
plus the highest latency). It never raises on a shortfall: it reports the jobs
that did not end, and always stops the processes and the embedded server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
from _setup import free_port

from orchestrator.db import ensure_embedded_server, stop_embedded_server
from orchestrator.db._embedded import data_dir
from orchestrator.settings import environment_variables

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orchestrator.cli"]
SECRET = "whsec_" + base64.b64encode(b"inflight-bench-webhook-secret-32").decode()
TERMINAL = ("succeeded", "failed", "timed_out", "canceled", "rejected")
IN_FLIGHT = ("starting", "processing")
PLAN = "bench_inflight"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state is [0], ppid [1])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_s(pid: int | None, *, children: bool = True) -> float:
    """utime + stime, and with `children` the reaped children's times too."""
    fields = _stat(pid) if pid is not None else None
    if fields is None:
        return math.nan
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def _postmaster_pid(home: Path) -> int | None:
    try:
        return int((data_dir(home) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _postgres_cpu_s(postmaster: int | None) -> float:
    """The postmaster (with its reaped backends) plus every live child of it."""
    if postmaster is None:
        return math.nan
    total = _cpu_s(postmaster)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[1] == str(postmaster):
                total += _cpu_s(int(entry.name))
    return total


def _memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB; NaN once the process is gone."""
    found = {"VmRSS:": math.nan, "VmHWM:": math.nan}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0] + ":"
            if key in found:
                found[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return found["VmRSS:"], found["VmHWM:"]


def _get(url: str, timeout: float = 1.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return bytes(response.read())
    except (OSError, ValueError):
        return None


def _jobs_running_gauge(http_port: int) -> float | None:
    body = _get(f"http://127.0.0.1:{http_port}/metrics")
    if body is None:
        return None
    for line in body.decode("utf-8", errors="replace").splitlines():
        if line.startswith("orchestrator_jobs_running"):
            with contextlib.suppress(ValueError, IndexError):
                return float(line.split()[-1])
    return None


def _parse_env(pairs: list[str]) -> dict[str, str]:
    extra: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env wants KEY=VALUE, got {pair!r}")
        extra[key] = value
    return extra


class Rig:
    """The simulator and the daemon as processes, on one embedded Postgres."""

    def __init__(self, args: argparse.Namespace, home: Path, url: str) -> None:
        self.args = args
        self.home = home
        self.url = url
        self.sim_port = free_port()
        self.http_port = free_port()
        self.log_path = home / "daemon.log"
        self.sim: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None

    def daemon_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "DATABASE_URL": self.url,
            "ORCHESTRATOR_HOME": str(self.home),
            "REPLICATE_API_BASE": f"http://127.0.0.1:{self.sim_port}",
            "ORCHESTRATOR_MODEL": "sim/image",
            "ORCHESTRATOR_JOB_DEADLINE": str(self.args.deadline),
            "ORCHESTRATOR_HTTP_PORT": str(self.http_port),
            "ORCHESTRATOR_STORAGE_ROOT": str(self.home / "renders"),
            "ORCHESTRATOR_LOG_FORMAT": "json",
            "ORCHESTRATOR_LOG_LEVEL": "warning",
        }
        for key in ("ORCHESTRATOR_PUBLIC_URL", "ORCHESTRATOR_WEBHOOK_SECRET"):
            env.pop(key, None)
        if self.args.mode == "webhook":
            env["ORCHESTRATOR_PUBLIC_URL"] = f"http://127.0.0.1:{self.http_port}"
            env["ORCHESTRATOR_WEBHOOK_SECRET"] = SECRET
        env.update(self.args.extra_env)
        return env

    def start(self) -> str | None:
        """Start both processes; None when the daemon is ready, else why not."""
        lo, hi = self.args.latency
        sim_args = [
            *CLI, "simulate-provider", "--port", str(self.sim_port),
            "--latency", str(lo), str(hi), "--seed", "10",
        ]  # fmt: skip
        if self.args.mode == "webhook":
            sim_args += ["--webhook-secret", SECRET]
        with (self.home / "simulator.log").open("ab") as sim_log:
            self.sim = subprocess.Popen(sim_args, cwd=ROOT, stdout=sim_log, stderr=sim_log)
        with self.log_path.open("ab") as log:
            self.daemon = subprocess.Popen(
                [*CLI, "run"], env=self.daemon_env(), cwd=ROOT, stdout=log, stderr=log
            )
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.daemon.poll() is not None:
                return f"the daemon exited with status {self.daemon.returncode} at start"
            if self.sim.poll() is not None:
                return f"the simulator exited with status {self.sim.returncode} at start"
            daemon_ready = _get(f"http://127.0.0.1:{self.http_port}/readyz") is not None
            if daemon_ready and _get(f"http://127.0.0.1:{self.sim_port}/_sim/stats") is not None:
                return None
            time.sleep(0.1)
        return "the daemon was not ready within 30 s"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def sim_stats(self) -> dict[str, Any]:
        body = _get(f"http://127.0.0.1:{self.sim_port}/_sim/stats", timeout=5)
        try:
            return dict(json.loads(body)) if body else {}
        except ValueError:
            return {}

    def processes(self) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
        """(daemon, simulator), once started."""
        if self.daemon is None or self.sim is None:
            raise RuntimeError("the rig is not started")
        return self.daemon, self.sim

    def stop(self) -> None:
        for proc in (self.daemon, self.sim):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.daemon, self.sim):
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def _prepare(url: str, users: list[str], jobs: int) -> None:
    """A plan with a seat for every job a user has (and one over), and ample credits."""
    seats = min(1000, math.ceil(jobs / len(users)) + 1)  # the schema allows 1..1000
    grant = 10 * math.ceil(jobs / len(users)) + 100
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO orchestrator.plans"
            " (name, monthly_generations, max_inflight, min_seconds_between, cost_per_output)"
            " VALUES ($1, 2000000000, $2, 0, 1) ON CONFLICT (name) DO UPDATE"
            " SET monthly_generations = EXCLUDED.monthly_generations,"
            " max_inflight = EXCLUDED.max_inflight, min_seconds_between = 0",
            PLAN,
            seats,
        )
        await conn.execute(
            "SELECT orchestrator.grant_credits(u, $2) FROM unnest($1::text[]) AS t(u)",
            users,
            grant,
        )
        await conn.execute(
            "UPDATE orchestrator.accounts SET plan = $1 WHERE user_id = ANY($2::text[])",
            PLAN,
            users,
        )
    finally:
        await conn.close()


async def _submit(url: str, users: list[str], jobs: int, batch: int) -> dict[str, Any]:
    """Every job through `orchestrator.submit_job`, in batches on a few connections."""
    chunks = [range(start, min(start + batch, jobs)) for start in range(0, jobs, batch)]
    errors: list[str] = []
    submitted = 0

    async def worker(todo: list[range]) -> None:
        nonlocal submitted
        conn = await asyncpg.connect(url)
        try:
            while todo:
                chunk = todo.pop(0)
                try:
                    await conn.execute(
                        "SELECT orchestrator.submit_job(u, p)"
                        " FROM unnest($1::text[], $2::text[]) AS t(u, p)",
                        [users[n % len(users)] for n in chunk],
                        [f"inflight {n}" for n in chunk],
                    )
                    submitted += len(chunk)
                except asyncpg.PostgresError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            await conn.close()

    started = time.monotonic()
    todo = list(chunks)
    await asyncio.gather(*(worker(todo) for _ in range(min(4, len(chunks)))))
    return {
        "submitted": submitted,
        "errors": errors,
        "started": started,
        "span_s": time.monotonic() - started,
    }


class Sampler:
    """One sample a second of the jobs, the processes' CPU, the daemon's memory and gauge."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.postmaster = _postmaster_pid(rig.home)
        self.samples: list[dict[str, Any]] = []
        self.peak_rss = 0.0

    def cpu(self) -> dict[str, float]:
        daemon, sim = self.rig.processes()
        return {
            "daemon": _cpu_s(daemon.pid),
            "postgres": _postgres_cpu_s(self.postmaster),
            "simulator": _cpu_s(sim.pid),
        }

    async def take(self, conn: asyncpg.Connection) -> dict[str, Any]:
        daemon, _ = self.rig.processes()
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM orchestrator.jobs"
            " WHERE prompt LIKE 'inflight %' GROUP BY status"
        )
        rss, hwm = _memory_mib(daemon.pid)
        self.peak_rss = max(self.peak_rss, *(x for x in (rss, hwm) if not math.isnan(x)))
        by_status = {r["status"]: int(r["n"]) for r in rows}
        sample = {
            "t": time.monotonic(),
            "jobs": by_status,
            "in_flight": sum(by_status.get(s, 0) for s in IN_FLIGHT),
            "open": sum(n for s, n in by_status.items() if s not in TERMINAL),
            "cpu": self.cpu(),
            "rss_mib": rss,
            "gauge": await asyncio.to_thread(_jobs_running_gauge, self.rig.http_port),
        }
        self.samples.append(sample)
        return sample


async def _drive(rig: Rig, users: list[str]) -> dict[str, Any]:
    """Submit everything, then sample each second until all jobs end or the bound passes."""
    args = rig.args
    sampler = Sampler(rig)
    conn = await asyncpg.connect(rig.url)
    try:
        await sampler.take(conn)  # the baseline, just before the first submission
        submit = asyncio.create_task(_submit(rig.url, users, args.jobs, args.batch))
        hi = args.latency[1]
        bound_s = args.deadline + hi + 60
        end = math.inf
        stop_reason = "every job ended"
        daemon, _ = rig.processes()
        while True:
            await asyncio.sleep(1.0)
            sample = await sampler.take(conn)
            if submit.done() and end == math.inf:
                end = time.monotonic() + bound_s
            if submit.done() and sample["open"] == 0:
                break
            if daemon.poll() is not None:
                stop_reason = (
                    f"the daemon exited with status {daemon.returncode}: {rig.log_tail(5)}"
                )
                break
            if time.monotonic() > end:
                stop_reason = f"the bound of {bound_s:.0f} s after the last submission passed"
                break
        if not submit.done():
            submit.cancel()
        submission = await submit if submit.done() and not submit.cancelled() else {}
        final = await _final(conn)
    finally:
        await conn.close()
    return {"sampler": sampler, "submission": submission, "final": final, "stop": stop_reason}


async def _final(conn: asyncpg.Connection) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT status, error_code, count(*) AS n FROM orchestrator.jobs"
        " WHERE prompt LIKE 'inflight %' GROUP BY 1, 2 ORDER BY 3 DESC"
    )
    times = await conn.fetchrow(
        "SELECT extract(epoch FROM max(finished_at) - min(created_at)) AS wall,"
        " extract(epoch FROM max(created_at) - min(created_at)) AS submit_span,"
        " count(*) FILTER (WHERE finished_at IS NOT NULL) AS finished"
        " FROM orchestrator.jobs WHERE prompt LIKE 'inflight %'"
    )
    waits = await conn.fetch(
        "SELECT extract(epoch FROM admitted_at - created_at) AS queued,"
        " extract(epoch FROM finished_at - admitted_at) AS flight"
        " FROM orchestrator.jobs WHERE prompt LIKE 'inflight %' AND admitted_at IS NOT NULL"
    )
    return {
        "by_status": [(r["status"], r["error_code"], int(r["n"])) for r in rows],
        "wall_s": float(times["wall"]) if times["wall"] is not None else None,
        "submit_span_db_s": float(times["submit_span"] or 0.0),
        "queued_s": sorted(float(r["queued"]) for r in waits),
        "flight_s": sorted(float(r["flight"]) for r in waits if r["flight"] is not None),
    }


def _log_events(path: Path) -> tuple[Counter[str], int]:
    """Warning-and-above events of the daemon's JSON log, and lines that are not JSON."""
    events: Counter[str] = Counter()
    other = 0
    try:
        lines = path.read_text("utf-8", errors="replace").splitlines()
    except OSError:
        return events, 0
    for line in lines:
        try:
            record = json.loads(line)
            events[str(record.get("event", "?"))] += 1
        except (ValueError, AttributeError):
            other += 1
    return events, other


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(len(values) * q))]


def _figures(args: argparse.Namespace, run: dict[str, Any], rig: Rig) -> dict[str, Any]:
    sampler: Sampler = run["sampler"]
    samples = sampler.samples
    final = run["final"]
    events, non_json = _log_events(rig.log_path)
    status_counts: Counter[str] = Counter()
    for status, _code, n in final["by_status"]:
        status_counts[status] += n
    first, last = samples[0], samples[-1]
    spent = {k: last["cpu"][k] - first["cpu"][k] for k in first["cpu"]}
    job_seconds = sum(
        (b["t"] - a["t"]) * (a["in_flight"] + b["in_flight"]) / 2
        for a, b in itertools.pairwise(samples)
    )
    elapsed = last["t"] - first["t"]
    gauges = [s["gauge"] for s in samples if s["gauge"] is not None]
    submission = run["submission"]
    hi = args.latency[1]
    span = submission.get("span_s")
    ideal = span + hi if span is not None else None
    jobs = args.jobs

    def per_job_ms(seconds: float) -> float:
        return round(1000 * seconds / jobs, 3) if jobs else math.nan

    return {
        "jobs": jobs,
        "users": args.users,
        "latency (s)": list(args.latency),
        "mode": args.mode,
        "deadline (s)": args.deadline,
        "extra env": args.extra_env,
        "submitted": submission.get("submitted", 0),
        "submit errors": submission.get("errors", []),
        "submit span (s)": round(span, 2) if span is not None else None,
        "final status": dict(status_counts),
        "final status by error code": {
            f"{status}/{code}" if code else status: n for status, code, n in final["by_status"]
        },
        "timeouts": status_counts.get("timed_out", 0),
        "settles retried (job.settle_failed)": events.get("job.settle_failed", 0),
        "settles abandoned (job.settle_abandoned)": events.get("job.settle_abandoned", 0),
        "job.timed_out logged": events.get("job.timed_out", 0),
        "log events (warning+)": dict(events.most_common(12)),
        "log lines not JSON": non_json,
        "peak in flight (db)": max(s["in_flight"] for s in samples),
        "peak orchestrator_jobs_running": max(gauges) if gauges else None,
        "in-flight job-seconds": round(job_seconds, 1),
        "sampled seconds": round(elapsed, 1),
        "cpu seconds": {k: round(v, 2) for k, v in spent.items()},
        "daemon cores (mean)": round(spent["daemon"] / elapsed, 3) if elapsed else None,
        "daemon cpu ms per in-flight job per second": (
            round(1000 * spent["daemon"] / job_seconds, 4) if job_seconds else None
        ),
        "cpu ms per job": {k: per_job_ms(v) for k, v in spent.items()},
        "peak daemon RSS (MiB)": round(sampler.peak_rss, 1),
        "every job ended": last["open"] == 0,
        "wall first submit to last terminal (s)": (
            round(final["wall_s"], 1) if final["wall_s"] is not None else None
        ),
        "ideal: submit span + max latency (s)": round(ideal, 1) if ideal is not None else None,
        "queued before admission p50/p99/max (s)": [
            round(x, 2) if x is not None else None
            for x in (_pct(final["queued_s"], 0.5), _pct(final["queued_s"], 0.99))
        ]
        + [round(final["queued_s"][-1], 2) if final["queued_s"] else None],
        "admitted to finished p50/p99/max (s)": [
            round(x, 2) if x is not None else None
            for x in (_pct(final["flight_s"], 0.5), _pct(final["flight_s"], 0.99))
        ]
        + [round(final["flight_s"][-1], 2) if final["flight_s"] else None],
        "not finished within the bound": last["open"],
        "not finished by status": {s: n for s, n in last["jobs"].items() if s not in TERMINAL},
        "stopped because": run["stop"],
        "simulator": {
            k: v for k, v in run.get("sim_stats", {}).items() if k in {"predictions", "webhooks"}
        }
        | {
            "requests": {
                k: v
                for k, v in run.get("sim_stats", {}).items()
                if isinstance(v, int) and k != "predictions"
            }
        },
    }


def _print_table(figures: dict[str, Any]) -> None:
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        if isinstance(value, float):
            shown = f"{value:g}"
        elif isinstance(value, (dict, list)):
            shown = json.dumps(value)
        else:
            shown = str(value)
        print(f"{key.ljust(width)}  {shown}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument(
        "--latency", type=float, nargs=2, default=(20.0, 30.0), metavar=("LO", "HI")
    )
    parser.add_argument("--mode", choices=("poll", "webhook"), default="poll")
    parser.add_argument("--deadline", type=float, default=120.0, help="the job deadline (s)")
    parser.add_argument("--batch", type=int, default=500, help="jobs per submitting statement")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra setting for the daemon (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (and log)")
    args = parser.parse_args()
    args.extra_env = _parse_env(args.env)
    known = set(environment_variables())
    if unknown := sorted(k for k in args.extra_env if k not in known):
        print(
            "note: not a setting of this checkout, the daemon will ignore it:",
            ", ".join(unknown),
            file=sys.stderr,
        )
    return args


def main() -> int:
    args = _arguments()

    home = Path(tempfile.mkdtemp(prefix="orch-if-", dir="/tmp"))
    users = [f"inflight-{n}" for n in range(args.users)]
    rig: Rig | None = None
    run: dict[str, Any] | None = None
    failure: str | None = None
    try:
        url = ensure_embedded_server(home)
        migrate = subprocess.run(
            [*CLI, "migrate"],
            env={**os.environ, "DATABASE_URL": url},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if migrate.returncode != 0:
            failure = f"migrate failed ({migrate.returncode}): {migrate.stderr[-2000:]}"
        else:
            asyncio.run(_prepare(url, users, args.jobs))
            rig = Rig(args, home, url)
            failure = rig.start()
            if failure is not None:
                failure += "; the daemon's log ends:\n" + rig.log_tail()
            else:
                run = asyncio.run(_drive(rig, users))
                run["sim_stats"] = rig.sim_stats()
    finally:
        if rig is not None:
            rig.stop()
        stop_embedded_server(home)
    try:
        if run is None or rig is None:
            print(f"inflight bench did not run: {failure}", file=sys.stderr)
            return 2
        figures = _figures(args, run, rig)
        if args.json:
            print(json.dumps(figures))
        else:
            _print_table(figures)
        return 0
    finally:
        if args.keep:
            print(f"home kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
