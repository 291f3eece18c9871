"""The simulator's ``image_input``: validated at create, fetched like Replicate, recorded.

First the state machine under a fake clock (a prediction cannot end before its inputs are
in; a bad input fails it, naming which), then over real loopback HTTP against a small
misbehaving file server.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import socket
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio

from orchestrator.asgi import lifespan
from orchestrator.core import PredictionRequest, PredictionStatus
from orchestrator.providers import ReplicateProvider
from orchestrator.simulator import (
    InputFetch,
    InputFetcher,
    InvalidPredictionInput,
    SimulatorConfig,
    SimulatorState,
    add_simulator_flags,
    serve_simulator,
    simulator_config,
)

from .test_simulator import FakeClock

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 56
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60
BIG = 20 * 1024 * 1024 + 1
PHOTOS = ("http://127.0.0.1:9/a.png?sig=1", "http://127.0.0.1:9/b.png?sig=2")


def state_with(clock: FakeClock, **config: Any) -> SimulatorState:
    return SimulatorState(SimulatorConfig(**({"latency": (1.0, 1.0)} | config)), clock=clock)


def fetched(index: int, url: str, problem: str | None = None, status: int = 200) -> InputFetch:
    return InputFetch(
        index=index,
        url=url,
        started_at=time.time(),
        elapsed=0.01,
        status_code=status,
        content_type="image/png",
        size=len(PNG),
        problem=problem,
    )


def create(state: SimulatorState, *urls: str, model: str = "sim/image", **extra: Any) -> str:
    body = {"prompt": "put a hat on it", "image_input": list(urls)} | extra
    return state.create(body, model=model).id


def status_error(state: SimulatorState, prediction_id: str) -> tuple[str, str | None]:
    got = state.get(prediction_id)
    assert got is not None
    return got.status.value, got.error


# --- state, under a fake clock ----------------------------------------------------------


def test_a_prediction_cannot_end_before_its_inputs_are_fetched():
    """Past its drawn latency it still processes; the last good fetch lets it succeed."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, *PHOTOS)
    requests = state.take_input_fetches()
    assert [(r.prediction_id, r.index, r.url) for r in requests] == [
        (prediction_id, 0, PHOTOS[0]),
        (prediction_id, 1, PHOTOS[1]),
    ]
    assert state.take_input_fetches() == []

    clock.advance(5.0)
    state.record_input_fetch(prediction_id, fetched(1, PHOTOS[1]))
    assert status_error(state, prediction_id) == ("processing", None)
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0]))
    done = state.get(prediction_id)
    assert done is not None
    assert done.status == PredictionStatus.SUCCEEDED
    assert done.completed_at == pytest.approx(1005.0)
    inputs = state.image_inputs(prediction_id)
    assert inputs is not None
    assert inputs.urls == PHOTOS
    assert inputs.done
    assert [f.index for f in inputs.fetches if f is not None] == [0, 1]
    assert state.stats()["input_fetches"] == 2


def test_fast_fetches_leave_the_drawn_latency_in_place():
    """Inputs in early do not hurry the model: it succeeds at its drawn finish, not before."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, PHOTOS[0])
    clock.advance(0.1)
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0]))
    clock.advance(0.5)
    assert status_error(state, prediction_id) == ("processing", None)
    clock.advance(0.5)
    done = state.get(prediction_id)
    assert done is not None
    assert done.status == PredictionStatus.SUCCEEDED
    assert done.completed_at == pytest.approx(1001.0)


def test_the_first_unusable_input_by_position_fails_the_prediction_whatever_was_drawn():
    """A 403 at index 1 fails even a ``hang``; the error names the input and the reason."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, *PHOTOS, "http://127.0.0.1:9/c.png", simulate="hang")
    clock.advance(2.0)
    state.record_input_fetch(prediction_id, fetched(2, "c", "HTTP 404", 404))
    state.record_input_fetch(prediction_id, fetched(1, PHOTOS[1], "HTTP 403", 403))
    assert status_error(state, prediction_id)[0] == "processing"
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0]))

    assert status_error(state, prediction_id) == (
        "failed",
        "image_input[1] could not be fetched: HTTP 403",
    )
    assert state.output_png(prediction_id, 0) is None
    assert state.stats()["input_fetch_failures"] == 2


def test_a_bad_input_ends_the_prediction_no_earlier_than_its_start():
    """A fetch failing at once still reports a start first, as the start webhook says."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, PHOTOS[0])
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0], "HTTP 403", 403))
    assert status_error(state, prediction_id) == ("starting", None)
    clock.advance(0.25)
    failed = state.get(prediction_id)
    assert failed is not None
    assert failed.status == PredictionStatus.FAILED
    assert failed.started_at == failed.completed_at == pytest.approx(1000.25)


def test_a_prediction_cancelled_while_fetching_stays_cancelled_and_keeps_the_record():
    """Cancel wins over a fetch that lands later; what that fetch found is still kept."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, PHOTOS[0])
    clock.advance(0.5)
    state.cancel(prediction_id)
    clock.advance(0.5)
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0]))
    clock.advance(5.0)
    assert status_error(state, prediction_id) == ("canceled", None)
    inputs = state.image_inputs(prediction_id)
    assert inputs is not None
    assert inputs.fetches[0] is not None


def test_the_completed_webhook_falls_due_only_once_the_inputs_are_in():
    """Until the last fetch reports, no completed event is owed; then it is, at the end."""
    clock = FakeClock()
    state = state_with(clock, api="replicate")
    body = {"prompt": "x", "image_input": [PHOTOS[0]]}
    prediction_id = state.create(
        body,
        model="sim/image",
        webhook="http://127.0.0.1:9/h",
        webhook_events_filter=("completed",),
    ).id
    clock.advance(3.0)
    assert state.next_webhook_at() is None
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0], "HTTP 404", 404))
    assert state.next_webhook_at() == pytest.approx(1003.0)
    ((event,),) = state.take_due_webhooks()
    assert event.prediction.status == PredictionStatus.FAILED
    assert event.prediction.error == "image_input[0] could not be fetched: HTTP 404"


def test_a_duplicate_or_foreign_fetch_report_changes_nothing():
    """The first report of an input is the one acted on; nonsense reports are ignored."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, PHOTOS[0])
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0]))
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0], "HTTP 403", 403))
    state.record_input_fetch(prediction_id, fetched(7, PHOTOS[0], "HTTP 403", 403))
    state.record_input_fetch("unknown", fetched(0, PHOTOS[0]))
    clock.advance(1.0)
    assert status_error(state, prediction_id) == ("succeeded", None)
    assert state.stats()["input_fetches"] == 1


def test_fail_once_counts_a_retry_with_freshly_signed_urls_as_the_second_attempt():
    """Presigned URLs change per attempt; the output's identity must not."""
    clock = FakeClock()
    state = state_with(clock, latency=(0.1, 0.1))
    first = create(state, "http://127.0.0.1:9/a.png?sig=old", simulate="fail_once")
    again = create(state, "http://127.0.0.1:9/a.png?sig=new", simulate="fail_once")
    for prediction_id, request in zip((first, again), state.take_input_fetches(), strict=True):
        state.record_input_fetch(prediction_id, fetched(0, request.url))
    clock.advance(1.0)
    assert status_error(state, first)[0] == "failed"
    assert status_error(state, again) == ("succeeded", None)


@pytest.mark.parametrize(
    ("image_input", "message"),
    [
        ("http://127.0.0.1:9/a.png", "must be an array of uri, got str"),
        ({"url": "http://127.0.0.1:9/a.png"}, "must be an array of uri, got dict"),
        ([PHOTOS[0]] * 5, "must have at most 4 items, got 5"),
        ([PHOTOS[0], 3], "input.image_input[1] must be an http(s) uri: 3"),
        (["ftp://127.0.0.1/a.png"], "input.image_input[0] must be an http(s) uri"),
        (["/a.png"], "input.image_input[0] must be an http(s) uri"),
        (["http:///a.png"], "input.image_input[0] must be an http(s) uri"),
        (["data:image/png;base64," + "A" * 10_000], "..."),
    ],
    ids=["string", "object", "five", "number", "ftp", "relative", "no-host", "data-url"],
)
def test_an_invalid_image_input_is_refused_before_anything_is_created(
    image_input: object, message: str
):
    """Like Replicate's schema check: an array of at most 4 http(s) URLs, or a 422."""
    state = state_with(FakeClock())
    with pytest.raises(InvalidPredictionInput) as caught:
        state.create({"prompt": "x", "image_input": image_input}, model="google/nano-banana")
    assert message in str(caught.value)
    assert len(str(caught.value)) < 200
    assert state.stats()["created"] == 0
    assert state.take_input_fetches() == []


@pytest.mark.parametrize(
    ("api", "model"),
    [("kie", "google/nano-banana"), ("replicate", "black-forest-labs/flux-schnell")],
)
def test_models_without_image_input_keep_it_as_an_opaque_input(api: str, model: str):
    """Only Replicate's nano-banana and ``sim/image`` fetch; elsewhere the key is just echoed."""
    clock = FakeClock()
    state = state_with(clock, api=api, latency=(0.1, 0.1))
    prediction_id = create(state, "not even a url", model=model)
    clock.advance(1.0)
    assert state.take_input_fetches() == []
    assert status_error(state, prediction_id) == ("succeeded", None)
    assert state.all_image_inputs() == []


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("inf"), float("nan")])
def test_a_nonsense_fetch_timeout_is_refused_at_construction(timeout: float):
    """A fetch must be able to finish and must be able to give up."""
    with pytest.raises(ValueError, match="input_fetch_timeout"):
        SimulatorConfig(input_fetch_timeout=timeout)


def test_the_fetch_timeout_is_a_flag():
    """``--input-fetch-timeout`` reaches the config, with the help its docstring gives it."""
    parser = argparse.ArgumentParser()
    add_simulator_flags(parser)
    assert simulator_config(parser.parse_args([])).input_fetch_timeout == 5.0
    chosen = parser.parse_args(["--input-fetch-timeout", "0.5"])
    assert simulator_config(chosen).input_fetch_timeout == 0.5
    assert "image_input" in parser.format_help()


# --- over real loopback HTTP ------------------------------------------------------------


class Files:
    """A loopback file server that misbehaves on purpose, recording every request's target."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        path = scope["path"]
        query = scope["query_string"].decode()
        self.seen.append(f"{path}?{query}" if query else path)
        status, body = 200, PNG
        headers = [(b"content-type", b"image/png")]
        match path:
            case "/photo.jpg":
                headers, body = [(b"content-type", b"application/octet-stream")], JPEG
            case "/forbidden":
                status, body = 403, b"<Error><Code>AccessDenied</Code></Error>"
                headers = [(b"content-type", b"application/xml")]
            case "/missing":
                status, body = 404, b""
            case "/page.html":
                headers, body = [(b"content-type", b"text/html")], b"<html>not an image</html>"
            case "/moved":
                status, headers = 302, [(b"location", b"/photo.png")]
            case "/hang":
                await trio.sleep_forever()
            case "/huge":
                claimed = [*headers, (b"content-length", str(BIG).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": claimed})
                await trio.sleep_forever()
            case "/big":
                await self._stream(send, 1 << 20, BIG // (1 << 20) + 1)
                return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _stream(send: Any, chunk: int, chunks: int) -> None:
        """A body with no ``content-length``, so only counting the bytes can refuse it."""
        headers = [(b"content-type", b"image/png")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": b"\x00" * chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def world(**config: Any) -> AsyncIterator[tuple[str, str, Files, httpx.AsyncClient]]:
    """A file server and a simulator on loopback: (simulator URL, files URL, files, client)."""
    files = Files()
    server_config = hypercorn.config.Config()
    server_config.bind = ["127.0.0.1:0"]
    server_config.accesslog = None
    server_config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn.trio.serve, files, server_config))
        sim_config = SimulatorConfig(**({"latency": (0.02, 0.05), "seed": 11} | config))
        base: str = await nursery.start(serve_simulator, sim_config)
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
            yield base, binds[0], files, client
        nursery.cancel_scope.cancel()


async def submit(
    client: httpx.AsyncClient, base: str, *urls: str, model: str = "sim/image", **extra: Any
) -> httpx.Response:
    body = {"input": {"prompt": "put a hat on it", "image_input": list(urls)} | extra}
    return await client.post(f"{base}/v1/models/{model}/predictions", json=body)


async def terminal(client: httpx.AsyncClient, base: str, prediction_id: str) -> dict[str, Any]:
    while True:
        got: dict[str, Any] = (await client.get(f"{base}/v1/predictions/{prediction_id}")).json()
        if got["status"] in {"succeeded", "failed", "canceled"}:
            return got
        await trio.sleep(0.01)


async def recorded(client: httpx.AsyncClient, base: str, prediction_id: str) -> dict[str, Any]:
    response = await client.get(f"{base}/_sim/inputs/{prediction_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_fetchable_inputs_succeed_and_every_fetch_is_recorded_as_sent():
    """201 at once; each URL fetched byte for byte with its query; the record says so."""
    with trio.fail_after(5):
        async with world() as (base, files_url, files, client):
            signed = f"{files_url}/photo.png?X-Amz-Expires=300&X-Amz-Signature=ab%2Fcd"
            plain = f"{files_url}/photo.jpg"
            before = time.time()
            created = await submit(client, base, signed, plain)
            assert created.status_code == 201
            assert created.json()["status"] == "starting"
            assert created.json()["input"]["image_input"] == [signed, plain]
            done = await terminal(client, base, created.json()["id"])
            after = time.time()
            record = await recorded(client, base, done["id"])
            listing = (await client.get(f"{base}/_sim/inputs")).json()
            outputs = [(await client.get(url)).status_code for url in done["output"]]

    assert done["status"] == "succeeded"
    assert outputs == [200]
    # Fetched concurrently, so in either order.
    assert sorted(files.seen) == [
        "/photo.jpg",
        "/photo.png?X-Amz-Expires=300&X-Amz-Signature=ab%2Fcd",
    ]
    assert record["image_input"] == [signed, plain]
    assert record["error"] is None
    first, second = record["fetches"]
    assert (first["url"], first["status_code"], first["content_type"]) == (
        signed,
        200,
        "image/png",
    )
    assert (first["size"], first["sha256"]) == (len(PNG), hashlib.sha256(PNG).hexdigest())
    assert (second["ok"], second["content_type"], second["size"]) == (
        True,
        "application/octet-stream",
        len(JPEG),
    )
    for fetch in (first, second):
        assert before <= fetch["started_at"] <= fetch["started_at"] + fetch["elapsed"] <= after
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(first["url"]).query)
    assert int(query["X-Amz-Expires"][0]) <= 300
    assert listing == {"predictions": [record]}


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/forbidden", "HTTP 403"),
        ("/missing", "HTTP 404"),
        ("/page.html", "not an image (content type text/html)"),
        ("/moved", "HTTP 302 (redirects are not followed)"),
        ("/hang", "timed out after 0.3 s"),
        ("/big", "larger than 20 MiB"),
        ("/huge", "larger than 20 MiB"),
        ("unreachable", "connection failed"),
    ],
)
async def test_an_unusable_input_fails_the_prediction_naming_it(path: str, reason: str):
    """Beside a good input at 0, a bad one at 1 fails the prediction with its reason."""
    with trio.fail_after(5):
        async with world(input_fetch_timeout=0.3) as (base, files_url, _files, client):
            bad = (
                f"http://127.0.0.1:{unused_port()}/photo.png"
                if path == "unreachable"
                else f"{files_url}{path}"
            )
            created = await submit(client, base, f"{files_url}/photo.png", bad)
            failed = await terminal(client, base, created.json()["id"])
            record = await recorded(client, base, failed["id"])
            stats = (await client.get(f"{base}/_sim/stats")).json()

    assert created.status_code == 201
    assert failed["status"] == "failed"
    assert failed["output"] is None
    assert failed["error"].startswith(f"image_input[1] could not be fetched: {reason}")
    assert record["error"] == failed["error"]
    good, refused = record["fetches"]
    assert good["ok"]
    assert not refused["ok"]
    assert refused["url"] == bad
    assert refused["error"] == failed["error"]
    assert (stats["input_fetches"], stats["input_fetch_failures"]) == (2, 1)


async def test_the_failure_reaches_the_adapter_and_the_webhook():
    """Through the real adapter: GET and the completed webhook both carry the input error."""
    hooks = Hooks()
    with trio.fail_after(5):
        async with world() as (base, files_url, _files, client), hooks.serving() as hook_url:
            provider = ReplicateProvider(
                client, base_url=base, token="sim-token", model="sim/image"
            )
            request = PredictionRequest(
                job_id=uuid.uuid4(),
                prompt="put a hat on it",
                params={"image_input": [f"{files_url}/forbidden"]},
                num_outputs=1,
                webhook_url=f"{hook_url}/webhooks/replicate",
            )
            submitted = await provider.submit(request)
            body = await hooks.completed()
            got = await provider.get(submitted.id)

    assert got.status == PredictionStatus.FAILED
    assert got.error is not None
    assert "image_input[0] could not be fetched: HTTP 403" in got.error
    assert body["id"] == submitted.id
    assert body["status"] == "failed"
    assert body["error"] == "image_input[0] could not be fetched: HTTP 403"


class Hooks:
    """A webhook receiver keeping the bodies of completed events."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[dict[str, Any]](10)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body", False):
                break
        payload = json.loads(body)
        if payload["status"] in {"succeeded", "failed", "canceled"}:
            self._send.send_nowait(payload)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def completed(self) -> dict[str, Any]:
        return await self._receive.receive()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        config = hypercorn.config.Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.graceful_timeout = 0.1
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(hypercorn.trio.serve, self, config))
            yield binds[0]
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("image_input", "detail"),
    [
        ([f"http://127.0.0.1:9/{n}.png" for n in range(5)], "at most 4 items, got 5"),
        ("http://127.0.0.1:9/a.png", "must be an array of uri"),
        (["not a url"], "input.image_input[0] must be an http(s) uri"),
    ],
    ids=["five", "not-a-list", "not-a-url"],
)
async def test_an_invalid_image_input_is_a_422_that_creates_nothing(
    image_input: object, detail: str
):
    """Refused at create, in Replicate's problem-details shape, before anything is fetched."""
    with trio.fail_after(5):
        async with world() as (base, _files_url, files, client):
            refused = await client.post(
                f"{base}/v1/models/google/nano-banana/predictions",
                json={"input": {"prompt": "x", "image_input": image_input}},
            )
            stats = (await client.get(f"{base}/_sim/stats")).json()
            listing = (await client.get(f"{base}/_sim/inputs")).json()

    assert refused.status_code == 422
    problem = refused.json()
    assert problem["status"] == 422
    assert detail in problem["detail"]
    assert stats["created"] == 0
    assert listing == {"predictions": []}
    assert files.seen == []


async def test_google_nano_banana_is_accepted_with_its_documented_inputs():
    """The real model's name and schema (prompt, image_input, aspect_ratio, output_format)."""
    with trio.fail_after(5):
        async with world() as (base, files_url, files, client):
            created = await submit(
                client,
                base,
                f"{files_url}/photo.png",
                model="google/nano-banana",
                aspect_ratio="match_input_image",
                output_format="jpg",
            )
            done = await terminal(client, base, created.json()["id"])
            record = await recorded(client, base, done["id"])

    assert created.status_code == 201
    assert done["model"] == "google/nano-banana"
    assert done["status"] == "succeeded"
    assert done["input"]["aspect_ratio"] == "match_input_image"
    assert record["model"] == "google/nano-banana"
    assert files.seen == ["/photo.png"]


async def test_the_failure_rate_still_applies_to_predictions_with_good_inputs():
    """Inputs fetched fine, the drawn model failure happens as before, and it is the error."""
    with trio.fail_after(5):
        async with world(failure_rate=1.0) as (base, files_url, _files, client):
            created = await submit(client, base, f"{files_url}/photo.png")
            failed = await terminal(client, base, created.json()["id"])
            record = await recorded(client, base, failed["id"])

    assert failed["status"] == "failed"
    assert failed["error"].startswith("simulated failure")
    assert record["fetches"][0]["ok"]


async def test_a_hanging_input_leaves_the_prediction_cancellable_and_the_api_responsive():
    """While a fetch hangs, GET answers, the prediction runs, and cancel ends it."""
    with trio.fail_after(5):
        async with world(input_fetch_timeout=2.0) as (base, files_url, _files, client):
            created = (await submit(client, base, f"{files_url}/hang")).json()
            await trio.sleep(0.2)
            running = (await client.get(f"{base}/v1/predictions/{created['id']}")).json()
            during = await recorded(client, base, created["id"])
            await client.post(f"{base}/v1/predictions/{created['id']}/cancel")
            after = await terminal(client, base, created["id"])

    assert running["status"] == "processing"
    assert during["fetches"] == [None]
    assert after["status"] == "canceled"


async def test_unknown_predictions_have_no_input_record():
    """``/_sim/inputs/<id>`` is 404 for an id the simulator never made."""
    with trio.fail_after(5):
        async with world() as (base, _files_url, _files, client):
            missing = await client.get(f"{base}/_sim/inputs/nope")
    assert missing.status_code == 404


async def test_the_fetcher_runs_beside_a_bare_state_without_the_http_api():
    """`InputFetcher` drives a `SimulatorState` directly, for tests that want the objects."""
    files = Files()
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.1
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(trust_env=False) as client:
            binds = await nursery.start(partial(hypercorn.trio.serve, files, config))
            fetcher = InputFetcher(client, wall_clock=time.time, timeout=1.0)
            state = SimulatorState(
                SimulatorConfig(latency=(0.01, 0.01)),
                clock=trio.current_time,
                on_change=fetcher.wake,
            )
            await nursery.start(fetcher.run, state)
            body = {"prompt": "x", "image_input": [f"{binds[0]}/photo.png"]}
            prediction_id = state.create(body, model="sim/image").id
            while (inputs := state.image_inputs(prediction_id)) is None or not inputs.done:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    assert inputs.failure is None
    assert inputs.fetches[0] is not None
    assert inputs.fetches[0].sha256 == hashlib.sha256(PNG).hexdigest()


async def test_a_url_off_this_machine_is_never_fetched():
    """Like webhooks, input fetches go to loopback only; anything else fails unfetched."""
    async with httpx.AsyncClient(trust_env=False) as client:
        fetcher = InputFetcher(client, wall_clock=time.time, timeout=1.0)
        fetch = await fetcher.fetch(0, "https://example.com/photo.png")
    assert fetch.status_code is None
    assert fetch.error == (
        "image_input[0] could not be fetched: "
        "not a loopback URL (the simulator fetches only from this machine)"
    )
