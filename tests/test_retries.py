"""Retry before refund: the classification, the job task's retries, the money.

The actor tests run under Trio's MockClock with the in-memory store and the fake provider
of test_actors; the end-to-end ones (test_daemon_e2e) run the daemon on real Postgres
against the simulator over loopback.
"""

from __future__ import annotations

import random
import uuid

import attrs
import httpx
import pytest
import trio

from actors import Cancel, Resume
from orchestrator.core import (
    ErrorCode,
    JobStatus,
    PredictionRequest,
    failure_text_retryable,
    kie_failure_retryable,
    retry_delay,
    retry_margin,
)
from orchestrator.daemon import actor_config
from orchestrator.db import Database
from orchestrator.metrics import Metrics
from orchestrator.settings import SettingsError, from_env
from orchestrator.simulator import SimulatorConfig, SimulatorState

from . import pg
from .e2e import settings_for, start_daemon, start_simulator, wait_terminal
from .test_actors import CONFIG, TAGGED, make_rig

# ---------------------------------------------------------------- the pure rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Prediction interrupted; please retry (code: PA)", True),
        ("Director: unexpected error handling prediction (E8765)", True),
        ("the model timed out after 300 s", True),
        ("Internal Server Error", True),
        ("upstream answered 503 Service Unavailable", True),
        ("connection reset by peer", True),
        ("NSFW content detected. Try running it again, or try a different prompt.", False),
        ("Your prompt was flagged by the safety checker", False),
        ("ValidationError: width must be a multiple of 8", False),
        ("invalid input: request timed out", False),  # the final word wins
        ("CUDA out of memory. Tried to allocate 2.00 GiB", False),
        ("simulated failure: CUDA out of memory while loading https://w.invalid/m", False),
        ("something odd happened", None),
        ("", None),
        (None, None),
    ],
)
def test_a_failure_text_reads_as_transient_final_or_unknown(text, expected):
    assert failure_text_retryable(text) is expected


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("500", "internal error", True),
        (500, "", True),
        ("455", "service unavailable, maintenance", True),
        ("503", None, True),
        ("501", "generation failed", False),
        ("400", "content policy violation", False),
        ("422", "validation error", False),
        ("500", "NSFW", True),  # a known code decides, the text is only a fallback
        ("", "Prediction interrupted; please retry", True),
        (None, "flagged as unsafe content", False),
        ("999", "who knows", None),
        ("", "", None),
    ],
)
def test_a_kie_fail_code_decides_and_its_message_is_the_fallback(code, message, expected):
    assert kie_failure_retryable(code, message) is expected


def test_the_backoff_doubles_from_its_base_is_capped_and_jittered():
    rng = random.Random(7)
    for attempt, ceiling in [(2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 10.0), (9, 10.0)]:
        delays = [retry_delay(attempt, base_s=1.0, max_s=10.0, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one value


def test_the_margin_is_a_quarter_of_the_deadline_at_most_five_seconds():
    assert retry_margin(2.0) == 0.5
    assert retry_margin(12.0) == 3.0
    assert retry_margin(120.0) == 5.0


def test_the_retry_settings_come_from_the_environment_and_reach_the_actors():
    settings = from_env(
        {"ORCHESTRATOR_PREDICTION_RETRIES": "0", "ORCHESTRATOR_RETRY_BACKOFF": "0.25"}
    )
    config = actor_config(settings, None)
    assert (config.prediction_retries, config.retry_backoff_s) == (0, 0.25)
    assert from_env({}).prediction_retries == 2
    for bad in ("-1", "11"):
        with pytest.raises(SettingsError, match="prediction_retries"):
            from_env({"ORCHESTRATOR_PREDICTION_RETRIES": bad})
    with pytest.raises(SettingsError, match="retry_backoff_s"):
        from_env({"ORCHESTRATOR_RETRY_BACKOFF": "0"})


# ---------------------------------------------------------------- the job task


def _predictions_of(rig, job_id):
    return [pid for pid, (_, r) in rig.provider.predictions.items() if r.job_id == job_id]


def _ledger(rig, job_id):
    return sorted((row.kind, row.amount) for row in rig.store.ledger if row.job_id == job_id)


async def test_a_transient_failure_is_retried_and_the_job_succeeds_on_one_debit(
    autojump_clock, nursery
):
    """Two predictions for output 0, the first noted replaced; the user paid once."""
    rig = await make_rig(nursery)
    rig.store.grant("ann", 5, plan="pro")
    job_id = rig.submit("ann", params={"simulate": "fail_once"})
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert _predictions_of(rig, job_id) == ["p0", "p1"]
    assert rig.store.predictions[job_id] == {0: "p1"}
    ref, _, cancel_sent = rig.store.upstream["p0"]
    assert (ref.job_id, ref.idx, ref.found_by, cancel_sent) == (job_id, 0, "replaced", False)
    assert _ledger(rig, job_id) == [("debit", -1)]
    assert rig.store.balance("ann") == 4
    assert rig.provider.canceled == []  # the failed one had ended: nothing to stop


async def test_each_output_of_a_job_retries_on_its_own(autojump_clock, nursery):
    """Three outputs, each failing once: six predictions, all delivered, one debit of 3."""
    rig = await make_rig(nursery)
    rig.store.grant("bea", 10, plan="pro")
    job_id = rig.submit("bea", params={"simulate": "fail_once"}, num_outputs=3)
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert len(_predictions_of(rig, job_id)) == 6
    assert sorted(rig.store.predictions[job_id]) == [0, 1, 2]
    replaced = sorted(ref.idx for ref, _, _ in rig.store.upstream.values())
    assert replaced == [0, 1, 2]
    assert _ledger(rig, job_id) == [("debit", -3)]


async def test_a_terminal_failure_is_not_retried_and_refunded_whole(autojump_clock, nursery):
    rig = await make_rig(nursery)
    rig.store.grant("cal", 5, plan="pro")
    job_id = rig.submit("cal", params={"simulate": "fail_nsfw"})
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.FAILED
    assert "NSFW content" in (rig.store.jobs[job_id].error_message or "")
    assert _predictions_of(rig, job_id) == ["p0"]
    assert _ledger(rig, job_id) == [("debit", -1), ("refund", 1)]
    assert rig.store.balance("cal") == 5


async def test_an_unclassified_failure_is_not_retried(autojump_clock, nursery):
    """`retryable` None (the adapter cannot tell) is the safe default: one prediction."""
    rig = await make_rig(nursery)
    rig.store.grant("cy", 5, plan="pro")
    job_id = rig.submit("cy", params={"simulate": "fail"})
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.FAILED
    assert _predictions_of(rig, job_id) == ["p0"]


async def test_exhausted_retries_fail_the_job_and_refund_it_whole(autojump_clock, nursery):
    """1 + ORCHESTRATOR_PREDICTION_RETRIES predictions, then failed; counted by outcome."""
    metrics = Metrics()
    rig = await make_rig(nursery, observer=metrics.jobs)
    rig.store.grant("dan", 5, plan="pro")
    job_id = rig.submit("dan", params={"simulate": "fail_transient"})
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.FAILED
    assert "interrupted" in (rig.store.jobs[job_id].error_message or "")
    assert _predictions_of(rig, job_id) == ["p0", "p1", "p2"]
    assert rig.store.predictions[job_id] == {0: "p2"}
    assert {ref.found_by for ref, _, _ in rig.store.upstream.values()} == {"replaced"}
    assert _ledger(rig, job_id) == [("debit", -1), ("refund", 1)]
    assert rig.store.balance("dan") == 5
    sample = "orchestrator_prediction_retries_total"
    retried = {"reason": "prediction_failed", "outcome": "retried"}
    exhausted = {"reason": "prediction_failed", "outcome": "exhausted"}
    assert metrics.sample(sample, retried) == 2
    assert metrics.sample(sample, exhausted) == 1


async def test_zero_retries_turns_them_off(autojump_clock, nursery):
    rig = await make_rig(nursery, attrs.evolve(CONFIG, prediction_retries=0))
    rig.store.grant("eve", 5, plan="pro")
    job_id = rig.submit("eve", params={"simulate": "fail_once"})
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.FAILED
    assert _predictions_of(rig, job_id) == ["p0"]
    assert rig.store.balance("eve") == 5


async def test_no_attempt_starts_within_the_margin_of_the_deadline(autojump_clock, nursery):
    """Many retries allowed, a short deadline: attempts stop while time is left, the job
    fails with the provider's reason (not a timeout) and is refunded whole."""
    config = attrs.evolve(CONFIG, deadline_s=12.0, prediction_retries=10)
    rig = await make_rig(nursery, config, latency=0.1)
    rig.store.grant("fay", 5, plan="pro")
    started = trio.current_time()
    job_id = rig.submit("fay", params={"simulate": "fail_transient"})
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.FAILED
    created = [rig.provider.predictions[p][0] - started for p in _predictions_of(rig, job_id)]
    assert 2 <= len(created) < 11
    margin = retry_margin(12.0)
    assert all(at <= 12.0 - margin for at in created)
    assert rig.finished_at[job_id] - started < 12.0
    assert rig.store.balance("fay") == 5


async def test_a_create_answered_5xx_and_not_found_is_sent_again(autojump_clock, nursery):
    """Without webhook tags a 5xx is the provider's word that nothing was made."""
    rig = await make_rig(nursery, unavailable_submits=1)
    rig.store.grant("gus", 5, plan="pro")
    job_id = rig.submit("gus")
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert _predictions_of(rig, job_id) == ["p0"]
    assert rig.store.balance("gus") == 4


async def test_a_tagged_create_answered_5xx_is_looked_up_then_sent_again(autojump_clock, nursery):
    rig = await make_rig(nursery, TAGGED, unavailable_submits=1)
    rig.store.grant("hal", 5, plan="pro")
    job_id = rig.submit("hal")
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert rig.provider.found == [job_id]  # looked for first: it might have been made
    assert _predictions_of(rig, job_id) == ["p0"]


async def test_a_tagged_create_with_no_answer_is_not_sent_again_when_not_found(
    autojump_clock, nursery
):
    """A lookup that found nothing proves little (no listing, a lagging one): no resend."""
    rig = await make_rig(nursery, TAGGED, unavailable_submits=1, unavailable_status=None)
    rig.store.grant("hal", 5, plan="pro")
    job_id = rig.submit("hal")
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.FAILED
    assert rig.provider.found == [job_id]
    assert _predictions_of(rig, job_id) == []
    assert rig.store.balance("hal") == 5


async def test_an_untagged_create_timeout_is_not_sent_again(autojump_clock, nursery):
    """No status and no way to look: it may exist, so sending again could pay twice."""
    rig = await make_rig(nursery, unavailable_submits=1, unavailable_status=None)
    rig.store.grant("ida", 5, plan="pro")
    job_id = rig.submit("ida")
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.FAILED
    assert rig.provider.predictions == {}
    assert rig.store.balance("ida") == 5


async def test_a_resume_mid_retry_reattaches_to_the_latest_prediction(autojump_clock, nursery):
    """A crash after the retry was recorded: the next run polls p1, creates nothing."""
    rig = await make_rig(nursery, TAGGED)
    rig.store.grant("jo", 5, plan="pro")
    job_id = rig.store.submit("jo", "x", params={"simulate": "fail_once"})
    await rig.store.admit(job_id, deadline_s=120)
    for _ in range(2):
        made = await rig.provider.submit(
            PredictionRequest(job_id, "x", {"simulate": "fail_once"}, 1)
        )
        await rig.store.mark_processing(job_id, provider="replicate", prediction_id=made.id)
    assert rig.store.upstream["p0"][0].found_by == "replaced"
    rig.registry.deliver("jo", Resume(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert list(rig.provider.predictions) == ["p0", "p1"]
    assert rig.provider.found == []  # recorded, so no search either
    assert _ledger(rig, job_id) == [("debit", -1)]


async def test_a_resume_adopts_a_retry_whose_record_a_crash_cut_off(autojump_clock, nursery):
    """p0 recorded and failed; p1 created but never recorded: the next run takes p1, no p2."""
    rig = await make_rig(nursery, TAGGED)
    rig.store.grant("lea", 5, plan="pro")
    params = {"simulate": "fail_once"}
    job_id = rig.store.submit("lea", "x", params=params)
    await rig.store.admit(job_id, deadline_s=120)
    made = await rig.provider.submit(PredictionRequest(job_id, "x", params, 1))
    await rig.store.mark_processing(job_id, provider="replicate", prediction_id=made.id)
    await rig.provider.submit(PredictionRequest(job_id, "x", params, 1))  # then the crash
    rig.registry.deliver("lea", Resume(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert list(rig.provider.predictions) == ["p0", "p1"]
    assert rig.store.predictions[job_id] == {0: "p1"}
    assert _ledger(rig, job_id) == [("debit", -1)]


async def test_a_resume_goes_on_counting_the_attempts_an_earlier_run_made(autojump_clock, nursery):
    """Two attempts made before the crash, retries 2: the resumed run makes one more, not two."""
    rig = await make_rig(nursery, TAGGED)
    rig.store.grant("kai", 5, plan="pro")
    params = {"simulate": "fail_transient"}
    job_id = rig.store.submit("kai", "x", params=params)
    await rig.store.admit(job_id, deadline_s=120)
    for _ in range(2):
        made = await rig.provider.submit(PredictionRequest(job_id, "x", params, 1))
        await rig.store.mark_processing(job_id, provider="replicate", prediction_id=made.id)
    in_flight = await rig.store.in_flight_job(job_id)
    assert in_flight is not None
    assert in_flight.replaced == {0: 1}
    rig.registry.deliver("kai", Resume(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.FAILED
    assert list(rig.provider.predictions) == ["p0", "p1", "p2"]
    assert rig.store.balance("kai") == 5


async def test_a_resume_whose_latest_prediction_failed_transiently_retries_it(
    autojump_clock, nursery
):
    """The crash came before the retry: the recorded prediction is seen failed, retried."""
    rig = await make_rig(nursery, TAGGED, latency=1.0)
    rig.store.grant("kim", 5, plan="pro")
    job_id = rig.store.submit("kim", "x", params={"simulate": "fail_once"})
    await rig.store.admit(job_id, deadline_s=120)
    made = await rig.provider.submit(PredictionRequest(job_id, "x", {"simulate": "fail_once"}, 1))
    await rig.store.mark_processing(job_id, provider="replicate", prediction_id=made.id)
    await trio.sleep(2)
    rig.registry.deliver("kim", Resume(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.SUCCEEDED
    assert list(rig.provider.predictions) == ["p0", "p1"]
    assert rig.store.predictions[job_id] == {0: "p1"}
    assert rig.store.balance("kim") == 4


async def test_a_cancel_during_the_backoff_stops_without_another_attempt(autojump_clock, nursery):
    config = attrs.evolve(CONFIG, retry_backoff_s=30.0, retry_backoff_max_s=30.0)
    rig = await make_rig(nursery, config, latency=0.1)
    rig.store.grant("lee", 5, plan="pro")
    job_id = rig.submit("lee", params={"simulate": "fail_transient"})
    await trio.sleep(5)  # p0 failed at its first poll; the task waits out its 15-30 s backoff
    assert _predictions_of(rig, job_id) == ["p0"]
    rig.store.request_cancel(job_id)
    rig.registry.deliver("lee", Cancel(job_id))
    await rig.settled(job_id)
    assert rig.status(job_id) is JobStatus.CANCELED
    assert _predictions_of(rig, job_id) == ["p0"]
    assert rig.store.balance("lee") == 5


# ---------------------------------------------------------------- end to end


async def _attempts(db_url: str, job_id: uuid.UUID) -> tuple[str, list[str]]:
    """The job's recorded prediction for output 0, and the ones it replaced."""
    (current,) = await pg.fetch(
        db_url,
        "SELECT prediction_id FROM orchestrator.predictions WHERE job_id = $1 AND idx = 0",
        job_id,
    )
    replaced = await pg.fetch(
        db_url,
        "SELECT prediction_id FROM orchestrator.upstream_predictions"
        " WHERE job_id = $1 AND idx = 0 AND found_by = 'replaced' ORDER BY created_at",
        job_id,
    )
    return current["prediction_id"], [row["prediction_id"] for row in replaced]


async def _money(db_url: str, job_id: uuid.UUID) -> list[tuple[str, int]]:
    rows = await pg.fetch(
        db_url,
        "SELECT kind, amount FROM orchestrator.ledger WHERE job_id = $1 ORDER BY id",
        job_id,
    )
    return [(row["kind"], row["amount"]) for row in rows]


async def _created(provider_url: str) -> int:
    async with httpx.AsyncClient(trust_env=False) as client:
        stats = (await client.get(f"{provider_url}/_sim/stats")).json()
    return int(stats["created"])


def _e2e_settings(db_url: str, provider_url: str, **overrides: object):
    return settings_for(db_url, provider_url, retry_backoff_s=0.1, **overrides)


async def test_e2e_a_retryable_failure_is_retried_and_charged_once(nursery, db: Database):
    """The simulator fails the first attempt on its side: the job succeeds on the second,
    one debit and no refund, both predictions on record, the audit clean."""
    provider = await start_simulator(nursery)
    await start_daemon(nursery, _e2e_settings(db.url, provider))
    await db.grant("ret", 5, plan="pro")
    job_id = await db.submit_job("ret", "first try breaks", params={"simulate": "fail_once"})
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.SUCCEEDED
    assert await _created(provider) == 2
    current, replaced = await _attempts(db.url, job_id)
    assert len(replaced) == 1
    assert replaced[0] != current
    assert job.prediction_id == replaced[0]  # the job row keeps the first id it was given
    assert await _money(db.url, job_id) == [("debit", -1)]
    account = await db.account("ret")
    assert account is not None
    assert account.balance == 4
    assert (await db.audit()).ok


async def test_e2e_a_content_refusal_is_not_retried(nursery, db: Database):
    provider = await start_simulator(nursery)
    await start_daemon(nursery, _e2e_settings(db.url, provider))
    await db.grant("nsf", 5, plan="pro")
    job_id = await db.submit_job("nsf", "refused", params={"simulate": "fail_nsfw"})
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.FAILED
    assert job.error_code is ErrorCode.UPSTREAM_ERROR
    assert "NSFW" in (job.error_message or "")
    assert await _created(provider) == 1
    _, replaced = await _attempts(db.url, job_id)
    assert replaced == []
    assert await _money(db.url, job_id) == [("debit", -1), ("refund", 1)]
    assert (await db.audit()).ok


async def test_e2e_exhausted_retries_fail_the_job_and_refund_it_whole(nursery, db: Database):
    provider = await start_simulator(nursery)
    await start_daemon(nursery, _e2e_settings(db.url, provider))
    await db.grant("exh", 5, plan="pro")
    job_id = await db.submit_job("exh", "always breaks", params={"simulate": "fail_transient"})
    (job,) = await wait_terminal(db, [job_id])
    assert job.status is JobStatus.FAILED
    assert await _created(provider) == 3  # 1 + ORCHESTRATOR_PREDICTION_RETRIES (2)
    _, replaced = await _attempts(db.url, job_id)
    assert len(replaced) == 2
    assert await _money(db.url, job_id) == [("debit", -1), ("refund", 1)]
    account = await db.account("exh")
    assert account is not None
    assert account.balance == 5
    assert (await db.audit()).ok


async def test_e2e_kie_retries_a_failed_task_with_a_server_side_code(nursery, db: Database):
    """KIE's failCode 500 is its side: retried. Its 501 (the plain `fail`) is not."""
    provider = await start_simulator(nursery, api="kie")
    settings = _e2e_settings(
        db.url, provider, provider="kie", kie_api_base=provider, kie_model="sim/image"
    )
    await start_daemon(nursery, settings)
    await db.grant("kir", 5, plan="pro")
    ok = await db.submit_job("kir", "kie breaks once", params={"simulate": "fail_once"})
    (job,) = await wait_terminal(db, [ok])
    assert job.status is JobStatus.SUCCEEDED
    assert await _created(provider) == 2
    bad = await db.submit_job("kir", "kie model error", params={"simulate": "fail"})
    (failed,) = await wait_terminal(db, [bad])
    assert failed.status is JobStatus.FAILED
    assert await _created(provider) == 3
    assert await _money(db.url, ok) == [("debit", -1)]
    assert await _money(db.url, bad) == [("debit", -1), ("refund", 1)]
    assert (await db.audit()).ok


# ---------------------------------------------------------------- the simulator's directives


def test_the_simulator_fails_the_first_attempt_of_each_output_once_and_on_its_side():
    now = [1000.0]
    state = SimulatorState(SimulatorConfig(latency=(0.1, 0.1)), clock=lambda: now[0])
    body = {"prompt": "a cat", "simulate": "fail_once"}
    made = [
        state.create(body, webhook="https://d.test/hook?job=j&idx=0").id,
        state.create(body, webhook="https://d.test/hook?job=j&idx=1").id,
        state.create(body, webhook="https://d.test/hook?job=j&idx=0").id,
        state.create({"prompt": "a cat", "simulate": "fail_nsfw"}).id,
    ]
    now[0] += 1
    seen = [state.get(pid) for pid in made]
    assert [p.status.value for p in seen if p] == ["failed", "failed", "succeeded", "failed"]
    first, _, _, refused = (p for p in seen if p)
    assert (failure_text_retryable(first.error), first.fail_code) == (True, "500")
    assert (failure_text_retryable(refused.error), refused.fail_code) == (False, "400")
