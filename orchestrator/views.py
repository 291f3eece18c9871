"""How the CLI shows things: rich tables on a terminal, JSON lines for scripts.

The prompt is shown only by `status` of one job, which its owner asked for;
listings never print it whole.
"""

from __future__ import annotations

import itertools
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Final

from rich.console import Console
from rich.table import Table

from orchestrator.core import Job, JobEvent, JobStatus, StoredOutput
from orchestrator.db import AccountSummary, AuditReport, CallbackRow, MemberRow, OwnerSummary
from orchestrator.reconcile import ReconcileReport

_PROMPT_PREVIEW: Final = 40
_STATUS_STYLE: Final = {
    JobStatus.QUEUED: "cyan",
    JobStatus.STARTING: "blue",
    JobStatus.PROCESSING: "blue",
    JobStatus.SUCCEEDED: "green",
    JobStatus.FAILED: "red",
    JobStatus.TIMED_OUT: "red",
    JobStatus.CANCELED: "yellow",
    JobStatus.REJECTED: "magenta",
}

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)


def console() -> Console:
    return _out


def say(message: str) -> None:
    _out.print(message)


def error(message: str) -> None:
    _err.print(f"[bold red]error:[/] {message}")


def job_record(job: Job, *, with_prompt: bool) -> dict[str, object]:
    record: dict[str, object] = {
        "id": str(job.id),
        "user_id": job.user_id,
        "status": job.status.value,
        "num_outputs": job.num_outputs,
        "cost": job.cost,
        "error_code": job.error_code.value if job.error_code else None,
        "error_message": job.error_message,
        "partial": job.partial,
        "prediction_id": job.prediction_id,
        "created_at": _iso(job.created_at),
        "admitted_at": _iso(job.admitted_at),
        "deadline_at": _iso(job.deadline_at),
        "finished_at": _iso(job.finished_at),
        "retry_of": None if job.retry_of is None else str(job.retry_of),
    }
    if with_prompt:
        record["prompt"] = job.prompt
        record["params"] = dict(job.params)
    return record


def output_record(output: StoredOutput) -> dict[str, object]:
    """An output as an app fetches it: the URL to hand a browser, and what to check."""
    return {
        "idx": output.idx,
        "public_url": output.public_url,
        "sha256": output.sha256,
        "size_bytes": output.size_bytes,
        "content_type": output.content_type,
    }


def jobs(
    items: Sequence[Job], outputs: Mapping[uuid.UUID, Sequence[StoredOutput]], *, as_json: bool
) -> None:
    if as_json:
        for item in items:
            record = job_record(item, with_prompt=False)
            record["outputs"] = [output_record(o) for o in outputs.get(item.id, ())]
            sys.stdout.write(json.dumps(record) + "\n")
        return
    table = Table(title=f"{len(items)} jobs, newest first", title_justify="left")
    for column in ("id", "user", "status", "outputs", "cost", "error", "created", "first output"):
        table.add_column(column)
    for item in items:
        stored = outputs.get(item.id, ())
        first = next((o.public_url for o in stored if o.public_url), None)
        more = f" (+{len(stored) - 1})" if first is not None and len(stored) > 1 else ""
        table.add_row(
            str(item.id),
            item.user_id,
            _status(item.status),
            f"{len(stored)}/{item.num_outputs}",
            "" if item.cost is None else str(item.cost),
            item.error_code.value if item.error_code else "",
            _iso(item.created_at) or "",
            f"{first}{more}" if first else "",
        )
    _out.print(table)


def job(item: Job, outputs: Sequence[StoredOutput], *, as_json: bool) -> None:
    record = job_record(item, with_prompt=True)
    if as_json:
        record["outputs"] = [output_record(output) for output in outputs]
        sys.stdout.write(json.dumps(record) + "\n")
        return
    table = Table(show_header=False, title=f"job {item.id}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in record.items():
        if key == "status":
            table.add_row(key, _status(item.status))
        elif value is not None:
            shown = str(value)
            if key == "prompt" and len(shown) > _PROMPT_PREVIEW * 4:
                shown = shown[: _PROMPT_PREVIEW * 4] + "…"
            table.add_row(key, shown)
    for output in outputs:
        size = "" if output.size_bytes is None else f", {output.size_bytes} bytes"
        table.add_row(f"output {output.idx}", f"{output.public_url or output.url}{size}")
    _out.print(table)


def event_record(event: JobEvent) -> dict[str, object]:
    """One event as `job_events_after` returns it, for JSON lines."""
    return {
        "seq": event.seq,
        "job_id": str(event.job_id),
        "user_id": event.user_id,
        "status": event.status.value,
        "error_code": None if event.error_code is None else event.error_code.value,
        "finished_at": _iso(event.finished_at),
    }


def callbacks(rows: Sequence[CallbackRow], *, failed: bool, as_json: bool) -> None:
    if as_json:
        for row in rows:
            record = {
                "seq": row.seq,
                "webhook_id": f"evt_{row.seq}",
                "job_id": str(row.job_id),
                "status": row.status.value,
                "url": row.url,
                "attempts": row.attempts,
                "last_status": row.last_status,
                "last_error": row.last_error,
                "next_attempt_at": _iso(row.next_attempt_at),
                "failed_at": _iso(row.failed_at),
                "created_at": _iso(row.created_at),
            }
            sys.stdout.write(json.dumps(record) + "\n")
        return
    title = "callbacks given up on" if failed else "callbacks not delivered yet"
    table = Table(title=f"{len(rows)} {title}, newest first", title_justify="left")
    for column in ("seq", "job", "ending", "url", "attempts", "last answer", "next / gave up"):
        table.add_column(column)
    for row in rows:
        answer = row.last_error or ("" if row.last_status is None else f"HTTP {row.last_status}")
        table.add_row(
            str(row.seq),
            str(row.job_id),
            _status(row.status),
            row.url,
            str(row.attempts),
            answer,
            _iso(row.failed_at or row.next_attempt_at) or "",
        )
    _out.print(table)


def accounts(items: Sequence[AccountSummary], *, as_json: bool) -> None:
    if as_json:
        for item in items:
            sys.stdout.write(
                json.dumps(
                    {
                        "user_id": item.user_id,
                        "balance": item.balance,
                        "plan": item.plan,
                        "debited": item.debited,
                        "refunded": item.refunded,
                        "jobs_by_status": dict(item.jobs_by_status),
                        "oldest_queued_s": item.oldest_queued_s,
                    }
                )
                + "\n"
            )
        return
    table = Table(title="accounts", title_justify="left")
    columns = ("user", "plan", "balance", "debited", "refunded", "jobs by status", "queued for")
    for column in columns:
        table.add_column(column)
    for item in items:
        by_status = ", ".join(f"{k} {v}" for k, v in sorted(item.jobs_by_status.items()))
        table.add_row(
            item.user_id,
            item.plan,
            str(item.balance),
            str(item.debited),
            str(item.refunded),
            by_status,
            "" if item.oldest_queued_s is None else f"{item.oldest_queued_s:.0f} s",
        )
    _out.print(table)


def slot_ranges(slots: Sequence[int]) -> str:
    """`0-3, 7, 9-12`: a member's slots, short enough to read."""
    parts: list[str] = []
    ordered = sorted(slots)
    start = previous = None
    for slot in [*ordered, None]:
        if slot is not None and previous is not None and slot == previous + 1:
            previous = slot
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = slot
    return ", ".join(parts)


def cluster(members: Sequence[MemberRow], owners: Sequence[OwnerSummary], *, as_json: bool) -> None:
    """Members, the slots each holds with their queue, and the slots nobody holds."""
    work = {owner.owner: owner for owner in owners}
    if as_json:
        for member in members:
            summary = work.get(member.member_id)
            sys.stdout.write(
                json.dumps(
                    {
                        "member": member.member_id,
                        "alive": member.alive,
                        "heartbeat_age_s": round(member.heartbeat_age_s, 3),
                        "info": dict(member.info),
                        "slots": list(member.slots),
                        "max_epoch": member.max_epoch,
                        "queued": summary.queued if summary else 0,
                        "in_flight": summary.in_flight if summary else 0,
                        "oldest_queued_s": summary.oldest_queued_s if summary else None,
                    }
                )
                + "\n"
            )
        if (nobody := work.get(None)) is not None:
            sys.stdout.write(
                json.dumps(
                    {
                        "member": None,
                        "slots_unowned": nobody.slots,
                        "queued": nobody.queued,
                        "in_flight": nobody.in_flight,
                        "oldest_queued_s": nobody.oldest_queued_s,
                    }
                )
                + "\n"
            )
        return
    table = Table(title="cluster", title_justify="left")
    columns = (
        "member",
        "alive",
        "heartbeat",
        "slots",
        "epoch ≤",
        "queued",
        "in flight",
        "oldest queued",
        "http",
    )
    for column in columns:
        table.add_column(column)
    urls = [str(member.info.get("http_url", "")) for member in members]
    for row, url in itertools.zip_longest(
        owner_rows(members, owners, lambda slots: slot_ranges(slots)[:40]), urls, fillvalue=""
    ):
        table.add_row(*row, url)
    _out.print(table)


def owner_rows(
    members: Sequence[MemberRow],
    owners: Sequence[OwnerSummary],
    slots_text: Callable[[Sequence[int]], str],
) -> list[list[str]]:
    """The cluster's rows, one per member then the slots nobody holds; `top` shows them too.

    Columns: member, alive, heartbeat, slots, highest epoch, queued, in flight, oldest queued.
    """
    work = {owner.owner: owner for owner in owners}
    rows = []
    for member in members:
        summary = work.get(member.member_id)
        rows.append(
            [
                member.member_id,
                "yes" if member.alive else "[red]no[/red]",
                f"{member.heartbeat_age_s:.1f} s ago",
                f"{len(member.slots)} ({slots_text(member.slots)})",
                str(member.max_epoch),
                str(summary.queued if summary else 0),
                str(summary.in_flight if summary else 0),
                _age(summary.oldest_queued_s if summary else None),
            ]
        )
    if (nobody := work.get(None)) is not None:
        rows.append(
            [
                "[red](nobody)[/red]",
                "",
                "",
                str(nobody.slots),
                str(nobody.max_epoch),
                str(nobody.queued),
                str(nobody.in_flight),
                _age(nobody.oldest_queued_s),
            ]
        )
    return rows


def _age(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.0f} s"


def audit(report: AuditReport, *, as_json: bool) -> None:
    if as_json:
        payload = {
            "ok": report.ok,
            "totals": dict(report.totals),
            "checks": [
                {
                    "name": c.name,
                    "description": c.description,
                    "violations": c.violations,
                    "samples": [{k: str(v) for k, v in s.items()} for s in c.samples],
                }
                for c in report.checks
            ],
        }
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    totals = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.totals.items())
    _out.print(f"audit over {totals}")
    for check in report.checks:
        mark = "[green]ok  [/]" if check.ok else "[bold red]FAIL[/]"
        suffix = "" if check.ok else f" — {check.violations} violation(s)"
        _out.print(f"  {mark} {check.description}{suffix}")
        for sample in check.samples:
            _out.print("        " + ", ".join(f"{k}={v}" for k, v in sample.items()))
    verdict = "[green]audit clean[/]" if report.ok else "[bold red]audit FAILED[/]"
    _out.print(verdict)


def reconcile(report: ReconcileReport, *, as_json: bool) -> None:
    fields = {
        "checked": report.checked,
        "canceled": report.canceled,
        "cancel_failed": report.cancel_failed,
        "undelivered": report.undelivered,
        "unreadable": report.unreadable,
        "listed": report.listed,
    }
    if as_json:
        sys.stdout.write(json.dumps(fields | {"dry_run": report.dry_run}) + "\n")
        return
    would = "would be " if report.dry_run else ""
    _out.print(
        f"reconciled {report.checked} predictions upstream ({report.listed} from the listing)"
    )
    _out.print(
        f"  still running for ended jobs: {report.running} "
        f"({would}cancelled: {report.canceled}, cancel failed: {report.cancel_failed})"
    )
    _out.print(f"  succeeded upstream, never delivered: {report.undelivered}")
    if report.unreadable:
        _out.print(f"  [yellow]the provider could not say for {report.unreadable}[/]")


async def follow(
    fetch: Callable[[uuid.UUID], Awaitable[Job | None]],
    job_id: uuid.UUID,
    changed: Callable[[], Awaitable[None]],
) -> Job:
    """Show a live status line until the job is terminal; return it as it ended.

    `changed` returns when the job may have moved on (its ending heard, or a refresh due).
    """
    with _err.status(f"job {job_id}: queued") as line:
        while True:
            item = await fetch(job_id)
            if item is None:
                raise LookupError(f"job {job_id} disappeared")
            line.update(f"job {job_id}: {_status(item.status)}")
            if item.status.terminal:
                return item
            await changed()


def _status(status: JobStatus) -> str:
    return f"[{_STATUS_STYLE[status]}]{status.value}[/]"


def status_style(status: str) -> str:
    """The style a job status is shown in everywhere (`orchestrator top` included)."""
    try:
        return _STATUS_STYLE[JobStatus(status)]
    except ValueError:
        return ""


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")
