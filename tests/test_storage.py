"""Output delivery: downloads that refuse what they must, storage that keeps exactly N."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio

from orchestrator.asgi import lifespan
from orchestrator.core import JobStatus, OutputUnavailable
from orchestrator.db import Database
from orchestrator.outputs import Downloader, FileObjects

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


class Files:
    """A loopback file server that misbehaves on purpose."""

    def __init__(self) -> None:
        self.flaky_calls = 0
        self.slow_now = 0
        self.slow_peak = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        path = scope["path"]
        status, headers, body = 200, [(b"content-type", b"image/png")], PNG
        if path == "/html":
            headers = [(b"content-type", b"text/html")]
            body = b"<html>not an image</html>"
        elif path == "/big":
            body = b"\x00" * 4096
        elif path == "/flaky":
            self.flaky_calls += 1
            if self.flaky_calls < 3:
                status, body = 503, b""
        elif path == "/hang":
            await trio.sleep_forever()
        elif path == "/slow":
            self.slow_now += 1
            self.slow_peak = max(self.slow_peak, self.slow_now)
            await trio.sleep(0.1)
            self.slow_now -= 1
        elif path == "/missing":
            status, body = 404, b""
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def serve_files(nursery: trio.Nursery) -> tuple[str, Files]:
    app = Files()
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.1
    binds = await nursery.start(functools.partial(hypercorn.trio.serve, app, config))
    return binds[0], app


@pytest.fixture
async def downloader(nursery, tmp_path: Path):
    base, files = await serve_files(nursery)
    host = base.removeprefix("http://")
    async with httpx.AsyncClient(trust_env=False) as client:
        yield (
            Downloader(
                client,
                _files(tmp_path),
                allowed_hosts=[host],
                max_bytes=1024,
                timeout_s=0.5,
            ),
            base,
            files,
        )


async def test_a_downloaded_image_is_stored_with_its_size_and_hash(downloader, tmp_path: Path):
    """public/renders/<job>/<idx>.<ext>, with size, sha256, content type and public URL."""
    download, base, _ = downloader
    job_id = uuid.uuid4()
    stored = await download.store(job_id, 3, f"{base}/ok.png")
    path = tmp_path / "public" / "renders" / str(job_id) / "3.png"
    assert stored.idx == 3
    assert stored.public_url == f"http://daemon.test/renders/{job_id}/3.png"
    assert stored.path == str(path)
    assert path.read_bytes() == PNG
    assert stored.size_bytes == len(PNG)
    assert stored.sha256 == hashlib.sha256(PNG).hexdigest()
    assert stored.content_type == "image/png"
    again = await download.store(job_id, 3, f"{base}/ok.png")
    assert again == stored


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/big", "larger than 1024 bytes"),
        ("/html", "is not an image"),
        ("/missing", "HTTP 404"),
        ("/hang", "timed out"),
    ],
)
async def test_bad_downloads_are_refused_with_a_clear_reason(
    downloader, tmp_path: Path, path, reason
):
    """Oversized, non-image, missing and hanging outputs fail with a message, storing nothing."""
    download, base, _ = downloader
    with trio.fail_after(10), pytest.raises(OutputUnavailable, match=reason):
        await download.store(uuid.uuid4(), 0, f"{base}{path}")
    assert not (tmp_path / "public").exists()


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/image.png",
        "gopher://127.0.0.1/x",
    ],
)
async def test_outputs_from_hosts_off_the_allow_list_are_never_fetched(downloader, url):
    """SSRF: a provider-controlled URL cannot make the daemon read local or internal resources."""
    download, _, _ = downloader
    with pytest.raises(OutputUnavailable, match="refused"):
        await download.store(uuid.uuid4(), 0, url)


async def test_transient_server_errors_are_retried(downloader):
    """503s are retried with backoff; the third attempt's image is kept."""
    download, base, files = downloader
    stored = await download.store(uuid.uuid4(), 0, f"{base}/flaky")
    assert files.flaky_calls == 3
    assert stored.size_bytes == len(PNG)


async def test_downloads_run_at_most_their_concurrency_at_once(nursery, tmp_path: Path):
    """A burst of outputs queues for the downloader, not for the HTTP pool's timeout."""
    base, files = await serve_files(nursery)
    async with httpx.AsyncClient(trust_env=False) as client:
        downloader = Downloader(
            client,
            _files(tmp_path),
            allowed_hosts=[base.removeprefix("http://")],
            max_bytes=1024,
            timeout_s=0.5,
            concurrency=3,
        )
        job_id = uuid.uuid4()
        async with trio.open_nursery() as burst:
            for idx in range(12):
                burst.start_soon(downloader.store, job_id, idx, f"{base}/slow")
    assert files.slow_peak == 3
    assert len(list((tmp_path / "public" / "renders" / str(job_id)).iterdir())) == 12


async def test_a_thirty_output_job_stores_exactly_thirty_files(nursery, db: Database, db_url: str):
    """Seed 002: thirty paid, thirty stored, one row per index, never a thirty-first."""
    provider = await start_simulator(nursery, latency=(0.02, 0.05))
    settings = settings_for(db_url, provider)
    await start_daemon(nursery, settings)
    await db.grant("pat", 30, plan="pro")
    job_id = await db.submit_job("pat", "thirty photos", num_outputs=30)
    (job,) = await wait_terminal(db, [job_id], timeout=30)
    assert job.status is JobStatus.SUCCEEDED
    assert not job.partial
    rows = await pg.fetch(
        db_url,
        "SELECT idx, path, sha256 FROM orchestrator.outputs WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    assert [row["idx"] for row in rows] == list(range(30))
    files = sorted((settings.storage_root / "public" / "renders" / str(job_id)).iterdir())
    assert len(files) == 30
    for row in rows:
        assert hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest() == row["sha256"]
    account = await db.account("pat")
    assert account is not None
    assert account.balance == 0
    assert (await db.audit()).ok


async def test_with_failing_predictions_delivered_plus_refunded_is_exactly_thirty(
    nursery, db: Database, db_url: str
):
    """Partial delivery refunds exactly the missing outputs, in one refund row."""
    provider = await start_simulator(nursery, latency=(0.02, 0.05), failure_rate=0.2, seed=5)
    await start_daemon(nursery, settings_for(db_url, provider))
    await db.grant("quinn", 30, plan="pro")
    job_id = await db.submit_job("quinn", "thirty photos, some lost", num_outputs=30)
    (job,) = await wait_terminal(db, [job_id], timeout=30)
    assert job.status is JobStatus.SUCCEEDED
    assert job.partial
    delivered = (
        await pg.fetch(
            db_url, "SELECT count(*) AS n FROM orchestrator.outputs WHERE job_id = $1", job_id
        )
    )[0]["n"]
    refunds = await pg.fetch(
        db_url,
        "SELECT amount FROM orchestrator.ledger WHERE job_id = $1 AND kind = 'refund'",
        job_id,
    )
    assert len(refunds) == 1
    assert 0 < delivered < 30
    assert delivered + refunds[0]["amount"] == 30
    account = await db.account("quinn")
    assert account is not None
    assert account.balance == 30 - delivered
    assert (await db.audit()).ok


async def test_outputs_refused_by_the_allow_list_fail_the_job_and_refund(
    nursery, db: Database, db_url: str
):
    """A provider pointing at a host we do not trust delivers nothing and charges nothing."""
    provider = await start_simulator(nursery)
    await start_daemon(nursery, settings_for(db_url, provider, download_hosts=("cdn.invalid",)))
    await db.grant("ray", 2, plan="pro")
    job_id = await db.submit_job("ray", "from elsewhere")
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.FAILED
    assert job.error_message is not None
    assert "is not on ORCHESTRATOR_DOWNLOAD_HOSTS" in job.error_message
    account = await db.account("ray")
    assert account is not None
    assert account.balance == 2


async def test_delete_removes_a_finished_jobs_files_and_keeps_the_rows(
    nursery, db: Database, db_url: str
):
    """`orchestrator delete` removes stored files and soft-deletes their rows."""
    provider = await start_simulator(nursery)
    settings = settings_for(db_url, provider)
    await start_daemon(nursery, settings)
    await db.grant("sam", 5, plan="pro")
    job_id = await db.submit_job("sam", "two to delete", num_outputs=2)
    await wait_terminal(db, [job_id])
    folder = settings.storage_root / "public" / "renders" / str(job_id)
    assert len(list(folder.iterdir())) == 2
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "ORCHESTRATOR_STORAGE_ROOT": str(settings.storage_root),
    }
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "delete", str(job_id)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    assert result.returncode == 0, result.stderr
    assert "2 objects removed" in result.stdout
    assert list(folder.iterdir()) == []
    rows = await pg.fetch(
        db_url, "SELECT deleted_at FROM orchestrator.outputs WHERE job_id = $1", job_id
    )
    assert len(rows) == 2
    assert all(row["deleted_at"] is not None for row in rows)


def _files(root: Path) -> FileObjects:
    return FileObjects(root, base_url="http://daemon.test", signing_key=b"k" * 32)
