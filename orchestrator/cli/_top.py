"""`orchestrator top`: a live view of the daemons and the database, refreshed each second.

It reads only the database (as the operator role, through `Database`) and
each daemon's `/metrics`. A snapshot is a plain value; `render` turns one into
a rich renderable without a terminal, and the loop shows it with `rich.live`.
A daemon whose `/metrics` cannot be read is shown as such; the database
figures go on. Ctrl-C (SIGINT) or SIGTERM ends the view with exit 0.
"""

from __future__ import annotations

import argparse
import collections
import math
import signal
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

import attrs
import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from orchestrator import views
from orchestrator.cli._command import EXIT_OK, Subparsers, with_database
from orchestrator.core import JobStatus
from orchestrator.db import Database, DbError, MemberRow, OwnerSummary, TopFigures
from orchestrator.settings import Settings

SCRAPE_TIMEOUT_S: Final = 0.5
# Admission lag is shown over the readings of the last minute.
LAG_WINDOW_S: Final = 60.0
_DB_TIMEOUT_S: Final = 5.0
_ORDER: Final = tuple(status.value for status in JobStatus)
_GAUGES: Final = (
    "orchestrator_mailbox_depth",
    "orchestrator_jobs_running",
    "orchestrator_actors_active",
    "orchestrator_capacity_waiting",
    "orchestrator_capacity_limit",
    "orchestrator_loop_lag_seconds",
    "orchestrator_partition_slots_owned",
    "orchestrator_listener_connected",
    "orchestrator_db_pool_in_use",
)
_LAG: Final = "orchestrator_intake_lag_seconds"


@attrs.frozen
class MetricsReading:
    """One scrape of one daemon's `/metrics`: the gauges and the admission-lag histogram."""

    url: str
    at: float  # monotonic seconds
    error: str | None = None
    gauges: Mapping[str, float] = attrs.field(factory=dict)
    version: str | None = None
    # Cumulative (upper bound, count) pairs, +Inf last, as Prometheus gives them.
    lag_buckets: tuple[tuple[float, float], ...] = ()
    lag_count: float = 0.0
    lag_sum: float = 0.0


@attrs.frozen
class DaemonFigures:
    """What one daemon says of itself, with admission lag over `window_s`."""

    url: str
    error: str | None
    version: str | None
    gauges: Mapping[str, float]
    window_s: float
    admissions: float
    lag_mean_s: float | None
    lag_p50_s: float | None
    lag_p95_s: float | None


@attrs.frozen
class Snapshot:
    taken_at: datetime
    figures: TopFigures | None
    members: tuple[MemberRow, ...]
    owners: tuple[OwnerSummary, ...]
    daemons: tuple[DaemonFigures, ...]
    db_error: str | None = None


def parse_metrics(url: str, text: str, at: float) -> MetricsReading:
    """The figures `top` shows out of Prometheus text.

    Raises:
        ValueError: the text is not Prometheus text.
    """
    gauges: dict[str, float] = {}
    version = None
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _GAUGES:
                gauges[sample.name] = sample.value
            elif sample.name == "orchestrator_build_info":
                version = sample.labels.get("version")
            elif sample.name == f"{_LAG}_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == f"{_LAG}_count":
                count = sample.value
            elif sample.name == f"{_LAG}_sum":
                total = sample.value
    return MetricsReading(
        url=url,
        at=at,
        gauges=gauges,
        version=version,
        lag_buckets=tuple(sorted(buckets)),
        lag_count=count,
        lag_sum=total,
    )


def quantile_bound(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The smallest bucket bound at or under which a fraction `q` of observations fall."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    wanted = q * buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= wanted:
            return bound
    return buckets[-1][0]


def daemon_figures(now: MetricsReading, then: MetricsReading | None) -> DaemonFigures:
    """`now`'s figures, with admission lag since `then` (since the daemon began without)."""
    restarted = then is not None and (then.error is not None or then.lag_count > now.lag_count)
    base = None if then is None or restarted or then is now else then
    count, total = now.lag_count, now.lag_sum
    buckets = list(now.lag_buckets)
    if base is not None:
        count -= base.lag_count
        total -= base.lag_sum
        before = dict(base.lag_buckets)
        buckets = [(bound, n - before.get(bound, 0.0)) for bound, n in buckets]
    return DaemonFigures(
        url=now.url,
        error=now.error,
        version=now.version,
        gauges=now.gauges,
        window_s=0.0 if base is None else now.at - base.at,
        admissions=count,
        lag_mean_s=total / count if count > 0 else None,
        lag_p50_s=quantile_bound(buckets, 0.5),
        lag_p95_s=quantile_bound(buckets, 0.95),
    )


async def scrape(client: httpx.AsyncClient, url: str) -> MetricsReading:
    """Read one daemon's `/metrics`; an unreachable or garbled one is a reading with an error."""
    at = time.monotonic()
    try:
        response = await client.get(url)
        response.raise_for_status()
        return parse_metrics(url, response.text, at)
    except httpx.HTTPStatusError as exc:
        return MetricsReading(url=url, at=at, error=f"HTTP {exc.response.status_code}")
    except httpx.HTTPError as exc:
        return MetricsReading(url=url, at=at, error=type(exc).__name__)
    except ValueError as exc:
        return MetricsReading(url=url, at=at, error=f"unreadable: {exc}"[:80])


class History:
    """The readings of the last `window_s` per daemon, to show lag over a window."""

    def __init__(self, window_s: float = LAG_WINDOW_S) -> None:
        self._window_s = window_s
        self._readings: dict[str, collections.deque[MetricsReading]] = {}

    def add(self, reading: MetricsReading) -> DaemonFigures:
        kept = self._readings.setdefault(reading.url, collections.deque())
        if reading.error is not None:
            kept.clear()
        else:
            kept.append(reading)
            while len(kept) > 1 and reading.at - kept[0].at > self._window_s:
                kept.popleft()
        return daemon_figures(reading, kept[0] if kept and kept[0] is not reading else None)


# ---------------------------------------------------------------------------
# Rendering: pure, from a snapshot to a renderable.


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 10:  # noqa: PLR2004
        return f"{seconds:.1f} s"
    if seconds < 600:  # noqa: PLR2004
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def _lag(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if math.isinf(seconds):
        return "> top bucket"
    return f"≤ {seconds * 1000:.0f} ms" if seconds < 1 else f"≤ {seconds:g} s"


def _styled(status: str) -> Text:
    return Text(status, style=views.status_style(status))


def _jobs_table(figures: TopFigures) -> Table:
    table = Table(title="jobs", title_justify="left", expand=True)
    table.add_column("status")
    table.add_column("now", justify="right")
    table.add_column("ended 1 min", justify="right")
    table.add_column(f"per min, {figures.window_minutes} min", justify="right")
    for status in _ORDER:
        ended = JobStatus(status).terminal
        table.add_row(
            _styled(status),
            "" if ended else str(figures.by_status.get(status, 0)),
            str(figures.finished_last_minute.get(status, 0)) if ended else "",
            f"{figures.finished_in_window.get(status, 0) / figures.window_minutes:.1f}"
            if ended
            else "",
        )
    return table


def _queue_table(snapshot: Snapshot) -> Table:
    table = Table(title="queue and money", title_justify="left", show_header=False, expand=True)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    figures = snapshot.figures
    oldest = [o.oldest_queued_s for o in snapshot.owners if o.oldest_queued_s is not None]
    queued = sum(o.queued for o in snapshot.owners)
    table.add_row("queued (database)", str(queued))
    table.add_row("oldest queued", _age(max(oldest) if oldest else None))
    live = [d for d in snapshot.daemons if d.error is None]
    if live:
        depth = sum(d.gauges.get("orchestrator_mailbox_depth", 0.0) for d in live)
        waiting = sum(d.gauges.get("orchestrator_capacity_waiting", 0.0) for d in live)
        table.add_row("mailbox depth (daemons)", f"{depth:.0f}")
        table.add_row("users waiting for capacity", f"{waiting:.0f}")
    if figures is not None:
        table.add_row(
            "refunds last min",
            f"{figures.refunds_last_minute} ({figures.refunded_credits_last_minute} credits)",
        )
        table.add_row(
            f"refunds per min ({figures.window_minutes} min)",
            f"{figures.refunds_in_window / figures.window_minutes:.1f} "
            f"({figures.refunded_credits_in_window} credits)",
        )
    return table


def _providers_table(figures: TopFigures) -> Table:
    table = Table(title="in flight by provider", title_justify="left", expand=True)
    table.add_column("provider")
    table.add_column("jobs", justify="right")
    table.add_column("predictions", justify="right")
    for load in figures.in_flight_by_provider:
        table.add_row(load.provider or "(none yet)", str(load.jobs), str(load.predictions))
    if not figures.in_flight_by_provider:
        table.add_row("[dim](nothing in flight)[/]", "", "")
    return table


def _daemons_table(daemons: Sequence[DaemonFigures]) -> Table:
    table = Table(title="daemons (/metrics)", title_justify="left", expand=True)
    for column in ("metrics", "version", "slots", "running", "mailbox", "capacity"):
        table.add_column(column, justify="left" if column in {"metrics", "version"} else "right")
    for column in ("loop lag", "admitted", "admission lag mean", "p50", "p95"):
        table.add_column(column, justify="right")
    for daemon in daemons:
        if daemon.error is not None:
            table.add_row(daemon.url, f"[bold red]unreachable: {daemon.error}[/]")
            continue
        gauges = daemon.gauges
        window = f" ({daemon.window_s:.0f} s)" if daemon.window_s else " (all)"
        table.add_row(
            daemon.url,
            daemon.version or "",
            f"{gauges.get('orchestrator_partition_slots_owned', 0):.0f}",
            f"{gauges.get('orchestrator_jobs_running', 0):.0f}",
            f"{gauges.get('orchestrator_mailbox_depth', 0):.0f}",
            f"{gauges.get('orchestrator_capacity_limit', 0):.0f}",
            f"{gauges.get('orchestrator_loop_lag_seconds', 0) * 1000:.1f} ms",
            f"{daemon.admissions:.0f}{window}",
            "—" if daemon.lag_mean_s is None else f"{daemon.lag_mean_s * 1000:.1f} ms",
            _lag(daemon.lag_p50_s),
            _lag(daemon.lag_p95_s),
        )
    if not daemons:
        table.add_row("[dim](no --metrics)[/]")
    return table


def _short_ranges(slots: Sequence[int], limit: int = 30) -> str:
    text = views.slot_ranges(slots)
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(", ", 1)[0] + ", …"


def _owners_table(members: Sequence[MemberRow], owners: Sequence[OwnerSummary]) -> Table:
    table = Table(title="slot owners", title_justify="left", expand=True)
    for column in ("member", "alive", "heartbeat", "slots", "epoch ≤", "queued", "in flight"):
        table.add_column(column, justify="right" if column in {"queued", "in flight"} else "left")
    table.add_column("oldest queued", justify="right")
    for row in views.owner_rows(members, owners, _short_ranges):
        table.add_row(*row)
    if not members and not owners:
        table.add_row("[dim](no members)[/]")
    return table


def _slowest_table(figures: TopFigures) -> Table:
    table = Table(title="slowest in flight", title_justify="left", expand=True)
    for column in ("job", "user", "status", "provider", "outputs", "predictions", "slot"):
        table.add_column(column)
    table.add_column("age", justify="right")
    table.add_column("deadline in", justify="right")
    for job in figures.slowest:
        deadline = _age(job.deadline_in_s)
        if job.deadline_in_s is not None and job.deadline_in_s < 0:
            deadline = f"[red]{_age(-job.deadline_in_s)} past[/red]"
        table.add_row(
            str(job.job_id),
            job.user_id,
            _styled(job.status)
            + (Text(" cancel asked", style="yellow") if job.cancel_requested else ""),
            job.provider or "",
            str(job.num_outputs),
            str(job.predictions),
            str(job.slot),
            _age(job.age_s),
            deadline,
        )
    if not figures.slowest:
        table.add_row("[dim](nothing in flight)[/]")
    return table


def render(snapshot: Snapshot) -> RenderableType:
    """The whole frame for one snapshot; needs no terminal."""
    header = Text.assemble(
        ("orchestrator top", "bold"),
        f"  {snapshot.taken_at.isoformat(timespec='seconds')}",
        f"  {len(snapshot.members)} member(s)",
        f"  {sum(d.error is None for d in snapshot.daemons)}/{len(snapshot.daemons)} metrics up",
        "  Ctrl-C to quit",
    )
    parts: list[RenderableType] = [header]
    if snapshot.db_error is not None:
        parts.append(Text(f"database: {snapshot.db_error}", style="bold red"))
    top = Table.grid(expand=True, padding=(0, 1))
    for _ in range(3):
        top.add_column(ratio=1)
    if snapshot.figures is not None:
        top.add_row(
            _jobs_table(snapshot.figures),
            _queue_table(snapshot),
            _providers_table(snapshot.figures),
        )
    else:
        top.add_row(_queue_table(snapshot), "", "")
    parts.append(top)
    parts.append(_daemons_table(snapshot.daemons))
    parts.append(_owners_table(snapshot.members, snapshot.owners))
    if snapshot.figures is not None:
        parts.append(_slowest_table(snapshot.figures))
    return Panel(Group(*parts), border_style="dim")


# ---------------------------------------------------------------------------
# The program: read, render, repeat.


def metrics_urls(settings: Settings, given: Sequence[str] | None) -> list[str]:
    """`--metrics` as given (`/metrics` added to a bare address), else the settings' address."""
    if not given:
        host = settings.http_host
        if host in {"0.0.0.0", "::", ""}:  # noqa: S104  (a wildcard bind is reached on loopback)
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return [f"http://{host}:{settings.http_port}/metrics"]
    urls = []
    for url in given:
        full = url if "://" in url else f"http://{url}"
        parts = urllib.parse.urlsplit(full)
        if parts.path in {"", "/"}:
            full = urllib.parse.urlunsplit(parts._replace(path="/metrics"))
        urls.append(full)
    return urls


class Reader:
    """Takes snapshots: the database figures and every daemon's `/metrics`, together."""

    def __init__(
        self,
        db: Database,
        client: httpx.AsyncClient,
        urls: Sequence[str],
        *,
        window_minutes: int,
        slowest: int,
    ) -> None:
        self._db = db
        self._client = client
        self._urls = list(urls)
        self._window_minutes = window_minutes
        self._slowest = slowest
        self._history = History()

    async def snapshot(self) -> Snapshot:
        readings: dict[str, MetricsReading] = {}

        async def read(url: str) -> None:
            readings[url] = await scrape(self._client, url)

        async with trio.open_nursery() as nursery:
            for url in self._urls:
                nursery.start_soon(read, url)
            figures = None
            members: tuple[MemberRow, ...] = ()
            owners: tuple[OwnerSummary, ...] = ()
            error = None
            try:
                with trio.fail_after(_DB_TIMEOUT_S):
                    figures = await self._db.top_figures(
                        window_minutes=self._window_minutes, slowest=self._slowest
                    )
                    members = tuple(await self._db.cluster_members())
                    owners = tuple(await self._db.cluster_owners())
            except DbError as exc:
                error = f"{type(exc).__name__}: {exc}"
            except trio.TooSlowError:
                error = f"no answer in {_DB_TIMEOUT_S:.0f} s"
        return Snapshot(
            taken_at=datetime.now(UTC),
            figures=figures,
            members=members,
            owners=owners,
            daemons=tuple(self._history.add(readings[url]) for url in self._urls),
            db_error=error,
        )


async def _watch(reader: Reader, interval_s: float) -> None:
    """Refresh the frame every `interval_s` until SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            with Live(
                render(await reader.snapshot()),
                console=views.console(),
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live:
                while True:
                    await trio.sleep(interval_s)
                    live.update(render(await reader.snapshot()), refresh=True)


def cmd_top(settings: Settings, args: argparse.Namespace) -> int:
    urls = metrics_urls(settings, args.metrics)

    async def body(db: Database) -> int:
        timeout = httpx.Timeout(SCRAPE_TIMEOUT_S)
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            reader = Reader(db, client, urls, window_minutes=args.window, slowest=args.slowest)
            if args.once:
                views.console().print(render(await reader.snapshot()))
            else:
                await _watch(reader, args.interval)
        return EXIT_OK

    # A Ctrl-C before the signal receiver is in place arrives as KeyboardInterrupt,
    # alone or in a nursery's group: the user asked to stop, which is no failure.
    try:
        return trio.run(with_database, settings, body)
    except KeyboardInterrupt:
        return EXIT_OK
    except BaseExceptionGroup as group:
        if group.split(KeyboardInterrupt)[1] is not None:
            raise
        return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _interval(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 60:  # noqa: PLR2004
        raise argparse.ArgumentTypeError("must be between 0.1 and 60 seconds")
    return value


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "top", help="a live view of jobs, queues, refunds, in-flight work and the slot owners"
    )
    p.add_argument(
        "--metrics",
        action="append",
        metavar="URL",
        help="a daemon's /metrics (repeatable; default: ORCHESTRATOR_HTTP_HOST:PORT)",
    )
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument(
        "--interval", type=_interval, default=1.0, help="seconds between frames (default 1)"
    )
    p.add_argument(
        "--window",
        type=_positive_int,
        default=5,
        metavar="MINUTES",
        help="average per-minute figures over this many minutes (default 5)",
    )
    p.add_argument(
        "--slowest",
        type=_positive_int,
        default=10,
        metavar="N",
        help="show the N in-flight jobs admitted longest ago (default 10)",
    )
    p.set_defaults(func=cmd_top)
