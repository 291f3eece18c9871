"""Actor logic under Trio's MockClock: the in-memory store twin and a fake provider, no I/O.

With `autojump_clock` every wait is skipped instantly, so 120 s deadlines and
60 s idle periods are tested at their real values in milliseconds. Each
behaviour here also has an end-to-end test on real Postgres and the simulator.
"""

from __future__ import annotations

import itertools
import uuid

import attrs
import pytest
import trio

from actors import ActorConfig, Cancel, Offer, Registry, Resume, Submit
from orchestrator.core import (
    ErrorCode,
    Fence,
    InputImages,
    JobStatus,
    Observer,
    OutputStore,
    Plan,
    Prediction,
    PredictionRequest,
    PredictionStatus,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ProviderUnreachable,
    StoredOutput,
    TaggedPrediction,
)
from orchestrator.db import DbUnavailable
from orchestrator.db.testing import InMemoryStore

CONFIG = ActorConfig(
    deadline_s=120.0,
    poll_initial_s=0.5,
    poll_multiplier=1.6,
    poll_max_s=5.0,
    allowed_params=frozenset({"simulate", "seed"}),
)


@attrs.define
class FakeProvider:
    """Predictions that succeed after `latency` seconds unless params say otherwise."""

    latency: float = 3.0
    submit_delay: float = 0.0
    # The prediction exists upstream this long before its id comes back.
    answer_delay: float = 0.0
    rate_limited_submits: int = 0
    unreachable_submits: int = 0
    # Submits answered 5xx (`unavailable_status`, None for a read timeout) doing nothing.
    unavailable_submits: int = 0
    unavailable_status: int | None = 503
    predictions: dict[str, tuple[float, PredictionRequest]] = attrs.Factory(dict)
    gets: list[float] = attrs.Factory(list)
    canceled: list[str] = attrs.Factory(list)
    found: list[uuid.UUID] = attrs.Factory(list)
    unusable_ids: set[str] = attrs.Factory(set)
    lists: list[float] = attrs.Factory(list)
    # Lookups by tag that fail (a listing that times out) before one answers.
    failing_finds: int = 0
    page_size: int = 100
    list_without_output: bool = False

    async def submit(self, request: PredictionRequest) -> Prediction:
        if self.rate_limited_submits:
            self.rate_limited_submits -= 1
            raise ProviderRateLimited("slow down", retry_after=2.0)
        if self.unreachable_submits:
            self.unreachable_submits -= 1
            raise ProviderUnreachable("replicate submit: could not connect (ConnectTimeout)")
        if self.unavailable_submits:
            self.unavailable_submits -= 1
            status = self.unavailable_status
            raise ProviderUnavailable(f"replicate submit: HTTP {status}", status_code=status)
        await trio.sleep(self.submit_delay)
        prediction_id = f"p{len(self.predictions)}"
        self.predictions[prediction_id] = (trio.current_time(), request)
        await trio.sleep(self.answer_delay)
        return Prediction(prediction_id, PredictionStatus.STARTING)

    async def get(self, prediction_id: str) -> Prediction:
        self.gets.append(trio.current_time())
        if prediction_id in self.unusable_ids:
            raise ProviderRejected("replicate: prediction_id is not a Replicate prediction id")
        created, request = self.predictions[prediction_id]
        if prediction_id in self.canceled:
            return Prediction(prediction_id, PredictionStatus.CANCELED)
        directive = request.params.get("simulate")
        if directive == "hang" or trio.current_time() - created < self.latency:
            return Prediction(prediction_id, PredictionStatus.PROCESSING)
        if directive == "fail":
            return Prediction(prediction_id, PredictionStatus.FAILED, error="out of memory")
        if directive == "fail_nsfw":
            return Prediction(
                prediction_id, PredictionStatus.FAILED, error="NSFW content", retryable=False
            )
        if directive == "fail_transient" or (
            directive == "fail_once" and self._first_for_output(prediction_id)
        ):
            return Prediction(
                prediction_id, PredictionStatus.FAILED, error="interrupted", retryable=True
            )
        outputs = tuple(
            f"https://cdn.test/{prediction_id}/{n}.png" for n in range(request.num_outputs)
        )
        return Prediction(prediction_id, PredictionStatus.SUCCEEDED, output=outputs)

    def _first_for_output(self, prediction_id: str) -> bool:
        _, request = self.predictions[prediction_id]
        tag = (request.job_id, request.output_index)
        first = next(
            p for p, (_, r) in self.predictions.items() if (r.job_id, r.output_index) == tag
        )
        return first == prediction_id

    async def cancel(self, prediction_id: str) -> None:
        self.canceled.append(prediction_id)

    def parse_webhook(self, body: bytes) -> Prediction:
        raise NotImplementedError("the actor tests send no webhooks")

    async def find_for_job(
        self, job_id: uuid.UUID, output_index: int = 0, *, since: object = None
    ) -> Prediction | None:
        del since  # the fake keeps every prediction: none is ever too old to find
        if self.failing_finds:
            self.failing_finds -= 1
            raise ProviderUnavailable("replicate list: transport error (ReadError)")
        self.found.append(job_id)
        for prediction_id, (_, request) in reversed(self.predictions.items()):
            if (request.job_id, request.output_index) == (job_id, output_index):
                return await self.get(prediction_id)
        return None

    async def recent(self) -> tuple[TaggedPrediction, ...]:
        return ()

    async def list_page(
        self, cursor: str | None = None
    ) -> tuple[tuple[Prediction, ...], str | None]:
        self.lists.append(trio.current_time())
        ids = list(reversed(self.predictions))
        start = int(cursor or 0)
        page = ids[start : start + self.page_size]
        listed = []
        for prediction_id in page:
            seen = await self.get(prediction_id)
            self.gets.pop()  # a listing is not a poll
            listed.append(attrs.evolve(seen, output=()) if self.list_without_output else seen)
        more = start + self.page_size < len(ids)
        return tuple(listed), str(start + self.page_size) if more else None


@attrs.define
class Rig:
    store: InMemoryStore
    provider: FakeProvider
    registry: Registry
    finished_at: dict[uuid.UUID, float]

    def submit(self, user: str, prompt: str = "a lighthouse", **kw: object) -> uuid.UUID:
        job_id = self.store.submit(user, prompt, **kw)  # type: ignore[arg-type]
        assert self.registry.deliver(user, Submit(job_id)) is Offer.ACCEPTED
        return job_id

    def status(self, job_id: uuid.UUID) -> JobStatus:
        return self.store.jobs[job_id].status

    async def settled(self, *job_ids: uuid.UUID) -> None:
        """Wait (in virtual time under MockClock) until every job is terminal; fail if never."""
        with trio.fail_after(4 * 3600):
            while not all(self.status(j).terminal for j in job_ids):
                await trio.sleep(0.01)


@attrs.define
class Leases:
    """The slots this test daemon holds, and the fence of each."""

    held: dict[int, Fence]

    @property
    def slots(self) -> list[int]:
        return sorted(self.held)

    def owns(self, slot: int) -> bool:
        return slot in self.held

    def fence(self, slot: int) -> Fence | None:
        return self.held.get(slot)


async def make_rig(
    nursery: trio.Nursery,
    config: ActorConfig = CONFIG,
    *,
    slots: Leases | None = None,
    outputs: OutputStore | None = None,
    observer: Observer | None = None,
    inputs: InputImages | None = None,
    **provider: object,
) -> Rig:
    store = InMemoryStore(
        plans={
            "free": Plan("free", 100, 2, 0.0, 1),
            "pro": Plan("pro", 10_000, 50, 0.0, 1),
            "slow": Plan("slow", 100, 5, 10.0, 1),
        }
    )
    finished_at: dict[uuid.UUID, float] = {}
    original_finish = store.finish

    async def finish(job_id: uuid.UUID, *args: object, **kwargs: object):
        finished_at.setdefault(job_id, trio.current_time())
        return await original_finish(job_id, *args, **kwargs)  # type: ignore[arg-type]

    store.finish = finish  # type: ignore[method-assign]
    fake = FakeProvider(**provider)  # type: ignore[arg-type]
    registry = Registry(
        store=store,
        provider=fake,
        config=config,
        slots=slots,
        outputs=outputs,
        observer=observer,
        inputs=inputs,
    )
    await nursery.start(registry.run)
    return Rig(store, fake, registry, finished_at)


async def test_the_deadline_fires_at_120_seconds_not_119_nor_180(autojump_clock, nursery):
    """A hanging prediction is cut exactly at the job's deadline, then refunded."""
    rig = await make_rig(nursery)
    rig.store.grant("alice", 5, plan="pro")
    admitted_at = trio.current_time()
    job_id = rig.submit("alice", params={"simulate": "hang"})
    await trio.sleep(119.9)
    assert rig.status(job_id) is JobStatus.PROCESSING
    await rig.settled(job_id)
    assert rig.finished_at[job_id] - admitted_at == pytest.approx(120.0, abs=0.05)
    job = rig.store.jobs[job_id]
    assert (job.status, job.error_code) == (JobStatus.TIMED_OUT, ErrorCode.TIMEOUT)
    assert rig.provider.canceled == ["p0"]
    assert rig.store.balance("alice") == 5


async def test_polls_back_off_geometrically_to_the_cap(autojump_clock, nursery):
    """Polling is 0.5 s, 0.8 s, 1.28 s ... up to 5 s between polls, not a fixed 2 s loop."""
    rig = await make_rig(nursery, latency=40.0)
    rig.store.grant("bob", 5, plan="pro")
    job_id = rig.submit("bob")
    await rig.settled(job_id)
    gaps = [b - a for a, b in zip([0.0, *rig.provider.gets], rig.provider.gets, strict=False)]
    assert gaps[:4] == pytest.approx([0.5, 0.8, 1.28, 2.048], abs=0.01)
    assert max(gaps) == pytest.approx(5.0, abs=0.01)
    assert len(rig.provider.gets) < 20  # a fixed 2 s loop would poll 20 times in 40 s
    assert rig.status(job_id) is JobStatus.SUCCEEDED


async def test_an_idle_actor_retires_and_the_next_message_starts_a_fresh_one(
    autojump_clock, nursery
):
    """Actors exist while they have work; retirement loses no later message."""
    rig = await make_rig(nursery, attrs.evolve(CONFIG, idle_s=60.0), latency=1.0)
    rig.store.grant("carol", 5, plan="pro")
    first = rig.submit("carol", "one")
    await rig.settled(first)
    assert len(rig.registry) == 1
    await trio.sleep(61)
    assert len(rig.registry) == 0
    assert rig.registry.retired == 1
    second = rig.submit("carol", "two")
    await rig.settled(second)
    assert rig.registry.started == 2
    assert rig.status(second) is JobStatus.SUCCEEDED


async def test_messages_delivered_at_the_moment_of_retirement_are_never_lost(
    autojump_clock, nursery
):
    """Deliveries racing the idle timer at every offset all get handled."""
    rig = await make_rig(nursery, attrs.evolve(CONFIG, idle_s=1.0), latency=0.0)
    rig.store.grant("dave", 1000, plan="pro")
    job_ids = []
    for offset in [0.99, 1.0, 1.0, 1.01, 0.5, 1.0, 2.0, 1.0]:
        await trio.sleep(offset)
        job_ids.append(rig.submit("dave", f"prompt at {trio.current_time()}"))
    await rig.settled(*job_ids)
    assert {rig.status(j) for j in job_ids} == {JobStatus.SUCCEEDED}


@pytest.mark.parametrize("phase", ["queued", "submitting", "processing", "finished"])
async def test_cancellation_at_every_phase_refunds_exactly_what_was_taken(
    autojump_clock, nursery, phase
):
    """Queued: refused uncharged. Submitting or processing: cancelled, refunded. Finished: no-op."""
    rig = await make_rig(nursery, submit_delay=5.0 if phase == "submitting" else 0.0, latency=10.0)
    rig.store.grant("erin", 4, plan="pro")
    if phase == "queued":
        job_id = rig.store.submit("erin", "x")
        rig.store.request_cancel(job_id)
        rig.registry.deliver("erin", Submit(job_id))
        await rig.settled(job_id)
        job = rig.store.jobs[job_id]
        assert (job.status, job.error_code) == (JobStatus.CANCELED, ErrorCode.CANCELED)
        assert rig.store.balance("erin") == 4
        return
    job_id = rig.submit("erin", "x")
    await trio.sleep({"submitting": 2.0, "processing": 5.0, "finished": 20.0}[phase])
    expected_status = JobStatus.SUCCEEDED if phase == "finished" else JobStatus.CANCELED
    assert rig.store.request_cancel(job_id) is (phase != "finished")
    assert rig.registry.deliver("erin", Cancel(job_id)) is Offer.ACCEPTED
    await rig.settled(job_id)
    await trio.sleep(1)
    assert rig.status(job_id) is expected_status
    assert rig.store.balance("erin") == (3 if phase == "finished" else 4)
    assert rig.store.ledger_sum("erin") == rig.store.balance("erin")
    if phase == "processing":
        assert rig.provider.canceled == ["p0"]


async def test_twenty_identical_submissions_admit_one(autojump_clock, nursery):
    """Serial admission per user makes duplicates visible: one admitted, nineteen DUPLICATE."""
    rig = await make_rig(nursery)
    rig.store.grant("fay", 50, plan="pro")
    job_ids = [rig.submit("fay", "same") for _ in range(20)]
    await rig.settled(*job_ids)
    codes = sorted(str(rig.store.jobs[j].error_code) for j in job_ids)
    assert codes == ["DUPLICATE"] * 19 + ["None"]
    assert rig.store.balance("fay") == 49


async def test_rate_limits_are_measured_from_the_last_admission(autojump_clock, nursery):
    """A plan's minimum gap between generations refuses early jobs, then admits."""
    rig = await make_rig(nursery, latency=0.0)
    rig.store.grant("gus", 10, plan="slow")
    first = rig.submit("gus", "one")
    await rig.settled(first)
    await trio.sleep(5)
    early = rig.submit("gus", "two")
    await rig.settled(early)
    assert rig.store.jobs[early].error_code is ErrorCode.RATE_LIMITED
    await trio.sleep(6)
    later = rig.submit("gus", "three")
    await rig.settled(later)
    assert rig.status(later) is JobStatus.SUCCEEDED


async def test_a_rate_limited_submit_is_retried_after_retry_after(autojump_clock, nursery):
    """A 429 on create certainly created nothing, so it is retried within the deadline."""
    rig = await make_rig(nursery, rate_limited_submits=2, latency=1.0)
    rig.store.grant("hal", 5, plan="pro")
    job_id = rig.submit("hal")
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert rig.finished_at[job_id] >= 4.0


TAGGED = attrs.evolve(CONFIG, webhook_url="https://daemon.test/webhooks/replicate")


async def test_a_prediction_submitted_before_a_crash_is_reattached_on_resume_not_paid_twice(
    autojump_clock, nursery
):
    """A crash between submit and storing the id: the resumed job finds its prediction by tag."""
    rig = await make_rig(nursery, TAGGED)
    rig.store.grant("ida", 5, plan="pro")
    job_id = rig.store.submit("ida", "x")
    await rig.store.admit(job_id, deadline_s=120)
    await rig.provider.submit(PredictionRequest(job_id, "x", {}, 1))
    rig.registry.deliver("ida", Resume(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert rig.provider.found == [job_id]
    assert list(rig.provider.predictions) == ["p0"]
    assert rig.store.predictions[job_id] == {0: "p0"}
    assert rig.store.balance("ida") == 4


async def test_a_resume_whose_lookup_fails_asks_again_instead_of_paying_twice(
    autojump_clock, nursery
):
    """A listing that errors says nothing: the resume asks again and re-attaches, never creates."""
    rig = await make_rig(nursery, TAGGED, failing_finds=3)
    rig.store.grant("ila", 5, plan="pro")
    job_id = rig.store.submit("ila", "x", num_outputs=2)
    await rig.store.admit(job_id, deadline_s=120)
    for idx in (0, 1):
        await rig.provider.submit(PredictionRequest(job_id, "x", {}, 1, output_index=idx))
    rig.registry.deliver("ila", Resume(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert list(rig.provider.predictions) == ["p0", "p1"]  # none created again
    assert rig.store.predictions[job_id] == {0: "p0", 1: "p1"}
    assert rig.provider.failing_finds == 0
    assert rig.store.balance("ila") == 3


async def test_a_resumed_job_submits_each_output_nobody_submitted_and_delivers_all(
    autojump_clock, nursery
):
    """Outputs with a recorded prediction re-attach; the others are looked up, then submitted."""
    rig = await make_rig(nursery, TAGGED)
    rig.store.grant("ivo", 5, plan="pro")
    job_id = rig.store.submit("ivo", "x", num_outputs=3)
    await rig.store.admit(job_id, deadline_s=120)
    first = await rig.provider.submit(PredictionRequest(job_id, "x", {}, 1, output_index=0))
    await rig.store.mark_processing(job_id, provider="replicate", prediction_id=first.id, idx=0)
    await rig.provider.submit(PredictionRequest(job_id, "x", {}, 1, output_index=1))
    rig.registry.deliver("ivo", Resume(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert len(rig.provider.predictions) == 3
    assert rig.store.predictions[job_id] == {0: "p0", 1: "p1", 2: "p2"}
    assert rig.store.balance("ivo") == 2


async def test_a_submit_cut_off_by_the_deadline_is_found_cancelled_and_noted_as_lost(
    autojump_clock, nursery
):
    """The provider created the prediction but its id came back too late: nobody pays on."""
    config = attrs.evolve(TAGGED, deadline_s=10.0)
    rig = await make_rig(nursery, config, answer_delay=30.0, latency=60.0)
    rig.store.grant("ike", 5, plan="pro")
    job_id = rig.submit("ike")
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.TIMED_OUT
    assert rig.provider.canceled == ["p0"]
    ref, status, cancel_sent = rig.store.upstream["p0"]
    assert (ref.job_id, ref.found_by, status, cancel_sent) == (job_id, "lost", "processing", True)
    assert rig.store.balance("ike") == 5


async def test_without_webhook_tags_a_resumed_job_submits_without_searching(
    autojump_clock, nursery
):
    """Untagged predictions cannot be found, so the provider is not asked to search."""
    rig = await make_rig(nursery)
    rig.store.grant("ina", 5, plan="pro")
    job_id = rig.store.submit("ina", "x")
    await rig.store.admit(job_id, deadline_s=120)
    rig.registry.deliver("ina", Resume(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert rig.provider.found == []


async def test_a_full_mailbox_refuses_without_blocking_and_loses_nothing(autojump_clock, nursery):
    """Intake never waits on a busy user; the refused job stays queued for the next scan."""
    rig = await make_rig(nursery, attrs.evolve(CONFIG, mailbox_size=2))
    rig.store.grant("jay", 50, plan="pro")
    ids = [rig.store.submit("jay", f"p{n}") for n in range(3)]
    offers = [rig.registry.deliver("jay", Submit(j)) for j in ids]
    assert offers == [Offer.ACCEPTED, Offer.ACCEPTED, Offer.FULL]
    assert rig.registry.deliver("jay", Submit(ids[0])) is Offer.ALREADY_PENDING
    assert rig.status(ids[2]) is JobStatus.QUEUED
    await rig.settled(ids[0], ids[1])
    assert rig.registry.deliver("jay", Submit(ids[2])) is Offer.ACCEPTED
    await rig.settled(ids[2])


async def test_the_idle_timer_never_cuts_an_admission_after_its_commit(autojump_clock, nursery):
    """A message that lands just before the idle deadline is handled to the end: no charged orphan."""
    rig = await make_rig(nursery, latency=1.0)
    rig.store.grant("kit", 5, plan="pro")
    committed = rig.store.admit
    answered: list[float] = []

    async def admit_then_linger(*args, **kwargs):
        result = await committed(*args, **kwargs)  # committed in the store ...
        await trio.sleep(0.05)  # ... while the answer is still on its way back
        answered.append(trio.current_time())
        return result

    rig.store.admit = admit_then_linger  # type: ignore[method-assign]
    first = rig.submit("kit", "first")
    await rig.settled(first)
    # The actor's idle timer restarted when it finished handling the first message;
    # land the second just before it fires, so the timer fires mid-admission.
    await trio.sleep(answered[0] + CONFIG.idle_s - 0.02 - trio.current_time())
    second = rig.submit("kit", "second")
    await rig.settled(second)
    assert rig.status(second) is JobStatus.SUCCEEDED
    assert rig.store.balance("kit") == 3


async def test_an_unusable_prediction_id_cannot_take_the_daemon_down(autojump_clock, nursery):
    """An id the adapter refuses to use is the provider's garbage: UPSTREAM_ERROR, refunded."""
    rig = await make_rig(nursery, latency=1.0, unusable_ids={"p0"})
    rig.store.grant("lin", 5, plan="pro")
    broken = rig.submit("lin", "broken id")
    await rig.settled(broken)
    job = rig.store.jobs[broken]
    assert (job.status, job.error_code) == (JobStatus.FAILED, ErrorCode.UPSTREAM_ERROR)
    healthy = rig.submit("lin", "next one")
    await rig.settled(healthy)
    assert rig.status(healthy) is JobStatus.SUCCEEDED
    assert rig.store.balance("lin") == 4


def _failing_finish(store: InMemoryStore, error: Exception, times: int) -> list[float]:
    """Make the store's finish raise `error` `times` times; returns when each attempt came."""
    attempts: list[float] = []
    original = store.finish

    async def finish(job_id: uuid.UUID, *args: object, **kwargs: object):
        attempts.append(trio.current_time())
        if len(attempts) <= times:
            raise error
        return await original(job_id, *args, **kwargs)  # type: ignore[arg-type]

    store.finish = finish  # type: ignore[method-assign]
    return attempts


async def test_a_settle_is_retried_with_backoff_until_stored_long_past_its_timeout(
    autojump_clock, nursery
):
    """A database away for two minutes delays the refund; it never abandons it."""
    rig = await make_rig(nursery)
    rig.store.grant("liv", 5, plan="pro")
    attempts = _failing_finish(rig.store, DbUnavailable("the database is restarting"), 20)
    job_id = rig.submit("liv", params={"simulate": "fail"})
    await rig.settled(job_id)
    assert len(attempts) == 21
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(later >= earlier - 1e-9 for earlier, later in itertools.pairwise(gaps))
    assert max(gaps) == pytest.approx(10.0)
    assert attempts[-1] - attempts[0] > 120
    assert rig.status(job_id) is JobStatus.FAILED
    assert rig.store.balance("liv") == 5


async def test_a_settle_failing_on_a_bug_is_left_to_recovery_without_a_retry(
    autojump_clock, nursery
):
    """Retrying cannot fix an unexpected error: the job stays in flight for the orphan scan."""
    rig = await make_rig(nursery)
    rig.store.grant("max", 5, plan="pro")
    attempts = _failing_finish(rig.store, RuntimeError("a bug"), 99)
    job_id = rig.submit("max", params={"simulate": "fail"})
    with trio.fail_after(600):
        while rig.registry.running_jobs or not attempts:
            await trio.sleep(1)
    await trio.sleep(60)
    assert len(attempts) == 1
    assert rig.status(job_id).in_flight
    assert not rig.registry.running_jobs


async def test_a_signed_terminal_webhook_ends_the_wait_without_a_single_poll(
    autojump_clock, nursery
):
    """With webhooks the webhook is the signal; the safety-net poll never had to run."""
    rig = await make_rig(nursery, attrs.evolve(TAGGED, webhook_poll_s=15.0), latency=1.0)
    rig.store.grant("ola", 5, plan="pro")
    job_id = rig.submit("ola")
    await trio.sleep(2.0)
    done = Prediction("p0", PredictionStatus.SUCCEEDED, output=("https://cdn.test/p0/0.png",))
    assert rig.registry.poke("ola", job_id, done)
    assert not rig.registry.poke("nobody", job_id, done)
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert rig.finished_at[job_id] == pytest.approx(2.0, abs=0.01)
    assert rig.provider.gets == []


async def test_an_unsigned_webhook_is_only_a_hint_to_poll_now(autojump_clock, nursery):
    rig = await make_rig(nursery, attrs.evolve(TAGGED, webhook_poll_s=15.0), latency=1.0)
    rig.store.grant("pia", 5, plan="pro")
    job_id = rig.submit("pia")
    await trio.sleep(2.0)
    assert rig.registry.poke("pia", job_id)
    await rig.settled(job_id)
    assert rig.provider.gets == [pytest.approx(2.0, abs=0.01)]


async def test_with_webhooks_a_lost_webhook_is_caught_by_the_slow_safety_net_poll(
    autojump_clock, nursery
):
    rig = await make_rig(nursery, attrs.evolve(TAGGED, webhook_poll_s=15.0), latency=20.0)
    rig.store.grant("quin", 5, plan="pro")
    job_id = rig.submit("quin")
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert rig.provider.gets == pytest.approx([15.0, 30.0], abs=0.05)


async def test_a_graceful_hand_over_records_a_submit_already_sent_and_settles_nothing(
    autojump_clock, nursery
):
    """Dropping a slot's work to hand it over waits for the id of a prediction in creation."""
    rig = await make_rig(nursery, TAGGED, answer_delay=2.0)
    rig.store.grant("hana", 5, plan="pro")
    job_id = rig.submit("hana")
    while not rig.provider.predictions:
        await trio.sleep(0.01)
    (actor,) = rig.registry.drop_slots(frozenset({0}), graceful=True)
    with trio.fail_after(5):
        await actor.done.wait()
    assert rig.store.predictions[job_id] == {0: "p0"}  # recorded before the task stopped
    assert rig.status(job_id) is JobStatus.PROCESSING  # handed over, not settled
    assert rig.store.balance("hana") == 4
    assert rig.registry.deliver("hana", Resume(job_id)) is Offer.ACCEPTED
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert list(rig.provider.predictions) == ["p0"]  # the next owner paid for nothing more
    assert rig.store.balance("hana") == 4


async def test_a_lost_lease_stops_a_job_at_once_even_mid_submit(autojump_clock, nursery):
    """Without the lease no write would land, so nothing is waited for and nothing settled."""
    rig = await make_rig(nursery, TAGGED, answer_delay=2.0)
    rig.store.grant("lou", 5, plan="pro")
    job_id = rig.submit("lou")
    while not rig.provider.predictions:
        await trio.sleep(0.01)
    started = trio.current_time()
    (actor,) = rig.registry.drop_slots(frozenset({0}))
    await actor.done.wait()
    assert trio.current_time() - started < 0.1
    assert job_id not in rig.store.predictions
    assert rig.status(job_id) is JobStatus.STARTING
    assert rig.store.balance("lou") == 4
    rig.registry.deliver("lou", Resume(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert rig.provider.found == [job_id]  # the next owner found the cut-off submit by its tag
    assert list(rig.provider.predictions) == ["p0"]


async def test_a_finish_refused_as_fenced_leaves_the_job_to_the_slots_new_owner(
    autojump_clock, nursery
):
    """The store refuses a write under a stale epoch: the task stops, refunding nothing."""
    mine = Fence("me", 1)
    rig = await make_rig(nursery, slots=Leases({0: mine}))
    rig.store.leases[0] = mine
    rig.store.grant("fay", 5, plan="pro")
    job_id = rig.submit("fay")
    await trio.sleep(1.0)
    assert rig.status(job_id) is JobStatus.PROCESSING
    rig.store.leases[0] = Fence("thief", 2)  # the slot was taken while the job ran
    await trio.sleep(60.0)
    assert rig.status(job_id) is JobStatus.PROCESSING  # not settled by the loser
    assert rig.store.balance("fay") == 4
    assert rig.registry.running_jobs == 0
    assert rig.registry.deliver("ann", Submit(uuid.uuid4()), slot=1) is Offer.CLOSED


async def test_a_provider_that_cannot_be_reached_is_retried_within_the_deadline(
    autojump_clock, nursery
):
    """No connection means nothing was sent: the submit is tried again, paid for once."""
    rig = await make_rig(nursery, TAGGED, unreachable_submits=4)
    rig.store.grant("uma", 5, plan="pro")
    job_id = rig.submit("uma")
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert list(rig.provider.predictions) == ["p0"]
    assert rig.provider.found == []  # nothing to look for: no request had gone out
    assert rig.store.balance("uma") == 4


async def test_a_bug_while_storing_an_output_fails_the_job_refunded_whole(autojump_clock, nursery):
    """Only `OutputUnavailable` is an output's own failure; a bug ends the job `Abandoned`."""

    class BrokenOutputs:
        async def store(self, _job_id: uuid.UUID, idx: int, _url: str) -> StoredOutput:
            if idx == 0:
                raise RuntimeError("a bug in the output store")
            await trio.sleep_forever()
            raise AssertionError("unreachable")

    rig = await make_rig(nursery, latency=1.0, outputs=BrokenOutputs())
    rig.store.grant("ada", 10, plan="pro")
    job_id = rig.submit("ada", num_outputs=3)
    await rig.settled(job_id)
    job = rig.store.jobs[job_id]
    assert (job.status, job.error_code) == (JobStatus.FAILED, ErrorCode.INTERNAL_ERROR)
    assert rig.store.balance("ada") == 10
    assert job_id not in rig.store.outputs
