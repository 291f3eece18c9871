"""A job's input images as the daemon checks them before the debit, and hands them on.

Private inputs live in the store (the in-memory twin here: its rules are the file and
S3 stores', tests/test_object_store.py); allow-listed URLs are fetched over real HTTP on
loopback from a server that misbehaves on purpose (tests/test_storage.py's).
End to end with the daemon and the simulator: tests/test_app_loop.py.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from orchestrator.core import InputsUnavailable, PrivateInput, RemoteInput
from orchestrator.outputs import StorageUnavailable, StoredInputs
from orchestrator.outputs.testing import MemoryObjects

from .test_storage import PNG, serve_files

TIMEOUT_S = 0.5


@pytest.fixture
async def checked(nursery):
    base, _files = await serve_files(nursery)
    store = MemoryObjects()
    await store.put("private/ana/inputs/cat.png", PNG, content_type="image/png")
    await store.put("private/ana/inputs/fake.png", b"<html>", content_type="image/png")
    await store.put("private/ana/inputs/huge.png", PNG + b"\0" * 4096, content_type="image/png")
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
        yield (
            StoredInputs(store, client, max_bytes=1024, url_ttl_s=300, timeout_s=TIMEOUT_S),
            base,
            store,
        )


async def test_present_small_images_pass_and_are_handed_on_presigned(checked):
    inputs, base, store = checked
    entries = (PrivateInput("private/ana/inputs/cat.png"), RemoteInput(f"{base}/ok.png"))
    assert await inputs.problem(entries) is None
    own, remote = await inputs.for_provider(entries)
    assert remote == f"{base}/ok.png"
    assert own != "private/ana/inputs/cat.png"
    assert store.fetch(own) == PNG


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (PrivateInput("private/ana/inputs/none.png"), "does not exist"),
        (PrivateInput("private/ana/inputs/fake.png"), "is not an image"),
        (PrivateInput("private/ana/inputs/huge.png"), "is larger than 1024 bytes"),
        (PrivateInput("private/ana/inputs/../../x.png"), "is not a usable key"),
        (RemoteInput("{base}/html"), "is not an image"),
        (RemoteInput("{base}/big"), "is larger than 1024 bytes"),
        (RemoteInput("{base}/missing"), "could not be fetched: HTTP 404"),
        (RemoteInput("{base}/hang"), f"could not be fetched within {TIMEOUT_S:g} s"),
        (RemoteInput("{base}/cb\x01"), "could not be fetched"),
    ],
)
async def test_anything_else_is_refused_with_the_inputs_place_and_reason(checked, entry, why):
    inputs, base, _ = checked
    if isinstance(entry, RemoteInput):
        entry = RemoteInput(entry.url.format(base=base))
    ok = PrivateInput("private/ana/inputs/cat.png")
    with trio.fail_after(5 * TIMEOUT_S):
        problem = await inputs.problem((ok, entry))
    assert problem is not None
    assert problem.startswith("image_input[1] ")
    assert why in problem


async def test_inputs_are_checked_at_once_so_four_slow_ones_take_one_timeout(checked):
    inputs, base, _ = checked
    started = trio.current_time()
    problem = await inputs.problem(tuple(RemoteInput(f"{base}/hang?{n}") for n in range(4)))
    assert problem is not None
    assert problem.startswith("image_input[0] could not be fetched within")
    assert trio.current_time() - started < 2 * TIMEOUT_S


async def test_a_store_outage_is_no_verdict_the_job_waits(checked):
    inputs, _, store = checked

    async def down(key: str) -> None:
        raise StorageUnavailable("the bucket is unreachable")

    store.head = down  # type: ignore[method-assign]
    with pytest.raises(InputsUnavailable):
        await inputs.problem(
            (PrivateInput("private/ana/inputs/cat.png"), PrivateInput("private/ana/inputs/x.png"))
        )
