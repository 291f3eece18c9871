"""The web view at /ui, loaded in headless Chromium against a database the real daemon filled.

The daemon runs jobs to several ends against the simulator (succeeded with two
outputs, rejected, failed upstream, cancelled, left processing when it
stopped) and one job is left queued. The view is then served by the daemon's
own HTTP app, on loopback, acting as the daemon's database role, and read
the way a person would: Chromium renders it, and the test reads the DOM it
built and a screenshot it took.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import struct
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path

import attrs
import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio

from orchestrator.core import JobStatus
from orchestrator.daemon import signing_key
from orchestrator.db import DAEMON_ROLE, Database, open_database
from orchestrator.db._queries import queries
from orchestrator.http import HttpApp
from orchestrator.metrics import Metrics
from orchestrator.outputs import FileRoutes
from orchestrator.settings import Settings
from orchestrator.ui import WebUI

from .e2e import settings_for, start_daemon, start_simulator, wait_status, wait_terminal

CHROMIUM_TIMEOUT_S = 60.0
PROMPTS = {
    "alice": "a red fox in snow",
    "bob": "a lighthouse at dusk",
    "dave": "doomed from the start",
    "fay": "changed my mind",
    "carol": "a slow sunrise",
    "gus": "a quiet street",
}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if os.environ.get("ORCHESTRATOR_SKIP_CHROMIUM") == "1":
        pytest.skip("chromium is not installed and ORCHESTRATOR_SKIP_CHROMIUM=1")
    pytest.fail(
        "chromium is not on PATH, so the web view was not rendered. Install it (as root, "
        "Debian): sh ops/install-test-tools.sh; or set ORCHESTRATOR_SKIP_CHROMIUM=1 to skip.",
        pytrace=False,
    )


async def chromium(*args: str) -> bytes:
    """Run headless Chromium once, in a profile of its own, within a bounded time."""
    binary = _chromium()
    with tempfile.TemporaryDirectory(prefix="orch-chromium-") as profile:
        command = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            *args,
        ]
        with trio.fail_after(CHROMIUM_TIMEOUT_S):
            result = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return bytes(result.stdout)


class Dom(HTMLParser):
    """The elements Chromium serialized: each tag's attributes, and each id's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self._open: list[tuple[str, str | None]] = []
        self.texts: dict[str, str] = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.elements.append((tag, values))
        if tag not in {"meta", "input", "br", "link"}:
            self._open.append((tag, values.get("id")))
            if values.get("id"):
                self.texts.setdefault(values["id"], "")

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            if element_id:
                self.texts[element_id] += data

    def having(self, attribute: str) -> list[dict[str, str]]:
        return [values for _, values in self.elements if attribute in values]


async def dom(url: str) -> Dom:
    return Dom((await chromium("--dump-dom", url)).decode())


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def seed(
    nursery: trio.Nursery, db: Database, db_url: str, where: Served | None = None
) -> dict[str, uuid.UUID]:
    """Jobs in seven states, made by the real daemon; it is stopped before the view is read.

    With `where`, the daemon listens on that port and keeps its files under that root,
    so a view served there afterwards (as after a restart) serves the outputs too.
    """
    provider = await start_simulator(nursery)
    for user, amount in (
        ("alice", 10),
        ("bob", 1),
        ("dave", 5),
        ("fay", 5),
        ("carol", 5),
        ("gus", 3),
        ("hana", 2),
    ):
        await db.grant(user, amount, ref=f"welcome:{user}")
    ids: dict[str, uuid.UUID] = {}
    async with trio.open_nursery() as running:
        at = {} if where is None else {"storage_root": where.root, "http_port": where.port}
        settings = settings_for(db_url, provider, job_deadline_s=60.0, grace_s=0.1, **at)
        await start_daemon(running, settings)
        ids["alice"] = await db.submit_job("alice", PROMPTS["alice"], num_outputs=2)
        ids["bob"] = await db.submit_job("bob", PROMPTS["bob"], num_outputs=3)
        ids["dave"] = await db.submit_job("dave", PROMPTS["dave"], params={"simulate": "fail"})
        ids["fay"] = await db.submit_job("fay", PROMPTS["fay"], params={"simulate": "hang"})
        ids["carol"] = await db.submit_job("carol", PROMPTS["carol"], params={"simulate": "hang"})
        await wait_status(db, ids["fay"], "processing")
        await db.request_cancel(ids["fay"])
        ids["hana"] = await db.submit_job(
            "hana", "a hook that never answers", callback_url="http://127.0.0.1:9/hook"
        )
        await wait_terminal(db, [ids[u] for u in ("alice", "bob", "dave", "fay", "hana")])
        await wait_status(db, ids["carol"], "processing")
        running.cancel_scope.cancel()
    ids["gus"] = await db.submit_job("gus", PROMPTS["gus"])
    return ids


@attrs.frozen
class Served:
    port: int
    root: Path

    @classmethod
    def anywhere(cls) -> Served:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return cls(port, Path(tempfile.mkdtemp(prefix="orch-ui-files-")))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def serve_ui(
    db_url: str, *, show_prompts: bool = False, where: Served | None = None
) -> AsyncIterator[Served]:
    """The daemon's HTTP app with the view, on loopback, reading as the daemon's role.

    It serves `/renders/...` from the root too, as a file-mode daemon does.
    """
    where = where or Served.anywhere()
    root = where.root
    async with open_database(db_url, min_size=1, max_size=4, role=DAEMON_ROLE) as ui_db:

        async def ready() -> dict[str, bool]:
            return {"database": await ui_db.ping()}

        app = HttpApp(
            metrics=Metrics(),
            readiness=ready,
            webhooks=None,
            ui=WebUI(ui_db, show_prompts=show_prompts),
            files=FileRoutes(root, signing_key=signing_key(Settings(), root)),
        )
        config = hypercorn.config.Config()
        config.bind = [f"127.0.0.1:{where.port}"]
        config.accesslog = None
        config.graceful_timeout = 0.1
        async with trio.open_nursery() as server:
            await server.start(functools.partial(hypercorn.trio.serve, app, config))
            try:
                yield where
            finally:
                server.cancel_scope.cancel()


async def test_the_view_renders_jobs_timelines_books_and_the_audit_in_chromium(
    nursery, db: Database, db_url: str, tmp_path: Path
):
    """Filters apply, a job's timeline is in order, and the prompt is hidden by default."""
    where = Served.anywhere()
    ids = await seed(nursery, db, db_url, where)
    async with serve_ui(db_url, where=where) as served:
        base = served.base
        statuses = {user: (await db.job(job_id)).status for user, job_id in ids.items()}  # type: ignore[union-attr]
        assert statuses == {
            "alice": JobStatus.SUCCEEDED,
            "bob": JobStatus.REJECTED,
            "dave": JobStatus.FAILED,
            "fay": JobStatus.CANCELED,
            "carol": JobStatus.PROCESSING,
            "gus": JobStatus.QUEUED,
            "hana": JobStatus.REJECTED,
        }
        await _check_listing(base, ids, statuses)
        await _check_timelines(base, db, ids)
        await _check_images_and_callbacks(base, db, ids)
        books = await dom(f"{base}/ui/users/dave")
        assert books.texts["balance"] == "5"
        assert [r["data-kind"] for r in books.having("data-kind")] == ["refund", "debit", "grant"]
        assert [r["data-job"] for r in books.having("data-job")] == [str(ids["dave"])]

        audit = await dom(f"{base}/ui/audit")
        assert "Clean" in audit.texts["verdict"]
        checks = audit.having("data-check")
        assert len(checks) >= 8
        assert {c["data-violations"] for c in checks} == {"0"}

        shot = tmp_path / "jobs.png"
        await chromium(f"--screenshot={shot}", "--window-size=1280,900", f"{base}/ui")
        data = shot.read_bytes()
        assert len(data) > 20_000
        assert png_size(data) == (1280, 900)
        if target := os.environ.get("ORCHESTRATOR_UI_SCREENSHOT"):
            shutil.copyfile(shot, target)

    async with serve_ui(db_url, show_prompts=True) as served:
        base = served.base
        shown = await dom(f"{base}/ui/jobs/{ids['dave']}")
        assert shown.texts["prompt"] == PROMPTS["dave"]
        assert "simulate" in shown.texts["params"]
        listing = await dom(f"{base}/ui")
        assert PROMPTS["gus"] in "".join(listing.texts.values())


def test_the_views_queries_are_bounded_reads():
    """Every query the view adds is one SELECT with a LIMIT: it can change nothing."""
    added = {name: sql for name, sql in queries().items() if name.startswith("ui_")}
    assert len(added) == 9
    for name, sql in added.items():
        words = sql.upper().split()
        assert words[0] == "SELECT", name
        assert "LIMIT" in words, name
        assert not {"INSERT", "UPDATE", "DELETE", "TRUNCATE"} & set(words), name


async def test_bad_input_is_a_400_or_404_page_with_the_security_headers(
    nursery, db: Database, db_url: str
):
    """Never a 500: bad ids, unknown statuses and codes, unknown users, other methods."""
    await db.grant("ann", 2)
    await db.grant("ann+ui@example.com", 3)
    job_id = await db.submit_job("ann", "<script>alert(1)</script>")
    async with serve_ui(db_url) as served, httpx.AsyncClient(trust_env=False) as client:
        base = served.base
        cases = {
            "/ui/jobs/not-a-uuid": 400,
            f"/ui/jobs/{uuid.uuid4()}": 404,
            "/ui?status=exploded": 400,
            "/ui?code=NOPE": 400,
            "/ui?user=%20bad%20user%20": 400,
            "/ui?user=a&user=b": 400,
            "/ui?before=xyz": 400,
            "/ui?limit=0": 400,
            "/ui?limit=100000": 400,
            "/ui/users/nobody": 404,
            "/ui/users/bad%20id": 400,
            "/ui/nothing-here": 404,
            "/ui": 200,
            "/ui/": 200,
            f"/ui/jobs/{job_id}": 200,
            "/ui/users/ann": 200,
            "/ui/users/ann%2Bui%40example.com": 200,
            "/ui/audit": 200,
            "/ui/callbacks": 200,
            "/ui?status=queued&code=&user=ann": 200,
        }
        for path, expected in cases.items():
            response = await client.get(base + path)
            assert response.status_code == expected, (path, response.text[:300])
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            policy = response.headers["content-security-policy"]
            assert "default-src 'none'" in policy
            assert "style-src 'unsafe-inline'" in policy
            assert "img-src 'self';" in policy
            assert "script-src" not in policy
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "<script" not in response.text.lower()
        unknown = await client.get(f"{base}/ui?status=exploded")
        assert "queued" in unknown.text
        assert "exploded" in unknown.text
        for method in ("POST", "PUT", "DELETE"):
            refused = await client.request(method, f"{base}/ui/audit")
            assert refused.status_code == 405
            assert refused.headers["allow"] == "GET"
        assert (await client.get(f"{base}/healthz")).json() == {"status": "ok"}
        books = await client.get(f"{base}/ui/users/ann%2Bui%40example.com")
        assert '<span id="balance">3</span>' in books.text
        listing = await client.get(f"{base}/ui?status=queued")
        assert str(job_id) in listing.text
        assert "alert(1)" not in listing.text
    async with (
        serve_ui(db_url, show_prompts=True) as served,
        httpx.AsyncClient(trust_env=False) as client,
    ):
        page = await client.get(f"{served.base}/ui/jobs/{job_id}")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert "<script>" not in page.text


async def _check_listing(
    base: str, ids: dict[str, uuid.UUID], statuses: dict[str, JobStatus]
) -> None:
    listing = await dom(f"{base}/ui")
    rows = listing.having("data-job")
    assert [row["data-job"] for row in rows] == [
        str(ids[u]) for u in ("gus", "hana", "carol", "fay", "dave", "bob", "alice")
    ]
    assert {row["data-user"]: row["data-status"] for row in rows} == {
        u: s.value for u, s in statuses.items()
    }
    assert "7 jobs" in listing.texts["count"]
    for prompt in PROMPTS.values():
        assert prompt not in "".join(listing.texts.values())

    failed = await dom(f"{base}/ui?status=failed")
    assert [r["data-job"] for r in failed.having("data-job")] == [str(ids["dave"])]
    assert "(filtered)" in failed.texts["count"]
    selected = [v for t, v in failed.elements if t == "option" and "selected" in v]
    assert [v["value"] for v in selected] == ["failed"]
    by_code = await dom(f"{base}/ui?code=INSUFFICIENT_CREDITS")
    assert [r["data-job"] for r in by_code.having("data-job")] == [str(ids["bob"])]
    by_user = await dom(f"{base}/ui?user=alice&status=succeeded")
    assert [r["data-job"] for r in by_user.having("data-job")] == [str(ids["alice"])]
    nobody = await dom(f"{base}/ui?user=alice&status=failed")
    assert nobody.having("data-job") == []

    first = await dom(f"{base}/ui?limit=5")
    page = [r["data-job"] for r in first.having("data-job")]
    assert page == [str(ids[u]) for u in ("gus", "hana", "carol", "fay", "dave")]
    following = next(v["href"] for t, v in first.elements if v.get("id") == "next")
    second = await dom(f"{base}{following}")
    assert [r["data-job"] for r in second.having("data-job")] == [
        str(ids["bob"]),
        str(ids["alice"]),
    ]
    assert "next" not in second.texts


async def _check_timelines(base: str, db: Database, ids: dict[str, uuid.UUID]) -> None:
    timeline = await dom(f"{base}/ui/jobs/{ids['alice']}")
    events = [row["data-event"] for row in timeline.having("data-event")]
    assert events[0] == "created"
    # The debit and the admission commit together; the debit row's clock reads first.
    assert set(events[1:3]) == {"admitted", "debit"}
    assert events.count("prediction") == 2
    assert events.count("output") == 2
    assert events.count("debit") == 1
    assert "refund" not in events
    assert events[-1] == "finished"
    predictions = await db.job_timeline(ids["alice"])
    assert predictions is not None
    assert {r["data-prediction"] for r in timeline.having("data-prediction")} == {
        p.prediction_id for p in predictions.predictions
    }
    assert timeline.texts["prompt"] == "hidden"
    assert "params" not in timeline.texts
    assert PROMPTS["alice"] not in "".join(timeline.texts.values())

    failed_job = await dom(f"{base}/ui/jobs/{ids['dave']}")
    kinds = [row["data-event"] for row in failed_job.having("data-event")]
    assert kinds.index("debit") < kinds.index("refund") <= kinds.index("finished") + 1
    assert [r["data-kind"] for r in failed_job.having("data-kind")] == ["debit", "refund"]
    running = await dom(f"{base}/ui/jobs/{ids['carol']}")
    assert [r["data-event"] for r in running.having("data-event")][-1] == "now"
    rejected = await dom(f"{base}/ui/jobs/{ids['bob']}")
    assert "admitted" not in [r["data-event"] for r in rejected.having("data-event")]
    assert rejected.having("data-kind") == []


async def _check_images_and_callbacks(base: str, db: Database, ids: dict[str, uuid.UUID]) -> None:
    """Each output shows as a thumbnail from its public URL; a given-up callback is listed."""
    outputs = (await db.job_outputs([ids["alice"]]))[ids["alice"]]
    urls = [output.public_url for output in outputs]
    assert len(urls) == 2
    assert all(url is not None and url.startswith(base + "/renders/") for url in urls)
    page = await dom(f"{base}/ui/jobs/{ids['alice']}")
    thumbs = [v for t, v in page.elements if t == "img" and "data-thumb" in v]
    assert [(t["data-thumb"], t["src"]) for t in thumbs] == [("0", urls[0]), ("1", urls[1])]
    listing = await dom(f"{base}/ui")
    minis = [v["src"] for t, v in listing.elements if t == "img" and v.get("class") == "mini"]
    assert minis == urls
    async with httpx.AsyncClient(trust_env=False) as client:
        for url in urls:
            assert url is not None
            assert (await client.get(url)).content[:8] == b"\x89PNG\r\n\x1a\n"

    hana = await dom(f"{base}/ui/jobs/{ids['hana']}")
    (row,) = hana.having("data-callback")
    assert row["data-state"] in {"owed", "failed"}
    assert "Event seq" in hana.texts["ending"]
    callbacks = await dom(f"{base}/ui/callbacks")
    listed = [r["data-callback"] for r in callbacks.having("data-callback")]
    assert listed == [row["data-callback"]]
    assert "/hook" not in "".join(callbacks.texts.values())  # the receiver's path stays private
