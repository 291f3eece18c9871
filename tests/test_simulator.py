"""The provider simulator: its state under a fake clock, then over real loopback HTTP."""

from __future__ import annotations

import contextlib
import json
import struct
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from orchestrator import simulator
from orchestrator.core import (
    Prediction,
    PredictionRequest,
    PredictionStatus,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
)
from orchestrator.providers import ReplicateProvider
from orchestrator.simulator import (
    FaultKind,
    InvalidPredictionInput,
    SimulatorConfig,
    SimulatorState,
    serve_simulator,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def state_with(clock: FakeClock, **config: Any) -> SimulatorState:
    return SimulatorState(SimulatorConfig(**config), clock=clock)


def create(state: SimulatorState, **prediction_input: Any) -> str:
    return state.create({"prompt": "a cat"} | prediction_input).id


def status(state: SimulatorState, prediction_id: str) -> str:
    got = state.get(prediction_id)
    assert got is not None
    return got.status


def png_chunks(data: bytes) -> dict[bytes, bytes]:
    assert data.startswith(PNG_SIGNATURE)
    chunks: dict[bytes, bytes] = {}
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    return chunks


def assert_decodable_png(data: bytes, size: int = 64) -> None:
    chunks = png_chunks(data)
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (width, height, depth, colour) == (size, size, 8, 2)
    raw = zlib.decompress(chunks[b"IDAT"])
    assert len(raw) == height * (1 + width * 3)
    assert b"IEND" in chunks


# --- state, under a fake clock ----------------------------------------------------------


def test_a_prediction_starts_then_processes_then_succeeds_at_its_drawn_time():
    """Status is a pure function of the clock: starting, processing, then succeeded."""
    clock = FakeClock()
    state = state_with(clock, latency=(1.0, 1.0))
    prediction_id = create(state, num_outputs=3)

    assert status(state, prediction_id) == PredictionStatus.STARTING
    clock.advance(0.3)
    assert status(state, prediction_id) == PredictionStatus.PROCESSING
    assert state.output_png(prediction_id, 0) is None
    clock.advance(0.7)
    done = state.get(prediction_id)
    assert done is not None
    assert done.status == PredictionStatus.SUCCEEDED
    assert done.completed_at == pytest.approx(1001.0)
    assert done.error is None
    assert state.output_png(prediction_id, 2) is not None
    assert state.output_png(prediction_id, 3) is None


def test_a_hanging_prediction_stays_processing_until_cancelled():
    """``simulate: hang`` never finishes on its own; cancel is what ends it."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, simulate="hang")

    clock.advance(1e6)
    assert status(state, prediction_id) == PredictionStatus.PROCESSING
    cancelled = state.cancel(prediction_id)
    assert cancelled is not None
    assert cancelled.status == PredictionStatus.CANCELED
    clock.advance(1e6)
    assert status(state, prediction_id) == PredictionStatus.CANCELED
    stats = state.stats()
    assert stats["cancels"] == 1
    assert stats["canceled"] == 1


def test_the_fail_directive_ends_failed_with_an_error_and_no_output():
    """``simulate: fail`` fails even with a zero failure rate, and serves no files."""
    clock = FakeClock()
    state = state_with(clock, latency=(0.1, 0.1))
    prediction_id = create(state, simulate="fail")

    clock.advance(0.1)
    failed = state.get(prediction_id)
    assert failed is not None
    assert failed.status == PredictionStatus.FAILED
    assert failed.error
    assert state.output_png(prediction_id, 0) is None


def test_the_succeed_directive_overrides_a_certain_failure():
    """A directive beats the random draw, whatever the configured rates."""
    clock = FakeClock()
    state = state_with(clock, latency=(0.1, 0.1), failure_rate=1.0, hang_rate=1.0)
    forced = create(state, simulate="succeed")
    drawn = create(state)

    clock.advance(10)
    assert status(state, forced) == PredictionStatus.SUCCEEDED
    assert status(state, drawn) == PredictionStatus.PROCESSING


def test_the_slow_directive_takes_ten_times_the_drawn_latency():
    """``simulate: slow`` is still running when a normal one would have finished."""
    clock = FakeClock()
    state = state_with(clock, latency=(1.0, 1.0))
    slow = create(state, simulate="slow")
    normal = create(state)

    clock.advance(5.0)
    assert status(state, normal) == PredictionStatus.SUCCEEDED
    assert status(state, slow) == PredictionStatus.PROCESSING
    clock.advance(5.0)
    assert status(state, slow) == PredictionStatus.SUCCEEDED


def test_cancelling_a_finished_prediction_leaves_it_unchanged():
    """Cancel after success is answered with the success, and counts as no cancellation."""
    clock = FakeClock()
    state = state_with(clock, latency=(0.1, 0.1))
    prediction_id = create(state)
    clock.advance(1.0)

    after = state.cancel(prediction_id)
    assert after is not None
    assert after.status == PredictionStatus.SUCCEEDED
    assert state.stats()["cancels"] == 1
    assert state.stats()["canceled"] == 0


def test_cancelling_before_start_never_reports_a_start():
    """A prediction cancelled while starting has no ``started_at`` and never completes."""
    clock = FakeClock()
    state = state_with(clock, latency=(1.0, 1.0))
    prediction_id = create(state)
    state.cancel(prediction_id)
    clock.advance(5.0)

    got = state.get(prediction_id)
    assert got is not None
    assert got.status == PredictionStatus.CANCELED
    assert got.started_at is None
    assert got.completed_at == pytest.approx(1000.0)


def test_unknown_predictions_are_none_not_errors():
    """Get, cancel and files of an unknown id answer ``None`` (the app turns it into 404)."""
    state = state_with(FakeClock())
    assert state.get("nope") is None
    assert state.cancel("nope") is None
    assert state.output_png("nope", 0) is None


def outcome_trace(seed: int) -> dict[str, list[Any]]:
    clock = FakeClock()
    state = state_with(
        clock,
        latency=(0.1, 5.0),
        failure_rate=0.3,
        hang_rate=0.2,
        rate_limit_rate=0.2,
        server_error_rate=0.2,
        malformed_rate=0.2,
        seed=seed,
    )
    ids = [create(state) for _ in range(30)]
    faults = [state.draw_fault() for _ in range(30)]
    statuses = []
    for _ in range(6):
        clock.advance(1.0)
        statuses.append([status(state, pid) for pid in ids])
    return {"ids": ids, "faults": faults, "statuses": statuses}


def test_the_same_seed_draws_the_same_ids_timings_outcomes_and_faults():
    """One seeded generator behind every draw makes a run reproducible, and seeds matter."""
    trace = outcome_trace(seed=42)
    other = outcome_trace(seed=43)
    assert trace == outcome_trace(seed=42)
    assert trace["ids"] != other["ids"]
    assert trace["faults"] != other["faults"]
    assert trace["statuses"] != other["statuses"]
    final = set(trace["statuses"][-1])
    assert final == {
        PredictionStatus.SUCCEEDED,
        PredictionStatus.FAILED,
        PredictionStatus.PROCESSING,
    }
    assert {fault.kind for fault in trace["faults"] if fault is not None} == set(FaultKind)
    assert None in trace["faults"]


def test_rates_of_one_always_apply_and_rates_of_zero_never_do():
    """Rate 1.0 fails every prediction and every request; rate 0.0 none of them."""
    clock = FakeClock()
    always = state_with(clock, latency=(0.1, 0.1), failure_rate=1.0, rate_limit_rate=1.0)
    never = state_with(clock, latency=(0.1, 0.1))
    failing = [create(always) for _ in range(20)]
    fine = [create(never) for _ in range(20)]
    clock.advance(1.0)

    assert {status(always, pid) for pid in failing} == {PredictionStatus.FAILED}
    assert {status(never, pid) for pid in fine} == {PredictionStatus.SUCCEEDED}
    assert all(always.draw_fault() is not None for _ in range(20))
    assert all(never.draw_fault() is None for _ in range(20))


@pytest.mark.parametrize(
    "prediction_input",
    [
        {"prompt": "x", "num_outputs": 0},
        {"prompt": "x", "num_outputs": 31},
        {"prompt": "x", "num_outputs": "2"},
        {"prompt": "x", "num_outputs": True},
        {"prompt": "x", "simulate": "explode"},
        {"num_outputs": 1},
    ],
    ids=["zero", "too-many", "string", "bool", "unknown-directive", "no-prompt"],
)
def test_invalid_input_is_refused_before_anything_is_drawn(prediction_input: dict[str, Any]):
    """Bad input creates nothing, like Replicate's 422."""
    state = state_with(FakeClock())
    with pytest.raises(InvalidPredictionInput):
        state.create(prediction_input)
    assert state.stats()["created"] == 0


def test_listing_is_newest_first_with_cursors_stable_under_new_predictions():
    """Cursor pages never skip or repeat a prediction, even if more are created meanwhile."""
    state = state_with(FakeClock(), page_size=2)
    ids = [create(state) for _ in range(5)]

    first, cursor = state.list_page()
    assert [p.id for p in first] == [ids[4], ids[3]]
    create(state)
    second, cursor = state.list_page(cursor)
    third, end = state.list_page(cursor)
    assert [p.id for p in second] == [ids[2], ids[1]]
    assert [p.id for p in third] == [ids[0]]
    assert end is None


def test_outputs_are_real_distinct_64px_pngs():
    """Each output decodes as a 64x64 RGB PNG, and different outputs differ."""
    clock = FakeClock()
    state = state_with(clock, latency=(0.1, 0.1))
    prediction_id = create(state, num_outputs=2)
    clock.advance(1.0)

    first = state.output_png(prediction_id, 0)
    second = state.output_png(prediction_id, 1)
    assert first is not None
    assert second is not None
    assert_decodable_png(first)
    assert_decodable_png(second)
    assert first != second


@pytest.mark.parametrize(
    "config",
    [
        {"latency": (2.0, 1.0)},
        {"latency": (-1.0, 1.0)},
        {"latency": (0.0, float("inf"))},
        {"failure_rate": 1.5},
        {"hang_rate": -0.1},
        {"rate_limit_rate": 2.0},
        {"server_error_rate": -1.0},
        {"malformed_rate": 1.01},
        {"page_size": 0},
    ],
)
def test_nonsense_configuration_is_refused_at_construction(config: dict[str, Any]):
    """A simulator never starts with rates outside [0, 1] or an impossible latency range."""
    with pytest.raises(ValueError):
        SimulatorConfig(**config)


def test_the_front_door_exports_exactly_the_sorted_public_names():
    """``__all__`` is sorted and matches the public names the package binds."""
    public = {name for name in vars(simulator) if not name.startswith("_")}
    assert simulator.__all__ == sorted(simulator.__all__)
    assert set(simulator.__all__) == public


# --- over real loopback HTTP ------------------------------------------------------------

TOKEN = "sim-token"  # noqa: S105 -- a fake for the loopback simulator
WRONG_TOKEN = "not-the-sim-token"  # noqa: S105 -- the fake a client gets wrong


@contextlib.asynccontextmanager
async def running(
    config: SimulatorConfig, *, token: str = TOKEN
) -> AsyncIterator[tuple[str, httpx.AsyncClient, ReplicateProvider]]:
    async with trio.open_nursery() as nursery:
        base_url: str = await nursery.start(serve_simulator, config)
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
            provider = ReplicateProvider(client, base_url=base_url, token=token, model="sim/image")
            yield base_url, client, provider
        nursery.cancel_scope.cancel()


def job(webhook_url: str | None = "http://127.0.0.1:9/webhooks/replicate", **params: object):
    return PredictionRequest(
        job_id=uuid.uuid4(),
        prompt="a lighthouse at dusk",
        params=params,
        num_outputs=2,
        webhook_url=webhook_url,
    )


async def poll_until(provider: ReplicateProvider, prediction_id: str, *wanted: str) -> Prediction:
    while True:
        got = await provider.get(prediction_id)
        if got.status in wanted:
            return got
        await trio.sleep(0.01)


async def test_a_prediction_runs_to_success_and_its_outputs_download_as_pngs():
    """Submit, poll and download over real HTTP, through the real adapter."""
    with trio.fail_after(5):
        async with running(SimulatorConfig(latency=(0.02, 0.05), seed=1)) as (base, client, sim):
            submitted = await sim.submit(job())
            assert submitted.status == PredictionStatus.STARTING
            done = await poll_until(sim, submitted.id, PredictionStatus.SUCCEEDED)

            assert len(done.output) == 2
            bodies = []
            for url in done.output:
                assert url.startswith(f"{base}/files/{done.id}/")
                response = await client.get(url)
                assert response.status_code == 200
                assert response.headers["content-type"] == "image/png"
                assert_decodable_png(response.content)
                bodies.append(response.content)
            assert bodies[0] != bodies[1]


async def test_a_hanging_prediction_is_cancelled_upstream_and_counted():
    """Cancel turns a hung prediction canceled, and `/_sim/stats` shows the cancellation."""
    with trio.fail_after(5):
        async with running(SimulatorConfig(latency=(0.01, 0.02))) as (base, client, sim):
            hung = await sim.submit(job(simulate="hang"))
            await poll_until(sim, hung.id, PredictionStatus.PROCESSING)
            await trio.sleep(0.1)
            assert (await sim.get(hung.id)).status == PredictionStatus.PROCESSING

            await sim.cancel(hung.id)
            assert (await sim.get(hung.id)).status == PredictionStatus.CANCELED
            await sim.cancel(hung.id)

            stats = (await client.get(f"{base}/_sim/stats")).json()
            assert stats["cancels"] == 2
            assert stats["canceled"] == 1
            assert stats["statuses"]["canceled"] == 1


async def test_a_failed_prediction_reaches_the_adapter_with_a_redacted_error():
    """The simulator's error quotes a credentialed URL; the adapter's `Prediction` does not."""
    with trio.fail_after(5):
        async with running(SimulatorConfig(latency=(0.01, 0.02))) as (_, _client, sim):
            submitted = await sim.submit(job(simulate="fail"))
            failed = await poll_until(sim, submitted.id, PredictionStatus.FAILED)
    assert failed.error is not None
    assert "simulated failure" in failed.error
    assert "sim-secret" not in failed.error
    assert "sim-signature" not in failed.error
    assert failed.output == ()


async def test_find_for_job_recovers_a_submission_from_the_listing():
    """A job whose prediction id was lost is found again through its tagged webhook."""
    with trio.fail_after(5):
        async with running(SimulatorConfig(page_size=2)) as (_, _client, sim):
            lost = job()
            submitted = await sim.submit(lost)
            for _ in range(5):
                await sim.submit(job())
            untagged = job(webhook_url=None)
            await sim.submit(untagged)

            found = await sim.find_for_job(lost.job_id)
            assert found is not None
            assert found.id == submitted.id
            assert await sim.find_for_job(untagged.job_id) is None


async def test_every_request_rate_limited_raises_rate_limited_with_retry_after():
    """With ``rate_limit_rate=1`` the adapter sees 429 and the configured Retry-After."""
    with trio.fail_after(5):
        config = SimulatorConfig(rate_limit_rate=1.0, retry_after=2.5)
        async with running(config) as (base, client, sim):
            with pytest.raises(ProviderRateLimited) as caught:
                await sim.submit(job())
            stats = (await client.get(f"{base}/_sim/stats")).json()
    assert caught.value.retry_after == 2.5
    assert stats["rate_limited"] == 1
    assert stats["created"] == 0


async def test_server_errors_are_unavailable_and_create_nothing():
    """With ``server_error_rate=1`` every call is a retryable 500 or 503, with no effect."""
    with trio.fail_after(5):
        async with running(SimulatorConfig(server_error_rate=1.0, seed=3)) as (base, client, sim):
            codes = set()
            for _ in range(10):
                with pytest.raises(ProviderUnavailable) as caught:
                    await sim.submit(job())
                codes.add(caught.value.status_code)
            stats = (await client.get(f"{base}/_sim/stats")).json()
    assert codes == {500, 503}
    assert stats["created"] == 0


async def test_malformed_answers_are_protocol_errors_even_though_the_work_happened():
    """Every garbled 200 is a `ProviderProtocolError`; the predictions were still created."""
    with trio.fail_after(5):
        async with running(SimulatorConfig(malformed_rate=1.0, seed=5)) as (base, client, sim):
            for _ in range(12):
                with pytest.raises(ProviderProtocolError):
                    await sim.submit(job())
            stats = (await client.get(f"{base}/_sim/stats")).json()
    assert stats["malformed"] == 12
    assert stats["created"] == 12


async def test_a_wrong_token_is_rejected_and_the_right_one_accepted():
    """With a token configured, a wrong bearer gets 401 (not retryable); the right one works."""
    config = SimulatorConfig(token=TOKEN, latency=(0.01, 0.02))
    with trio.fail_after(5):
        async with running(config, token=WRONG_TOKEN) as (base, client, wrong):
            with pytest.raises(ProviderRejected) as caught:
                await wrong.submit(job())
            right = ReplicateProvider(client, base_url=base, token=TOKEN, model="sim/image")
            accepted = await right.submit(job())
    assert caught.value.status_code == 401
    assert accepted.status == PredictionStatus.STARTING


async def test_unknown_routes_ids_and_bad_bodies_get_json_errors():
    """404 for unknown routes and predictions, 422 with ``detail`` for a non-JSON body."""
    with trio.fail_after(5):
        async with running(SimulatorConfig()) as (base, client, sim):
            unknown_route = await client.get(f"{base}/v2/nothing")
            bad_body = await client.post(
                f"{base}/v1/models/sim/image/predictions",
                content=b"{not json",
                headers={"content-type": "application/json"},
            )
            no_version = await client.post(f"{base}/v1/predictions", json={"input": {}})
            early_file = await client.get(f"{base}/files/nope/0.png")
            with pytest.raises(ProviderRejected) as caught:
                await sim.get("doesnotexist")

    assert unknown_route.status_code == 404
    assert unknown_route.headers["content-type"] == "application/json"
    assert bad_body.status_code == 422
    assert "JSON" in json.loads(bad_body.content)["detail"]
    assert no_version.status_code == 422
    assert early_file.status_code == 404
    assert caught.value.status_code == 404
