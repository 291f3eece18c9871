"""Input images and callbacks in admission and at each create, under MockClock.

Refusals come before the debit; presigned URLs are made fresh for every create.
End to end (real Postgres, object storage and the simulator fetching the URLs):
tests/test_app_loop.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from actors import Submit
from orchestrator.core import (
    ErrorCode,
    HostList,
    ImageInput,
    InputsUnavailable,
    JobStatus,
    PrivateInput,
    RemoteInput,
)

from .test_actors import CONFIG, make_rig

NANO = attrs.evolve(
    CONFIG,
    allowed_params=frozenset({"simulate", "image_input"}),
    input_hosts=HostList.parse(["images.example.com"]),
    callback_hosts=HostList.parse(["app.example.com"]),
)


@attrs.define
class FakeInputs:
    """Keys that exist, each a PNG; presigned URLs numbered so each create's can be told apart."""

    present: set[str] = attrs.Factory(set)
    down: bool = False
    checked: list[tuple[ImageInput, ...]] = attrs.Factory(list)
    signed: int = 0

    async def problem(self, inputs: Sequence[ImageInput]) -> str | None:
        if self.down:
            raise InputsUnavailable("the input store did not answer")
        self.checked.append(tuple(inputs))
        for n, entry in enumerate(inputs):
            if isinstance(entry, PrivateInput) and entry.key not in self.present:
                return f"image_input[{n}] does not exist"
        return None

    async def for_provider(self, inputs: Sequence[ImageInput]) -> tuple[str, ...]:
        urls = []
        for entry in inputs:
            self.signed += 1
            if isinstance(entry, RemoteInput):
                urls.append(entry.url)
            else:
                urls.append(f"https://store.test/{entry.key}?sig={self.signed}")
        return tuple(urls)


async def test_a_missing_input_is_refused_before_the_debit(autojump_clock, nursery):
    inputs = FakeInputs(present={"private/ana/inputs/cat.png"})
    rig = await make_rig(nursery, NANO, inputs=inputs)
    rig.store.grant("ana", 5, plan="pro")
    missing = rig.submit("ana", params={"image_input": ["private/ana/inputs/dog.png"]})
    await rig.settled(missing)
    job = rig.store.jobs[missing]
    assert (job.status, job.error_code) == (JobStatus.REJECTED, ErrorCode.VALIDATION_ERROR)
    assert "does not exist" in (job.error_message or "")
    assert rig.store.balance("ana") == 5
    assert rig.provider.predictions == {}


async def test_another_users_input_is_refused_without_even_asking_the_store(
    autojump_clock, nursery
):
    inputs = FakeInputs(present={"private/bob/inputs/cat.png"})
    rig = await make_rig(nursery, NANO, inputs=inputs)
    rig.store.grant("ana", 5, plan="pro")
    theft = rig.submit("ana", params={"image_input": ["private/bob/inputs/cat.png"]})
    await rig.settled(theft)
    job = rig.store.jobs[theft]
    assert (job.status, job.error_code) == (JobStatus.REJECTED, ErrorCode.VALIDATION_ERROR)
    assert inputs.checked == []
    assert rig.store.balance("ana") == 5
    assert rig.provider.predictions == {}


async def test_every_create_gets_freshly_signed_urls_a_retry_too(autojump_clock, nursery):
    inputs = FakeInputs(present={"private/ana/inputs/cat.png"})
    rig = await make_rig(nursery, NANO, inputs=inputs)
    rig.store.grant("ana", 5, plan="pro")
    job_id = rig.submit(
        "ana",
        params={
            "simulate": "fail_once",
            "image_input": ["private/ana/inputs/cat.png", "https://images.example.com/a.png"],
        },
    )
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    sent = [request.params["image_input"] for _, request in rig.provider.predictions.values()]
    assert sent == [
        ["https://store.test/private/ana/inputs/cat.png?sig=1", "https://images.example.com/a.png"],
        ["https://store.test/private/ana/inputs/cat.png?sig=3", "https://images.example.com/a.png"],
    ]
    stored = rig.store.jobs[job_id].params["image_input"]
    assert stored == ["private/ana/inputs/cat.png", "https://images.example.com/a.png"]
    assert rig.store.balance("ana") == 4


async def test_an_input_store_outage_leaves_the_job_queued_and_uncharged(autojump_clock, nursery):
    inputs = FakeInputs(present={"private/ana/inputs/cat.png"}, down=True)
    rig = await make_rig(nursery, NANO, inputs=inputs)
    rig.store.grant("ana", 5, plan="pro")
    job_id = rig.submit("ana", params={"image_input": ["private/ana/inputs/cat.png"]})
    await trio.sleep(5)
    assert rig.status(job_id) is JobStatus.QUEUED
    assert rig.store.balance("ana") == 5
    inputs.down = False
    rig.registry.deliver("ana", Submit(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED


async def test_a_callback_to_a_host_off_the_list_is_refused_uncharged(autojump_clock, nursery):
    rig = await make_rig(nursery, NANO)
    rig.store.grant("ana", 5, plan="pro")
    evil = rig.store.submit("ana", "x", callback_url="http://169.254.169.254/latest/meta-data")
    fine = rig.store.submit("ana", "y", callback_url="https://app.example.com/hooks/gen")
    for job_id in (evil, fine):
        rig.registry.deliver("ana", Submit(job_id))
    await rig.settled(evil, fine)
    refused = rig.store.jobs[evil]
    assert (refused.status, refused.error_code) == (JobStatus.REJECTED, ErrorCode.VALIDATION_ERROR)
    assert "ORCHESTRATOR_CALLBACK_HOSTS" in (refused.error_message or "")
    assert rig.status(fine) is JobStatus.SUCCEEDED
    assert rig.store.balance("ana") == 4
