"""A callback survives the daemon that was sending it: SIGKILL mid-request, the next owner sends.

Daemons run as real processes. The receiver holds the first POST open; that daemon is
killed -9; another daemon takes the slots when their leases expire and sends the same
ending again, with the same webhook-id, signed. At least once, never lost.
"""

from __future__ import annotations

import signal
import sys
import uuid

import pytest
import trio

from orchestrator.db import Database

from . import pg
from .e2e import start_simulator, wait_terminal
from .receiver import SECRET, Receiver, start_receiver
from .test_daemon_process import _env

pytestmark = pytest.mark.slow


async def _start(env: dict[str, str], log_path) -> trio.Process:
    log = log_path.open("ab")
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", "orchestrator.cli", "run"], env=env, stdout=log, stderr=log
    )


async def test_a_daemon_killed_while_sending_a_callback_leaves_it_to_the_next_owner(
    nursery, db: Database, db_url: str, tmp_path
):
    provider = await start_simulator(nursery)
    held = {"first": True}

    def answer(_request: object) -> int | None:
        if held["first"]:
            held["first"] = False
            return None  # hold the first attempt open: the daemon dies waiting
        return 200

    receiver = await start_receiver(nursery, Receiver(answer=answer))
    env = _env(
        db_url,
        provider,
        ORCHESTRATOR_CALLBACK_HOSTS=receiver.url,
        ORCHESTRATOR_CALLBACK_SECRET=SECRET,
        ORCHESTRATOR_CALLBACK_TIMEOUT="2",
        ORCHESTRATOR_CALLBACK_BACKOFF="0.1",
        ORCHESTRATOR_LEASE_TTL="3",
        ORCHESTRATOR_LEASE_RENEW="0.5",
    )
    await db.grant("ana", 5)
    job_id = await db.submit_job("ana", "a cat", callback_url=f"{receiver.url}/hook")
    first = await _start({**env, "ORCHESTRATOR_MEMBER_ID": "first"}, tmp_path / "first.log")
    try:
        await wait_terminal(db, [job_id])
        await receiver.wait_for(1)
    finally:
        first.kill()
        await first.wait()
    assert first.returncode == -signal.SIGKILL
    # The claim lasts the request timeout plus a margin (7 s), the lease 3 s: then it is due.
    second = await _start({**env, "ORCHESTRATOR_MEMBER_ID": "second"}, tmp_path / "second.log")
    try:
        await receiver.wait_for(2, timeout=30)
        with trio.fail_after(10):
            while True:
                (row,) = await pg.fetch(db_url, "SELECT * FROM orchestrator.callback_deliveries")
                if row["delivered_at"] is not None:
                    break
                await trio.sleep(0.05)
    finally:
        second.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await second.wait()
        receiver.released.set()
    (event,) = await db.job_events_after(0)
    assert event.job_id == job_id
    first_try, second_try = receiver.requests
    assert first_try.webhook_id == second_try.webhook_id == f"evt_{event.seq}"
    assert first_try.verified
    assert second_try.verified
    assert first_try.body == second_try.body
    assert uuid.UUID(str(second_try.data["job_id"])) == job_id
    assert (row["attempts"], row["claimed_by"]) == (2, "second")
