"""Provider circuit breakers and failover.

The state machine is pure (`orchestrator.core`): table and property tests walk it by
hand. The actors' side runs under Trio's MockClock with the in-memory store twin and
fake providers, so 15 s cool-downs pass in milliseconds; the end-to-end twin, on real
Postgres with two simulators, is in `tests/test_breaker_e2e.py`.
"""

from __future__ import annotations

import uuid

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from actors import PROBE_ID, BreakerProvider, Offer, Registry, Resume, Routes, Submit
from orchestrator.core import (
    Breaker,
    BreakerPolicy,
    BreakerState,
    ErrorCode,
    JobStatus,
    Plan,
    Prediction,
    PredictionRequest,
    ProviderRejected,
    ProviderUnavailable,
    breaker_failure,
    breaker_probe,
    breaker_success,
    breaker_tick,
)
from orchestrator.db.testing import InMemoryStore
from orchestrator.metrics import Metrics
from orchestrator.settings import SettingsError, from_env

from .test_actors import CONFIG, FakeProvider

POLICY = BreakerPolicy(threshold=5, window_s=30.0, cooldown_s=15.0, max_cooldown_s=60.0)


def _fail(breaker: Breaker, *times: float) -> Breaker:
    for now in times:
        breaker = breaker_failure(breaker, POLICY, now)
    return breaker


# --- the pure state machine ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "state"),
    [
        ((0, 1, 2, 3), BreakerState.CLOSED),  # four is not a run of five
        ((0, 1, 2, 3, 4), BreakerState.OPEN),
        ((0, 10, 20, 29, 30), BreakerState.OPEN),  # all five within the 30 s window
        ((0, 10, 20, 29, 31), BreakerState.CLOSED),  # the fifth falls outside: a new run
        ((0, 31, 32, 33, 34, 35), BreakerState.OPEN),  # the new run reaches five
    ],
)
def test_a_run_of_failures_within_the_window_opens_it(times, state):
    assert _fail(Breaker(), *times).state is state


def test_a_success_ends_the_run():
    breaker = breaker_success(_fail(Breaker(), 0, 1, 2, 3), POLICY, 4)
    assert breaker == Breaker()
    assert _fail(breaker, 5, 6, 7, 8).state is BreakerState.CLOSED


def test_open_waits_its_cool_down_then_lets_one_probe_through():
    opened = _fail(Breaker(), 0, 1, 2, 3, 4)
    assert (opened.state, opened.until, opened.cooldown_s) == (BreakerState.OPEN, 19.0, 15.0)
    # Open, what running jobs' requests say changes nothing.
    assert breaker_success(opened, POLICY, 5) == opened
    assert breaker_failure(opened, POLICY, 5) == opened
    assert breaker_tick(opened, 18.9).state is BreakerState.OPEN
    half = breaker_tick(opened, 19.0)
    assert half.state is BreakerState.HALF_OPEN
    probing, mine = breaker_probe(half)
    assert mine
    assert probing.probing
    assert breaker_probe(probing) == (probing, False)  # one probe at a time
    assert breaker_probe(opened) == (opened, False)  # none while open


def test_a_failed_probe_reopens_with_the_cool_down_doubled_up_to_the_cap():
    breaker = _fail(Breaker(), 0, 1, 2, 3, 4)
    cooldowns = []
    for _ in range(4):
        half, _ = breaker_probe(breaker_tick(breaker, breaker.until))
        breaker = breaker_failure(half, POLICY, breaker.until)
        assert breaker.state is BreakerState.OPEN
        cooldowns.append(breaker.cooldown_s)
    assert cooldowns == [30.0, 60.0, 60.0, 60.0]
    half, _ = breaker_probe(breaker_tick(breaker, breaker.until))
    assert breaker_success(half, POLICY, breaker.until) == Breaker()


_EVENTS = st.lists(
    st.tuples(st.sampled_from(["fail", "ok", "tick", "probe"]), st.floats(0, 20)), max_size=60
)


@given(_EVENTS)
def test_any_history_keeps_the_breaker_consistent(events):
    """Whatever happens: a probe only half-open, cool-downs within bounds, and closed
    after any success outside the open state."""
    breaker, now = Breaker(), 0.0
    for kind, step in events:
        now += step
        before = breaker
        match kind:
            case "fail":
                breaker = breaker_failure(breaker, POLICY, now)
            case "ok":
                breaker = breaker_success(breaker, POLICY, now)
                if before.state is not BreakerState.OPEN:
                    assert breaker == Breaker()
            case "tick":
                breaker = breaker_tick(breaker, now)
            case _:
                breaker, _mine = breaker_probe(breaker)
        assert not breaker.probing or breaker.state is BreakerState.HALF_OPEN
        assert breaker.failures < POLICY.threshold
        if breaker.state is BreakerState.CLOSED:
            assert breaker.cooldown_s == 0
        else:
            assert POLICY.cooldown_s <= breaker.cooldown_s <= POLICY.max_cooldown_s
        if before.state is BreakerState.CLOSED and breaker.state is BreakerState.OPEN:
            assert before.failures == POLICY.threshold - 1


# --- the actors, under MockClock ------------------------------------------------------------


@attrs.define
class FlakyProvider(FakeProvider):
    """A fake provider that can be down: then every request fails as a 503."""

    down: bool = False
    probes: int = 0

    def _check(self) -> None:
        if self.down:
            raise ProviderUnavailable("fake: HTTP 503", status_code=503)

    async def submit(self, request: PredictionRequest) -> Prediction:
        self._check()
        return await super().submit(request)

    async def get(self, prediction_id: str) -> Prediction:
        if prediction_id == PROBE_ID:
            self.probes += 1
            self._check()
            raise ProviderRejected("fake: no such prediction", status_code=404)
        self._check()
        return await super().get(prediction_id)


@attrs.define
class Rig:
    store: InMemoryStore
    registry: Registry
    routes: Routes
    primary: FlakyProvider
    fallback: FlakyProvider
    metrics: Metrics
    recorded: dict[uuid.UUID, str]

    def submit(self, user: str, **params: object) -> uuid.UUID:
        prompt = f"a lighthouse, take {len(self.store.jobs)}"
        job_id = self.store.submit(user, prompt, params=params)
        assert self.registry.deliver(user, Submit(job_id)) is Offer.ACCEPTED
        return job_id

    def offer_again(self, user: str, *job_ids: uuid.UUID) -> None:
        """What intake's catch-up scan does for every job still queued."""
        for job_id in job_ids:
            if self.status(job_id) is JobStatus.QUEUED:
                self.registry.deliver(user, Submit(job_id))

    def status(self, job_id: uuid.UUID) -> JobStatus:
        return self.store.jobs[job_id].status

    def state(self, name: str) -> float:
        return self.metrics.sample("orchestrator_provider_breaker_state", {"provider": name})

    async def settled(self, *job_ids: uuid.UUID) -> None:
        with trio.fail_after(3600):
            while not all(self.status(j).terminal for j in job_ids):
                await trio.sleep(0.01)


async def make_rig(
    nursery: trio.Nursery,
    *,
    fallback: bool,
    spare_latency: float = 3.0,
    allowed: dict[str, frozenset[str]] | None = None,
) -> Rig:
    store = InMemoryStore(plans={"pro": Plan("pro", 10_000, 50, 0.0, 1)})
    recorded: dict[uuid.UUID, str] = {}
    mark = store.mark_processing

    async def mark_processing(job_id: uuid.UUID, *, provider: str, **kw: object):
        recorded[job_id] = provider
        return await mark(job_id, provider=provider, **kw)  # type: ignore[arg-type]

    store.mark_processing = mark_processing  # type: ignore[method-assign]
    metrics = Metrics()
    primary, spare = FlakyProvider(latency=30.0), FlakyProvider(latency=spare_latency)
    routes = Routes(
        {
            "replicate": BreakerProvider(
                "replicate", primary, policy=POLICY, observer=metrics.breakers
            ),
            "kie": BreakerProvider("kie", spare, policy=POLICY, observer=metrics.breakers),
        },
        primary="replicate",
        fallback="kie" if fallback else None,
        allowed_params=allowed,
        observer=metrics.breakers,
    )
    registry = Registry(store=store, provider=primary, config=CONFIG, routes=routes)
    await nursery.start(registry.run)
    return Rig(store, registry, routes, primary, spare, metrics, recorded)


async def _open_the_primary(rig: Rig) -> uuid.UUID:
    """A job runs on the primary; then the primary fails every request. Its polls open it."""
    rig.store.grant("alice", 100, plan="pro")
    running = rig.submit("alice")
    await trio.sleep(1.0)
    assert rig.status(running) is JobStatus.PROCESSING
    rig.primary.down = True
    with trio.fail_after(60):
        while rig.routes.providers["replicate"].state is not BreakerState.OPEN:
            await trio.sleep(0.1)
    assert rig.state("replicate") == BreakerState.OPEN
    return running


async def test_with_a_fallback_new_jobs_run_there_while_the_breaker_is_open(
    autojump_clock, nursery
):
    rig = await make_rig(nursery, fallback=True)
    running = await _open_the_primary(rig)
    jobs = [rig.submit("alice") for _ in range(3)]
    await rig.settled(*jobs)
    assert [rig.status(j) for j in jobs] == [JobStatus.SUCCEEDED] * 3
    assert {rig.recorded[j] for j in jobs} == {"kie"}
    assert len(rig.fallback.predictions) == 3
    assert len(rig.primary.predictions) == 1  # the running job's, nothing more
    assert (
        rig.metrics.sample(
            "orchestrator_jobs_failed_over_total", {"provider": "replicate", "fallback": "kie"}
        )
        == 3
    )
    # The job already running was not touched: it ends on its own provider when it heals.
    rig.primary.down = False
    await rig.settled(running)
    assert rig.status(running) is JobStatus.SUCCEEDED
    assert rig.recorded[running] == "replicate"
    assert rig.store.balance("alice") == 100 - 4


async def test_without_a_fallback_new_jobs_wait_queued_uncharged_until_the_probe_closes_it(
    autojump_clock, nursery
):
    rig = await make_rig(nursery, fallback=False)
    await _open_the_primary(rig)
    balance = rig.store.balance("alice")
    jobs = [rig.submit("alice") for _ in range(3)]
    # Offered again and again (intake's scan every 5 s) while the provider is down: held.
    for _ in range(12):
        await trio.sleep(5.0)
        assert all(rig.status(j) is JobStatus.QUEUED for j in jobs)
        rig.offer_again("alice", *jobs)
    assert rig.store.balance("alice") == balance
    assert not any(row.job_id in jobs for row in rig.store.ledger)
    assert rig.primary.probes >= 2  # half-open probes went out, and failed
    assert rig.routes.providers["replicate"].breaker.cooldown_s > POLICY.cooldown_s
    assert rig.metrics.sample("orchestrator_jobs_held_total", {"provider": "replicate"}) > 0
    # Healed: the next probe after the cool-down closes it and the waiting jobs are admitted.
    rig.primary.down = False
    with trio.fail_after(600):
        while any(rig.status(j) is JobStatus.QUEUED for j in jobs):
            await trio.sleep(5.0)
            rig.offer_again("alice", *jobs)
    assert rig.state("replicate") == BreakerState.CLOSED
    await rig.settled(*jobs)
    assert [rig.status(j) for j in jobs] == [JobStatus.SUCCEEDED] * 3
    assert rig.store.balance("alice") == balance - 3
    assert (
        rig.metrics.sample(
            "orchestrator_provider_breaker_transitions_total",
            {"provider": "replicate", "state": "closed"},
        )
        == 1
    )


async def test_when_both_breakers_are_open_jobs_wait_and_are_never_charged_and_failed(
    autojump_clock, nursery
):
    rig = await make_rig(nursery, fallback=True, spare_latency=60.0)
    await _open_the_primary(rig)
    on_fallback = rig.submit("alice")
    await trio.sleep(1.0)
    assert rig.status(on_fallback) is JobStatus.PROCESSING
    rig.fallback.down = True  # its polls open the fallback's breaker too
    with trio.fail_after(60):
        while rig.routes.providers["kie"].state is not BreakerState.OPEN:
            await trio.sleep(0.1)
    more = [rig.submit("alice") for _ in range(10)]
    for _ in range(20):
        await trio.sleep(5.0)
        rig.offer_again("alice", *more)
    assert all(rig.status(j) is JobStatus.QUEUED for j in more)
    assert not any(row.job_id in more for row in rig.store.ledger)
    assert not any(job.status is JobStatus.FAILED and job.cost for job in rig.store.jobs.values())
    rig.primary.down = rig.fallback.down = False
    with trio.fail_after(900):
        while any(rig.status(j) is JobStatus.QUEUED for j in more):
            await trio.sleep(5.0)
            rig.offer_again("alice", *more)
    await rig.settled(*more)
    assert [rig.status(j) for j in more] == [JobStatus.SUCCEEDED] * 10


# --- per-job choice: params.provider --------------------------------------------------------


async def test_params_provider_picks_the_provider_and_never_reaches_it(autojump_clock, nursery):
    rig = await make_rig(nursery, fallback=False)
    rig.store.grant("bea", 10, plan="pro")
    on_kie = rig.submit("bea", provider="kie", seed=3)
    default = rig.submit("bea", seed=4)
    await rig.settled(on_kie, default)
    assert (rig.status(on_kie), rig.status(default)) == (JobStatus.SUCCEEDED,) * 2
    assert (rig.recorded[on_kie], rig.recorded[default]) == ("kie", "replicate")
    ((_, sent),) = rig.fallback.predictions.values()
    assert dict(sent.params) == {"seed": 3}  # the routing key stays here
    ((_, sent),) = rig.primary.predictions.values()
    assert dict(sent.params) == {"seed": 4}


async def test_an_unknown_params_provider_is_rejected_uncharged(autojump_clock, nursery):
    rig = await make_rig(nursery, fallback=True)
    rig.store.grant("cy", 10, plan="pro")
    jobs = [rig.submit("cy", provider="openai"), rig.submit("cy", provider=7)]
    await rig.settled(*jobs)
    for job_id in jobs:
        job = rig.store.jobs[job_id]
        assert (job.status, job.error_code) == (JobStatus.REJECTED, ErrorCode.VALIDATION_ERROR)
        assert "not a configured provider (kie, replicate)" in (job.error_message or "")
    assert rig.store.balance("cy") == 10
    assert not rig.primary.predictions
    assert not rig.fallback.predictions


async def test_params_are_checked_against_the_chosen_providers_model(autojump_clock, nursery):
    allowed = {"replicate": frozenset({"seed"}), "kie": frozenset({"simulate"})}
    rig = await make_rig(nursery, fallback=False, allowed=allowed)
    rig.store.grant("dov", 10, plan="pro")
    refused = rig.submit("dov", provider="kie", seed=3)
    taken = rig.submit("dov", seed=3)
    await rig.settled(refused, taken)
    job = rig.store.jobs[refused]
    assert (job.status, job.error_code) == (JobStatus.REJECTED, ErrorCode.VALIDATION_ERROR)
    assert rig.status(taken) is JobStatus.SUCCEEDED


async def test_a_job_whose_params_the_fallback_cannot_take_waits_instead(autojump_clock, nursery):
    allowed = {"replicate": frozenset({"seed"}), "kie": frozenset()}
    rig = await make_rig(nursery, fallback=True, allowed=allowed)
    await _open_the_primary(rig)
    fits = rig.submit("alice")
    waits = rig.submit("alice", seed=9)
    await rig.settled(fits)
    assert rig.recorded[fits] == "kie"
    for _ in range(4):
        await trio.sleep(5.0)
        rig.offer_again("alice", waits)
    assert rig.status(waits) is JobStatus.QUEUED
    assert not any(row.job_id == waits for row in rig.store.ledger)


async def test_a_resumed_job_runs_on_the_provider_it_asked_for_without_the_key(
    autojump_clock, nursery
):
    rig = await make_rig(nursery, fallback=False)
    rig.store.grant("eli", 10, plan="pro")
    job_id = rig.store.submit("eli", "left in flight", params={"provider": "kie", "seed": 1})
    await rig.store.admit(job_id, deadline_s=120)  # admitted by a daemon that then died
    rig.registry.deliver("eli", Resume(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert rig.recorded[job_id] == "kie"
    ((_, sent),) = rig.fallback.predictions.values()
    assert dict(sent.params) == {"seed": 1}
    assert not rig.primary.predictions


# --- settings -------------------------------------------------------------------------------


def test_the_providers_and_the_fallback_are_read_and_checked():
    settings = from_env(
        {
            "ORCHESTRATOR_PROVIDERS": "replicate, kie",
            "ORCHESTRATOR_FALLBACK_PROVIDER": "kie",
            "ORCHESTRATOR_BREAKER_THRESHOLD": "3",
            "ORCHESTRATOR_BREAKER_COOLDOWN": "20",
        }
    )
    assert settings.configured_providers == ("replicate", "kie")
    assert (settings.fallback_provider, settings.breaker_threshold) == ("kie", 3)
    assert settings.breaker_cooldown_s == 20.0
    assert from_env({}).configured_providers == ("replicate",)
    assert from_env({"ORCHESTRATOR_PROVIDER": "kie"}).configured_providers == ("kie",)
    assert settings.allowed_params_of("kie") != settings.allowed_params_of("replicate")
    for env, problem in [
        ({"ORCHESTRATOR_PROVIDERS": "replicate,openai"}, "unknown openai"),
        ({"ORCHESTRATOR_PROVIDERS": "kie"}, "must include ORCHESTRATOR_PROVIDER"),
        ({"ORCHESTRATOR_FALLBACK_PROVIDER": "kie"}, "another of ORCHESTRATOR_PROVIDERS"),
        (
            {
                "ORCHESTRATOR_PROVIDERS": "replicate,kie",
                "ORCHESTRATOR_FALLBACK_PROVIDER": "replicate",
            },
            "another of ORCHESTRATOR_PROVIDERS",
        ),
        ({"ORCHESTRATOR_BREAKER_THRESHOLD": "0"}, "breaker_threshold"),
    ]:
        with pytest.raises(SettingsError, match=problem):
            from_env(env)


async def test_a_job_that_failed_over_resumes_on_the_provider_it_recorded(autojump_clock, nursery):
    rig = await make_rig(nursery, fallback=True)
    rig.store.grant("fay", 10, plan="pro")
    job_id = rig.store.submit("fay", "failed over, then the daemon died")
    await rig.store.admit(job_id, deadline_s=120)
    first = await rig.fallback.submit(PredictionRequest(job_id, "x", {}, 1))
    await rig.store.mark_processing(job_id, provider="kie", prediction_id=first.id)
    rig.registry.deliver("fay", Resume(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert len(rig.fallback.predictions) == 1  # re-attached, not paid twice
    assert not rig.primary.predictions
    assert not rig.primary.gets
