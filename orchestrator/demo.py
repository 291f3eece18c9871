"""`orchestrator demo`: the whole daemon, a realistic burst, and the books checked at the end.

It runs the provider simulator and the daemon in this process (their logs go
to a file, not the terminal), submits the seeds' failure cases through
`orchestrator.submit_job` as real submitters would, shows live progress, and
prints each user's balance, credits debited and refunded, and jobs by status,
then the audit. The exit status is 0 only when every job ended and the audit
is clean. Nothing is left running: not the daemon, not the simulator, and not
the embedded Postgres unless it was already running before.
"""

from __future__ import annotations

import functools
import secrets
import uuid
from collections import Counter
from pathlib import Path
from typing import Final

import attrs
import trio
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator import daemon as daemon_module
from orchestrator import logs, views
from orchestrator.core import Job, JobStatus
from orchestrator.db import Database, open_database
from orchestrator.settings import Settings
from orchestrator.simulator import SimulatorConfig, serve_simulator

_REFRESH_S: Final = 0.2
_CANCEL_AFTER_S: Final = 1.0


@attrs.frozen
class Step:
    """One part of the burst: who, what, how many times, and what it shows."""

    user: str
    credits: int
    prompt: str
    times: int = 1
    outputs: int = 1
    params: dict[str, object] = attrs.field(factory=dict)
    vary: bool = False
    cancel: bool = False
    shows: str = ""


BURST: Final = (
    Step("alice", 10, "a red fox in snow", times=6, shows="six identical clicks: one job runs"),
    Step("bob", 2, "a lighthouse", times=6, vary=True, shows="rapid clicks past a balance of 2"),
    Step(
        "carol", 5, "never finishes", params={"simulate": "hang"}, shows="a hang hits its deadline"
    ),
    Step("dave", 5, "doomed", params={"simulate": "fail"}, shows="a provider failure is refunded"),
    Step("erin", 30, "four views of a chair", outputs=4, shows="a multi-output job"),
    Step("fay", 5, "changed my mind", params={"simulate": "hang"}, cancel=True, shows="a cancel"),
    Step("gus", 8, "a quiet street", times=3, vary=True, shows="ordinary traffic"),
)


async def run(
    settings: Settings, database_url: str, *, console: Console, log_path: Path, scale: int = 1
) -> bool:
    """Run the demo; True when every job ended and the audit is clean."""
    logs.configure(settings.log_level, "json", stream=log_path.open("a", encoding="utf-8"))
    tag = secrets.token_hex(2)
    console.print(
        f"[bold]orchestrator demo[/] — run [cyan]{tag}[/]; job deadline shortened to "
        f"[bold]{settings.job_deadline_s:g} s[/] for the demo (120 s in production); "
        f"daemon log: {log_path}"
    )
    for step in BURST:
        console.print(f"  [dim]{step.user:<6}[/] {step.shows}")
    async with trio.open_nursery() as nursery:
        provider_url = await nursery.start(
            functools.partial(serve_simulator, SimulatorConfig(latency=(0.3, 1.5)))
        )
        settings = attrs.evolve(settings, replicate_api_base=provider_url, http_port=0)
        await nursery.start(
            functools.partial(daemon_module.serve, settings, database_url, handle_signals=False)
        )
        async with open_database(database_url, min_size=1, max_size=4) as db:
            users = await _grant(db, tag)
            head = await db.job_events_head()
            job_ids, cancels = await _submit_burst(db, tag, scale)
            nursery.start_soon(_cancel_later, db, cancels)
            await _follow(db, job_ids, console, settings.job_deadline_s)
            console.print()
            summaries = await db.account_summaries()
            views.accounts([s for s in summaries if s.user_id in users], as_json=False)
            heard = await _the_apps_side(db, console, head, job_ids)
            report = await db.audit()
            views.audit(report, as_json=False)
            jobs = [await db.job(job_id) for job_id in job_ids]
        nursery.cancel_scope.cancel()
    finished = all(job is not None and job.status.terminal for job in jobs)
    return finished and heard and report.ok


async def _the_apps_side(
    db: Database, console: Console, head: int, job_ids: list[uuid.UUID]
) -> bool:
    """What an app sees: every ending once in the feed, and where each output is served.

    True when the feed holds exactly one event per job of the burst.
    """
    events = [e for e in await db.job_events_after(head, limit=10_000) if e.job_id in job_ids]
    once = sorted(e.job_id for e in events) == sorted(job_ids)
    outputs = [o for stored in (await db.job_outputs(job_ids)).values() for o in stored]
    mark = "[green]ok[/]" if once else "[red]FAIL[/]"
    span = f"seq {events[0].seq} to {events[-1].seq}" if events else "none"
    console.print(
        f"the feed: {mark} {len(events)} endings for {len(job_ids)} jobs ({span}), one each,"
        " as apps hear them (LISTEN orchestrator_job_events, job_events_after)"
    )
    if outputs:
        console.print(
            f"outputs: {len(outputs)} stored, each at its public_url, e.g. {outputs[0].public_url}"
        )
    return once


async def _grant(db: Database, tag: str) -> set[str]:
    users = set()
    for step in BURST:
        user = f"{step.user}-{tag}"
        await db.grant(user, step.credits, plan="pro", ref=f"demo:{user}")
        users.add(user)
    return users


async def _submit_burst(
    db: Database, tag: str, scale: int
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    job_ids: list[uuid.UUID] = []
    cancels: list[uuid.UUID] = []

    async def submit(step: Step, n: int) -> None:
        params = {**step.params, "variation": n} if step.vary else dict(step.params)
        job_id = await db.submit_job(
            f"{step.user}-{tag}", step.prompt, params=params, num_outputs=step.outputs
        )
        job_ids.append(job_id)
        if step.cancel:
            cancels.append(job_id)

    async with trio.open_nursery() as nursery:
        for step in BURST:
            for n in range(step.times * (scale if step.vary else 1)):
                nursery.start_soon(submit, step, n)
    return job_ids, cancels


async def _cancel_later(db: Database, job_ids: list[uuid.UUID]) -> None:
    await trio.sleep(_CANCEL_AFTER_S)
    for job_id in job_ids:
        await db.request_cancel(job_id)


async def _follow(
    db: Database, job_ids: list[uuid.UUID], console: Console, deadline_s: float
) -> None:
    progress = Progress(
        TextColumn("jobs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    bar = progress.add_task("jobs", total=len(job_ids))
    with (
        Live(Group(progress, _status_table([])), console=console, refresh_per_second=8) as live,
        trio.fail_after(deadline_s * 4 + 30),
    ):
        while True:
            jobs = [job for job in [await db.job(j) for j in job_ids] if job is not None]
            done = sum(job.status.terminal for job in jobs)
            progress.update(bar, completed=done)
            live.update(Group(progress, _status_table(jobs)))
            if done == len(job_ids):
                return
            await trio.sleep(_REFRESH_S)


def _status_table(jobs: list[Job]) -> Table:
    counts = Counter((job.status, job.error_code.value if job.error_code else "") for job in jobs)
    table = Table(title="jobs by status", title_justify="left")
    table.add_column("status")
    table.add_column("code")
    table.add_column("jobs", justify="right")
    for (status, code), n in sorted(
        counts.items(), key=lambda item: list(JobStatus).index(item[0][0])
    ):
        table.add_row(status.value, code, str(n))
    return table
