"""A read-only web view of jobs, books and the audit, served at /ui on the HTTP port.

Server-rendered HTML from the standard library: every value goes through
`html.escape`, the CSS is inline and there is no script at all (the
Content-Security-Policy forbids one). Every read is a bounded SELECT in a
read-only transaction. Prompts and params are shown only when the operator
turned `ORCHESTRATOR_UI_SHOW_PROMPTS` on; bad input is a 400 or 404 page.
"""

from __future__ import annotations

import html
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Final, TypeVar

import attrs

from orchestrator.core import USER_ID, ErrorCode, Job, JobStatus, StoredOutput, origin
from orchestrator.db import (
    AuditReport,
    CallbackRow,
    Database,
    DbError,
    JobTimeline,
    LedgerRow,
)

PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200
USER_LEDGER_ROWS: Final = 200
USER_RECENT_JOBS: Final = 20
_PREVIEW: Final = 60
_HIDDEN: Final = "hidden"

THUMBNAILS_IN_LIST: Final = 3
_OUTPUT_COLUMNS: Final = ("output", "image", "public URL", "bytes", "sha256", "type", "stored")
_OUTPUT_COLUMNS_ALL: Final = (*_OUTPUT_COLUMNS, "deleted")


def headers(image_sources: Sequence[str] = ("'self'",)) -> tuple[tuple[bytes, bytes], ...]:
    """The page headers; images may come only from `image_sources` (where outputs are served).

    No script at all, and images from the output store's origin alone: a thumbnail can
    show an output, never load anything else.
    """
    images = " ".join(image_sources) or "'none'"
    policy = (
        f"default-src 'none'; style-src 'unsafe-inline'; img-src {images}; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return (
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cache-control", b"no-store"),
    )


_CSS: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1d232a;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header b{font-size:1.1em}
main{padding:1em 1.2em}h1{font-size:1.3em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:1em}
th,td{border-bottom:1px solid #e2e5e9;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.num,th.num{text-align:right}
code,.mono{font-family:ui-monospace,monospace;font-size:.92em}
.st{padding:.05em .5em;border-radius:.8em;font-size:.9em;white-space:nowrap}
.s-queued{background:#dff3fb}.s-starting,.s-processing{background:#dde6ff}
.s-succeeded{background:#dcf5df}.s-failed,.s-timed_out{background:#fde0e0}
.s-canceled{background:#fdf3d0}.s-rejected{background:#f3e1f7}
form{display:flex;gap:.8em;align-items:end;margin-bottom:.8em;flex-wrap:wrap}
label{display:flex;flex-direction:column;font-size:.85em;color:#555}
input,select{font:inherit;padding:.2em .3em}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;background:#fff;padding:.6em}
dt{font-weight:600}dd{margin:0}.hidden{color:#888;font-style:italic}
.ok{color:#13751e;font-weight:600}.bad{color:#b3261e;font-weight:600}
.neg{color:#b3261e}.pos{color:#13751e}.muted{color:#777}
img.thumb{width:128px;height:128px;object-fit:cover;border-radius:4px;background:#e2e5e9}
img.mini{width:40px;height:40px;object-fit:cover;border-radius:3px;margin-right:2px}
"""

STATUSES: Final = tuple(status.value for status in JobStatus)
CODES: Final = tuple(code.value for code in ErrorCode)


@attrs.frozen
class Page:
    status: int
    body: bytes


class WebUI:
    """GET /ui, /ui/jobs/<id>, /ui/users/<user>, /ui/callbacks, /ui/audit; else 404.

    `image_sources` are the CSP sources thumbnails load from: the origin of the
    outputs' public URLs (the daemon itself in file mode, the bucket or a CDN).
    """

    def __init__(
        self,
        db: Database,
        *,
        show_prompts: bool = False,
        image_sources: Sequence[str] = ("'self'",),
    ) -> None:
        self._db = db
        self._show_prompts = show_prompts
        self.headers = headers(image_sources)

    async def handle(self, method: str, path: str, query_string: bytes) -> Page:
        if method != "GET":
            return _error(405, "Method not allowed", "This view is read-only: use GET.")
        try:
            return await self._route(path, query_string)
        except _BadRequest as exc:
            return _error(400, "Bad request", str(exc))
        except DbError as exc:
            return _error(503, "Database unavailable", type(exc).__name__)

    async def _route(self, path: str, query_string: bytes) -> Page:
        query = urllib.parse.parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
        if path in {"/ui", "/ui/"}:
            return await self._jobs(query)
        if path == "/ui/audit":
            return await self._audit()
        if path == "/ui/callbacks":
            return await self._callbacks()
        if path.startswith("/ui/jobs/"):
            return await self._job(path.removeprefix("/ui/jobs/"))
        if path.startswith("/ui/users/"):
            return await self._user(path.removeprefix("/ui/users/"))
        return _error(404, "Not found", f"No page at {path}.")

    async def _jobs(self, query: Mapping[str, list[str]]) -> Page:
        user = _param(query, "user")
        if user is not None and not USER_ID.fullmatch(user):
            raise _BadRequest("user must be 1-128 of A-Z a-z 0-9 . _ @ : + -")
        status = _choice(query, "status", JobStatus)
        code = _choice(query, "code", ErrorCode)
        before = _param(query, "before")
        before_id = _uuid(before, "before") if before is not None else None
        limit = _limit(_param(query, "limit"))
        found = await self._db.browse_jobs(
            user_id=user, status=status, code=code, before=before_id, limit=limit + 1
        )
        shown, more = found[:limit], len(found) > limit
        filters = {"user": user, "status": status and status.value, "code": code and code.value}
        parts = [
            "<h1>Jobs</h1>",
            _filter_form(filters, limit),
            f'<p id="count">{len(shown)} jobs, newest first'
            + (" (filtered)" if any(filters.values()) else "")
            + "</p>",
            self._jobs_table(shown, await self._db.job_outputs([job.id for job in shown])),
        ]
        if more:
            following = {k: v for k, v in filters.items() if v} | {
                "before": str(shown[-1].id),
                "limit": str(limit),
            }
            parts.append(
                f'<p><a id="next" href="/ui?{_e(urllib.parse.urlencode(following))}">'
                "Older jobs →</a></p>"
            )
        return _page("Jobs", "".join(parts))

    def _jobs_table(
        self, jobs: Sequence[Job], outputs: Mapping[uuid.UUID, Sequence[StoredOutput]]
    ) -> str:
        head = ["created", "job", "user", "status", "outputs", "images", "cost", "error"]
        head.append("finished")
        if self._show_prompts:
            head.append("prompt")
        rows = []
        for job in jobs:
            stored = outputs.get(job.id, ())
            minis = "".join(
                _thumbnail(o.idx, o.public_url, "mini") for o in stored[:THUMBNAILS_IN_LIST]
            )
            more = len(stored) - THUMBNAILS_IN_LIST
            cells = [
                f'<td class="mono">{_time(job.created_at)}</td>',
                f'<td class="mono">{_job_link(job.id)}</td>',
                f"<td>{_user_link(job.user_id)}</td>",
                f"<td>{_status(job.status)}</td>",
                f'<td class="num">{len(stored)}/{job.num_outputs}</td>',
                f"<td>{minis}{f' +{more}' if more > 0 else ''}</td>",
                f'<td class="num">{_e(job.cost)}</td>',
                f"<td>{_e(job.error_code.value if job.error_code else '')}</td>",
                f'<td class="mono">{_time(job.finished_at)}</td>',
            ]
            if self._show_prompts:
                preview = job.prompt if len(job.prompt) <= _PREVIEW else job.prompt[:_PREVIEW] + "…"
                cells.append(f'<td class="prompt">{_e(preview)}</td>')
            rows.append(
                f'<tr data-job="{job.id}" data-user="{_e(job.user_id)}" '
                f'data-status="{job.status.value}">{"".join(cells)}</tr>'
            )
        return _table("jobs", head, rows, empty="No jobs match.")

    async def _job(self, raw: str) -> Page:
        job_id = _uuid(raw, "job id")
        timeline = await self._db.job_timeline(job_id)
        if timeline is None:
            return _error(404, "Job not found", f"No job {job_id}.")
        job = timeline.job
        fields: list[tuple[str, str]] = [
            ("id", f'<span class="mono">{job.id}</span>'),
            ("user", _user_link(job.user_id)),
            ("status", _status(job.status)),
            ("outputs asked", str(job.num_outputs)),
            ("cost", _e(job.cost)),
            ("error", _e(" — ".join(x for x in (_code(job), job.error_message or "") if x))),
            ("partial", "yes" if job.partial else "no"),
            ("provider", _e(timeline.provider or "")),
            ("slot", str(job.slot)),
            (
                "epochs",
                f"admitted {_e(timeline.admit_epoch)}, finished {_e(timeline.finish_epoch)}",
            ),
            ("deadline", _time(job.deadline_at)),
            ("idempotency key", _e(job.idempotency_key or "")),
        ]
        if self._show_prompts:
            fields.append(("prompt", f'<span id="prompt">{_e(job.prompt)}</span>'))
            fields.append(("params", f'<code id="params">{_e(dict(job.params))}</code>'))
        else:
            fields.append(("prompt", f'<span id="prompt" class="hidden">{_HIDDEN}</span>'))
        details = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in fields)
        body = "".join(
            [
                f'<h1>Job <span class="mono">{job.id}</span></h1>',
                f"<dl>{details}</dl>",
                "<h2>Timeline</h2>",
                _timeline_table(timeline),
                "<h2>Predictions</h2>",
                _table(
                    "predictions",
                    ["output", "provider", "prediction id", "epoch", "recorded"],
                    [
                        f'<tr data-prediction="{_e(p.prediction_id)}"><td class="num">{p.idx}</td>'
                        f"<td>{_e(p.provider)}</td>"
                        f'<td class="mono">{_e(p.prediction_id)}</td><td class="num">'
                        f'{_e(p.epoch)}</td><td class="mono">{_time(p.created_at)}</td></tr>'
                        for p in timeline.predictions
                    ],
                    empty="No prediction recorded.",
                ),
                "<h2>Outputs</h2>",
                _table(
                    "outputs",
                    _OUTPUT_COLUMNS_ALL,
                    [
                        f'<tr data-output="{o.idx}"><td class="num">{o.idx}</td>'
                        f"<td>{'' if o.deleted_at else _thumbnail(o.idx, o.public_url, 'thumb')}"
                        f'</td><td class="mono">{_e(o.public_url or "")}</td>'
                        f'<td class="num">{_e(o.size_bytes)}</td>'
                        f'<td class="mono">{_e((o.sha256 or "")[:16])}</td>'
                        f"<td>{_e(o.content_type or '')}</td>"
                        f'<td class="mono">{_time(o.created_at)}</td>'
                        f'<td class="mono">{_time(o.deleted_at)}</td></tr>'
                        for o in timeline.outputs
                    ],
                    empty="No output stored.",
                ),
                "<h2>Ending and callback</h2>",
                _ending(timeline),
                "<h2>Ledger</h2>",
                _ledger_table("job-ledger", timeline.ledger),
                "<h2>Upstream strays</h2>",
                _table(
                    "upstream",
                    ["prediction id", "output", "found by", "status upstream", "cancel sent"],
                    [
                        f'<tr><td class="mono">{_e(u.prediction_id)}</td>'
                        f'<td class="num">{u.idx}</td><td>{_e(u.found_by)}</td>'
                        f"<td>{_e(u.status or 'not checked')}</td>"
                        f'<td class="mono">{_time(u.cancel_sent_at)}</td></tr>'
                        for u in timeline.upstream
                    ],
                    empty="None: no prediction ran for this job without delivering.",
                ),
            ]
        )
        return _page(f"Job {job.id}", body)

    async def _callbacks(self) -> Page:
        failed = await self._db.callbacks(failed=True, limit=PAGE_SIZE)
        owed = await self._db.callbacks(failed=False, limit=PAGE_SIZE)
        body = "".join(
            [
                "<h1>Callbacks</h1>",
                (
                    f'<p id="callback-counts">{len(failed)} given up, {len(owed)} still owed'
                    " (newest first; redeliver one with "
                    "<code>orchestrator callbacks --redeliver SEQ</code>)</p>"
                ),
                "<h2>Given up</h2>",
                _callbacks_table("callbacks-failed", failed),
                "<h2>Still owed</h2>",
                _callbacks_table("callbacks-owed", owed),
            ]
        )
        return _page("Callbacks", body)

    async def _user(self, raw: str) -> Page:
        user = raw  # ASGI paths arrive percent-decoded
        if not USER_ID.fullmatch(user):
            raise _BadRequest("a user id is 1-128 of A-Z a-z 0-9 . _ @ : + -")
        summaries = await self._db.account_summaries(user_id=user)
        if not summaries:
            return _error(404, "User not found", f"No account {user!r}.")
        account = summaries[0]
        ledger = await self._db.user_ledger(user, limit=USER_LEDGER_ROWS)
        recent = await self._db.browse_jobs(user_id=user, limit=USER_RECENT_JOBS)
        by_status = ", ".join(f"{k} {v}" for k, v in sorted(account.jobs_by_status.items()))
        fields = [
            ("user", _e(account.user_id)),
            ("plan", _e(account.plan)),
            ("balance", f'<span id="balance">{account.balance}</span>'),
            ("debited", str(account.debited)),
            ("refunded", str(account.refunded)),
            ("jobs by status", _e(by_status or "none")),
        ]
        details = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in fields)
        everything = _e(urllib.parse.urlencode({"user": user}))
        more = f'<p><a href="/ui?{everything}">All their jobs →</a></p>'
        body = "".join(
            [
                f"<h1>Books of {_e(user)}</h1>",
                f"<dl>{details}</dl>",
                f"<h2>Ledger (newest {USER_LEDGER_ROWS} rows at most)</h2>",
                _ledger_table("ledger", ledger),
                "<h2>Recent jobs</h2>",
                self._jobs_table(recent, await self._db.job_outputs([j.id for j in recent])),
                more,
            ]
        )
        return _page(f"Books of {user}", body)

    async def _audit(self) -> Page:
        report = await self._db.audit()
        return _page("Audit", _audit_body(report))


class _BadRequest(ValueError):
    pass


def _param(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _BadRequest(f"{name} given {len(values)} times")
    value = values[0].strip()
    return value or None


_Choice = TypeVar("_Choice", JobStatus, ErrorCode)


def _choice(query: Mapping[str, list[str]], name: str, kind: type[_Choice]) -> _Choice | None:
    raw = _param(query, name)
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise _BadRequest(f"unknown {name} {raw!r}; one of {known}") from None


def _uuid(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise _BadRequest(f"{what} {raw[:80]!r} is not a UUID") from None


def _limit(raw: str | None) -> int:
    if raw is None:
        return PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise _BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def _e(value: object) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def _time(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return _e(moment.astimezone().isoformat(sep=" ", timespec="milliseconds"))


def _since(moment: datetime, start: datetime | None) -> str:
    return "" if start is None else f"+{(moment - start).total_seconds():.3f} s"


def _status(status: JobStatus) -> str:
    return f'<span class="st s-{status.value}">{status.value}</span>'


def _code(job: Job) -> str:
    return job.error_code.value if job.error_code else ""


def _job_link(job_id: uuid.UUID) -> str:
    return f'<a href="/ui/jobs/{job_id}">{str(job_id)[:8]}</a>'


def _user_link(user: str) -> str:
    return f'<a href="/ui/users/{_e(urllib.parse.quote(user, safe=""))}">{_e(user)}</a>'


def _table(table_id: str, head: Sequence[str], rows: Iterable[str], *, empty: str) -> str:
    body = "".join(rows)
    if not body:
        body = f'<tr class="empty"><td colspan="{len(head)}" class="muted">{_e(empty)}</td></tr>'
    header = "".join(f"<th>{_e(name)}</th>" for name in head)
    return f'<table id="{table_id}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _ledger_table(table_id: str, rows: Sequence[LedgerRow]) -> str:
    return _table(
        table_id,
        ["row", "when", "kind", "amount", "job", "ref", "note"],
        [
            f'<tr data-kind="{_e(r.kind)}"><td class="num">{r.id}</td>'
            f'<td class="mono">{_time(r.created_at)}</td><td>{_e(r.kind)}</td>'
            f'<td class="num {"neg" if r.amount < 0 else "pos"}">{r.amount:+d}</td>'
            f'<td class="mono">{_job_link(r.job_id) if r.job_id else ""}</td>'
            f'<td class="mono">{_e(r.ref)}</td><td>{_e(r.note or "")}</td></tr>'
            for r in rows
        ],
        empty="No ledger rows.",
    )


def _timeline_table(timeline: JobTimeline) -> str:
    job = timeline.job
    events: list[tuple[datetime, str, str]] = []
    if job.created_at is not None:
        events.append((job.created_at, "created", "submitted, queued"))
    if job.admitted_at is not None:
        events.append(
            (
                job.admitted_at,
                "admitted",
                f"seat taken, cost {_e(job.cost)}, epoch {_e(timeline.admit_epoch)}",
            )
        )
    events += [
        (
            p.created_at,
            "prediction",
            (
                f"output {p.idx}: {_e(p.provider)} prediction "
                f'<span class="mono">{_e(p.prediction_id)}</span> recorded, epoch {_e(p.epoch)}'
            ),
        )
        for p in timeline.predictions
    ]
    if job.cancel_requested_at is not None:
        events.append((job.cancel_requested_at, "cancel", "cancel requested"))
    events += [
        (o.created_at, "output", f"output {o.idx} stored ({_e(o.size_bytes)} bytes)")
        for o in timeline.outputs
    ]
    events += [
        (r.created_at, r.kind, f"ledger row {r.id}: {r.kind} {r.amount:+d}")
        for r in timeline.ledger
    ]
    events += [
        (
            u.created_at,
            "upstream",
            (
                f'stray prediction <span class="mono">{_e(u.prediction_id)}</span> noted '
                f"({_e(u.found_by)}, upstream {_e(u.status or 'not checked')})"
            ),
        )
        for u in timeline.upstream
    ]
    if job.finished_at is not None:
        ending = " — ".join(x for x in (_code(job), job.error_message or "") if x)
        events.append(
            (
                job.finished_at,
                "finished",
                f"{_status(job.status)} {_e(ending)}, epoch {_e(timeline.finish_epoch)}",
            )
        )
    events.sort(key=lambda event: event[0])
    start = job.created_at or (events[0][0] if events else None)
    rows = [
        f'<tr data-event="{_e(kind)}"><td class="mono">{_time(moment)}</td>'
        f'<td class="num mono">{_since(moment, start)}</td>'
        f"<td>{_e(kind)}</td><td>{what}</td></tr>"
        for moment, kind, what in events
    ]
    if job.finished_at is None:
        now = f"<td></td><td></td><td>now</td><td>{_status(job.status)}</td>"
        rows.append(f'<tr data-event="now">{now}</tr>')
    return _table("timeline", ["when", "since created", "event", "what"], rows, empty="")


def _thumbnail(idx: int, url: str | None, kind: str) -> str:
    """An output's image from its public URL, linking to it; nothing without one."""
    if not url:
        return ""
    return (
        f'<a href="{_e(url)}"><img class="{kind}" src="{_e(url)}" alt="output {idx}" '
        f'loading="lazy" data-thumb="{idx}"></a>'
    )


def _ending(timeline: JobTimeline) -> str:
    if timeline.event_seq is None:
        return '<p id="ending" class="muted">Not ended yet: no event in the feed.</p>'
    seq = f'<p id="ending">Event seq <span class="mono">{timeline.event_seq}</span>'
    callback = timeline.callback
    if callback is None:
        return f"{seq}; no callback asked.</p>"
    return f"{seq}.</p>" + _callbacks_table("job-callback", [callback])


def _callbacks_table(table_id: str, rows: Sequence[CallbackRow]) -> str:
    def state(row: CallbackRow) -> str:
        if row.delivered_at is not None:
            return f'<span class="ok">delivered</span> {_time(row.delivered_at)}'
        if row.failed_at is not None:
            return f'<span class="bad">given up</span> {_time(row.failed_at)}'
        return f"next attempt {_time(row.next_attempt_at)}"

    return _table(
        table_id,
        ["seq", "webhook-id", "job", "ending", "receiver", "attempts", "last answer", "state"],
        [
            f'<tr data-callback="{row.seq}" data-state="'
            f"{'delivered' if row.delivered_at else 'failed' if row.failed_at else 'owed'}"
            f'"><td class="num">{row.seq}</td><td class="mono">evt_{row.seq}</td>'
            f'<td class="mono">{_job_link(row.job_id)}</td><td>{_status(row.status)}</td>'
            f'<td class="mono">{_e(origin(row.url))}</td><td class="num">{row.attempts}</td>'
            f"<td>{_e(row.last_error or (row.last_status or ''))}</td><td>{state(row)}</td></tr>"
            for row in rows
        ],
        empty="None.",
    )


def _audit_body(report: AuditReport) -> str:
    verdict = (
        '<p id="verdict" class="ok">Clean: every invariant holds.</p>'
        if report.ok
        else '<p id="verdict" class="bad">Violations found.</p>'
    )
    totals = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in sorted(report.totals.items()))
    rows = []
    for check in report.checks:
        samples = "<br>".join(
            _e(", ".join(f"{k}={v}" for k, v in sample.items())) for sample in check.samples[:5]
        )
        state = '<span class="ok">ok</span>' if check.ok else '<span class="bad">violated</span>'
        rows.append(
            f'<tr data-check="{_e(check.name)}" data-violations="{check.violations}">'
            f"<td>{state}</td><td>{_e(check.description)}</td>"
            f'<td class="num">{check.violations}</td><td class="mono">{samples}</td></tr>'
        )
    table = _table("checks", ["", "check", "violations", "samples"], rows, empty="No checks.")
    return f"<h1>Audit</h1>{verdict}<h2>Totals</h2><dl>{totals}</dl><h2>Checks</h2>{table}"


def _filter_form(filters: Mapping[str, str | None], limit: int) -> str:
    def select(name: str, options: Sequence[str]) -> str:
        chosen = filters.get(name)
        items = ['<option value="">any</option>'] + [
            f'<option value="{o}"{" selected" if o == chosen else ""}>{o}</option>' for o in options
        ]
        return f'<label>{name}<select name="{name}">{"".join(items)}</select></label>'

    user = _e(filters.get("user") or "")
    return (
        '<form method="get" action="/ui" id="filters">'
        f'<label>user<input name="user" value="{user}" size="16"></label>'
        f"{select('status', STATUSES)}{select('code', CODES)}"
        f'<label>per page<input name="limit" value="{limit}" size="4"></label>'
        '<button type="submit">Filter</button> <a href="/ui">clear</a></form>'
    )


def _page(title: str, body: str, status: int = 200) -> Page:
    document = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)} · orchestrator</title><style>{_CSS}</style></head><body>"
        '<header><b>orchestrator</b><a href="/ui">Jobs</a><a href="/ui/callbacks">Callbacks</a>'
        '<a href="/ui/audit">Audit</a>'
        '<span class="muted">read-only</span></header>'
        f"<main>{body}</main></body></html>"
    )
    return Page(status, document.encode("utf-8"))


def _error(status: int, title: str, message: str) -> Page:
    return _page(
        title,
        f'<h1>{status} {_e(title)}</h1><p id="error">{_e(message)}</p>'
        '<p><a href="/ui">Back to the jobs</a></p>',
        status,
    )
