"""The KIE adapter: wire shapes and envelope mapping on `httpx.MockTransport`, then the simulator."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio

from orchestrator.core import (
    Prediction,
    PredictionRequest,
    PredictionStatus,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ProviderUnreachable,
)
from orchestrator.providers import KieProvider
from orchestrator.simulator import SimulatorConfig, serve_simulator

from .test_simulator import assert_decodable_png

BASE = "https://api.kie.test"
TOKEN = "kie_SuperSecretTokenValue0123456789"  # noqa: S105 -- a fake, to prove it never leaks
PROMPT = "a private prompt about my neighbour's red bicycle"
MODEL = "google/nano-banana"
JOB_ID = uuid.UUID("5d1a7c61-6f55-4a3e-9f5e-0c6f2b9a1e01")

Handler = Callable[[httpx.Request], httpx.Response]


def task(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "taskId": "task_123",
        "model": MODEL,
        "state": "waiting",
        "param": json.dumps({"model": MODEL, "input": {"prompt": PROMPT}}),
        "resultJson": "",
        "failCode": "",
        "failMsg": "",
        "costTime": None,
        "completeTime": None,
        "createTime": 1698765400000,
    }
    return body | overrides


def envelope(data: Any = None, code: int = 200, msg: str = "success") -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": task() if data is None else data}


def request(**overrides: Any) -> PredictionRequest:
    values: dict[str, Any] = {
        "job_id": JOB_ID,
        "prompt": PROMPT,
        "params": {"aspect_ratio": "1:1"},
        "num_outputs": 1,
        "webhook_url": None,
    }
    return PredictionRequest(**(values | overrides))


@contextlib.asynccontextmanager
async def kie(handler: Handler) -> AsyncIterator[KieProvider]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        yield KieProvider(client, base_url=BASE, token=TOKEN, model=MODEL)


def answer(status: int = 200, body: Any = None, **kwargs: Any) -> Handler:
    def handler(_request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, **kwargs)
        return httpx.Response(status, json=envelope() if body is None else body, **kwargs)

    return handler


def raising(exc: Exception) -> Handler:
    def handler(_request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


async def test_submit_posts_model_input_and_a_job_tagged_callback_with_auth():
    """createTask gets the model, prompt plus params, bearer auth and ``?job_id=`` on the callback."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=envelope({"taskId": "task_abc"}))

    async with kie(handler) as provider:
        submitted = await provider.submit(
            request(webhook_url="https://daemon.test/webhooks/kie?x=1")
        )

    (sent,) = seen
    assert sent.method == "POST"
    assert sent.url == f"{BASE}/api/v1/jobs/createTask"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    body = json.loads(sent.content)
    assert body["model"] == MODEL
    assert body["input"] == {"prompt": PROMPT, "aspect_ratio": "1:1"}
    callback = urllib.parse.urlsplit(body["callBackUrl"])
    assert callback.path == "/webhooks/kie"
    assert urllib.parse.parse_qs(callback.query) == {
        "x": ["1"],
        "job_id": [str(JOB_ID)],
        "idx": ["0"],
    }
    assert submitted == Prediction(
        id="task_abc", status=PredictionStatus.STARTING, webhook=body["callBackUrl"]
    )


async def test_submit_without_a_webhook_url_sends_no_callback():
    """No webhook URL configured means KIE gets no ``callBackUrl`` at all."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=envelope({"taskId": "task_abc"}))

    async with kie(handler) as provider:
        await provider.submit(request())
    assert "callBackUrl" not in json.loads(seen[0].content)


async def test_more_than_one_output_is_refused_before_any_request():
    """A KIE task makes one image; asking for two would charge for an image never made."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=envelope({"taskId": "task_abc"}))

    async with kie(handler) as provider:
        with pytest.raises(ProviderRejected, match="num_outputs"):
            await provider.submit(request(num_outputs=2))
    assert seen == []


async def test_get_reads_record_info_by_task_id_with_auth():
    """``get`` is ``GET recordInfo?taskId=`` with the bearer token."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=envelope(task(taskId="task_9", state="generating")))

    async with kie(handler) as provider:
        got = await provider.get("task_9")

    (sent,) = seen
    assert sent.method == "GET"
    assert sent.url.path == "/api/v1/jobs/recordInfo"
    assert sent.url.params["taskId"] == "task_9"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert got.id == "task_9"
    assert got.status is PredictionStatus.PROCESSING


async def test_cancel_is_a_no_op_that_still_validates_the_id():
    """KIE cannot cancel, so nothing is sent; a malformed id is still a caller bug."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=envelope())

    async with kie(handler) as provider:
        assert await provider.cancel("task_123") is None
        with pytest.raises(ProviderRejected, match="prediction id"):
            await provider.cancel("../../admin")
        with pytest.raises(ProviderRejected, match="prediction id"):
            await provider.get("a&taskId=b")
    assert seen == []


async def test_find_for_job_is_none_without_asking_kie():
    """KIE has no listing, so a lost task id is never guessed at."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=envelope())

    async with kie(handler) as provider:
        assert await provider.find_for_job(JOB_ID) is None
    assert seen == []


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("waiting", PredictionStatus.STARTING),
        ("queuing", PredictionStatus.STARTING),
        ("generating", PredictionStatus.PROCESSING),
    ],
)
async def test_unfinished_states_map_to_starting_or_processing(
    state: str, expected: PredictionStatus
):
    """KIE's three in-progress states are the two non-terminal statuses, with no output."""
    async with kie(answer(200, envelope(task(state=state)))) as provider:
        got = await provider.get("task_123")
    assert got.status is expected
    assert got.output == ()
    assert got.error is None


async def test_success_reads_the_urls_out_of_the_result_json_string():
    """``resultJson`` is itself JSON inside a string; its ``resultUrls`` become the output."""
    result = json.dumps({"resultUrls": ["https://cdn.kie.test/a.png"]})
    body = envelope(task(state="success", resultJson=result))
    async with kie(answer(200, body)) as provider:
        got = await provider.get("task_123")
    assert got.status is PredictionStatus.SUCCEEDED
    assert got.output == ("https://cdn.kie.test/a.png",)


async def test_failure_carries_a_redacted_error_from_fail_code_and_message():
    """failCode and failMsg become the error, without the token, the prompt or URL secrets."""
    message = (
        f"boom: {PROMPT} with {TOKEN} at https://user:hunter2@weights.test/m.bin?sig=abc123 "
        + "x" * 500
    )
    body = envelope(task(state="fail", failCode="500", failMsg=message))
    async with kie(answer(200, body)) as provider:
        got = await provider.get("task_123")
    assert got.status is PredictionStatus.FAILED
    assert got.error is not None
    assert got.error.startswith("500: boom")
    for secret in (PROMPT, TOKEN, "hunter2", "abc123"):
        assert secret not in got.error
    assert len(got.error) <= 200


async def test_the_callback_url_in_param_becomes_the_predictions_webhook():
    """KIE echoes the original request in ``param``; its callBackUrl identifies the job."""
    hook = f"https://daemon.test/webhooks/kie?job_id={JOB_ID}"
    param = json.dumps({"model": MODEL, "callBackUrl": hook, "input": {"prompt": PROMPT}})
    async with kie(answer(200, envelope(task(param=param)))) as provider:
        assert (await provider.get("task_123")).webhook == hook


@pytest.mark.parametrize(
    ("handler", "expected", "status_code"),
    [
        (answer(200, envelope(None, code=401, msg="Unauthorized")), ProviderRejected, 401),
        (answer(200, envelope(None, code=402, msg="Insufficient credits")), ProviderRejected, 402),
        (answer(200, envelope(None, code=422, msg="Invalid input")), ProviderRejected, 422),
        (answer(200, envelope(None, code=500, msg="Server error")), ProviderUnavailable, 500),
        (answer(200, envelope(None, code=455, msg="Maintenance")), ProviderUnavailable, 455),
        (answer(500, b"<html>oops</html>"), ProviderUnavailable, 500),
        (answer(401, {"code": 401, "msg": "Unauthorized"}), ProviderRejected, 401),
        (raising(httpx.ConnectError("connection refused")), ProviderUnreachable, None),
        (raising(httpx.ReadTimeout("read timed out")), ProviderUnavailable, None),
    ],
    ids=[
        "code-401",
        "code-402",
        "code-422",
        "code-500",
        "code-455",
        "http-500",
        "http-401",
        "connect",
        "timeout",
    ],
)
async def test_envelope_codes_and_http_statuses_map_to_the_same_errors(
    handler: Handler, expected: type[ProviderError], status_code: int | None
):
    """An error code inside an HTTP 200 is as much an error as the same HTTP status."""
    async with kie(handler) as provider:
        with pytest.raises(expected) as caught:
            await provider.submit(request())
    error = caught.value
    assert type(error) is expected
    assert isinstance(error, ProviderUnavailable | ProviderRejected)
    assert error.status_code == status_code
    assert error.summary.startswith("kie")


async def test_code_429_in_the_envelope_is_rate_limited_with_retry_after():
    """HTTP 200 with code 429 is a retryable `ProviderRateLimited`, honouring Retry-After."""
    handler = answer(200, envelope(None, code=429, msg="Too many"), headers={"Retry-After": "3"})
    async with kie(handler) as provider:
        with pytest.raises(ProviderRateLimited) as caught:
            await provider.submit(request())
    assert caught.value.retry_after == 3.0
    assert caught.value.status_code == 429


@pytest.mark.parametrize(
    "handler",
    [
        answer(200, b"<html>not json</html>"),
        answer(200, b'{"code": 200, "da'),
        answer(200, ["unexpected"]),
        answer(200, {"msg": "no code", "data": task()}),
        answer(200, {"code": "200", "msg": "success", "data": task()}),
        answer(200, {"code": 200, "msg": "success", "data": None}),
        answer(200, envelope(task(state="exploded"))),
        answer(200, envelope(task(taskId=7))),
        answer(200, envelope(task(state="success", resultJson="{not json"))),
        answer(200, envelope(task(state="success", resultJson=None))),
        answer(200, envelope(task(state="success", resultJson='{"resultUrls": "x"}'))),
        answer(200, envelope(task(state="success", resultJson='{"resultUrls": [1]}'))),
        answer(200, envelope(task(state="fail", failMsg={"nested": "object"}))),
        answer(200, envelope(None, code=302, msg="moved")),
    ],
    ids=[
        "html",
        "truncated",
        "json-list",
        "no-code",
        "string-code",
        "null-data",
        "unknown-state",
        "numeric-task-id",
        "result-json-not-json",
        "result-json-null",
        "result-urls-not-list",
        "result-urls-not-strings",
        "fail-msg-object",
        "code-302",
    ],
)
async def test_bodies_that_are_not_a_task_are_protocol_errors(handler: Handler):
    """Anything but a well-formed envelope around a task is a `ProviderProtocolError`."""
    async with kie(handler) as provider:
        with pytest.raises(ProviderProtocolError):
            await provider.get("task_123")


def echoing(status: int, code: int) -> Handler:
    def handler(req: httpx.Request) -> httpx.Response:
        leak = f"{PROMPT} {req.headers['authorization']} {TOKEN}"
        if status == 200 and code == 200:
            return httpx.Response(200, content=leak.encode())
        return httpx.Response(status, json={"code": code, "msg": f"bad input: {leak}"})

    return handler


@pytest.mark.parametrize(
    "handler",
    [
        echoing(200, 200),
        echoing(200, 401),
        echoing(200, 422),
        echoing(200, 429),
        echoing(200, 500),
        echoing(422, 422),
        raising(httpx.ConnectError(f"refused {TOKEN} {PROMPT}")),
    ],
    ids=["non-json", "code-401", "code-422", "code-429", "code-500", "http-422", "transport"],
)
async def test_exceptions_never_carry_the_token_or_the_prompt(handler: Handler):
    """Even when KIE echoes them back in ``msg``, neither secret reaches a message."""
    async with kie(handler) as provider:
        with pytest.raises(ProviderError) as caught:
            await provider.submit(request())
    for text in (str(caught.value), repr(caught.value), caught.value.summary):
        assert TOKEN not in text
        assert PROMPT not in text
        assert "SuperSecret" not in text


async def test_parse_webhook_reads_the_callback_envelope():
    """A callback is the recordInfo envelope; a failed one (code 501) is still a task."""
    result = json.dumps({"resultUrls": ["https://cdn.kie.test/a.png"]})
    succeeded = envelope(task(state="success", resultJson=result))
    failed = envelope(task(state="fail", failCode="501", failMsg="nope"), code=501, msg="failed")
    async with kie(answer()) as provider:
        done = provider.parse_webhook(json.dumps(succeeded).encode())
        broken = provider.parse_webhook(json.dumps(failed).encode())
    assert done == Prediction(
        id="task_123", status=PredictionStatus.SUCCEEDED, output=("https://cdn.kie.test/a.png",)
    )
    assert broken.status is PredictionStatus.FAILED
    assert broken.error == "501: nope"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe garbage",
        b"[]",
        json.dumps({"code": 200, "msg": "success"}).encode(),
        json.dumps(envelope(task(state="exploded"))).encode(),
    ],
    ids=["empty", "not-utf8", "list", "no-data", "unknown-state"],
)
async def test_parse_webhook_refuses_garbage_as_a_protocol_error(body: bytes):
    """Whatever arrives at the webhook endpoint, only a `ProviderProtocolError` comes out."""
    async with kie(answer()) as provider:
        with pytest.raises(ProviderProtocolError):
            provider.parse_webhook(body)


async def test_the_adapters_repr_never_shows_the_token():
    """Logging the provider object must not leak its credentials."""
    async with kie(answer()) as provider:
        assert TOKEN not in repr(provider)
        assert MODEL in repr(provider)


# --- against the simulator in KIE mode, over real loopback HTTP --------------------------

SIM_TOKEN = "sim-kie-token"  # noqa: S105 -- a fake for the loopback simulator


@contextlib.asynccontextmanager
async def running(config: SimulatorConfig) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async with trio.open_nursery() as nursery:
        base_url: str = await nursery.start(serve_simulator, config)
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
            yield base_url, client
        nursery.cancel_scope.cancel()


async def poll_until_terminal(provider: KieProvider, task_id: str) -> Prediction:
    while True:
        got = await provider.get(task_id)
        if got.status.terminal:
            return got
        await trio.sleep(0.01)


async def test_a_task_runs_to_success_on_the_simulator_and_its_png_downloads():
    """Submit, poll and download over real HTTP against the simulator speaking KIE."""
    config = SimulatorConfig(api="kie", token=SIM_TOKEN, latency=(0.02, 0.05), seed=1)
    with trio.fail_after(5):
        async with running(config) as (base, client):
            provider = KieProvider(client, base_url=base, token=SIM_TOKEN, model="sim/image")
            submitted = await provider.submit(request(params={}))
            assert submitted.status is PredictionStatus.STARTING
            done = await poll_until_terminal(provider, submitted.id)
            assert done.status is PredictionStatus.SUCCEEDED
            (url,) = done.output
            assert url.startswith(f"{base}/files/{done.id}/")
            image = await client.get(url)
            replicate_route = await client.get(f"{base}/v1/predictions/{done.id}")
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert_decodable_png(image.content)
    assert replicate_route.status_code == 404


async def test_a_failing_task_on_the_simulator_arrives_failed_and_redacted():
    """``simulate: fail`` ends in state ``fail``, its credentialed URL cut from the error."""
    config = SimulatorConfig(api="kie", latency=(0.01, 0.02))
    with trio.fail_after(5):
        async with running(config) as (base, client):
            provider = KieProvider(client, base_url=base, token=SIM_TOKEN, model="sim/image")
            submitted = await provider.submit(request(params={"simulate": "fail"}))
            failed = await poll_until_terminal(provider, submitted.id)
    assert failed.status is PredictionStatus.FAILED
    assert failed.error is not None
    assert "simulated failure" in failed.error
    assert "sim-secret" not in failed.error
    assert failed.output == ()


async def test_simulator_errors_in_kie_mode_reach_the_adapter_as_envelope_codes():
    """A wrong token is code 401 and throttling code 429, both inside HTTP 200."""
    with trio.fail_after(5):
        async with running(SimulatorConfig(api="kie", token=SIM_TOKEN)) as (base, client):
            wrong = KieProvider(client, base_url=base, token="wrong", model="sim/image")
            with pytest.raises(ProviderRejected) as rejected:
                await wrong.submit(request())
            raw = await client.post(f"{base}/api/v1/jobs/createTask", json={})
        config = SimulatorConfig(api="kie", rate_limit_rate=1.0, retry_after=2.0)
        async with running(config) as (base, client):
            throttled = KieProvider(client, base_url=base, token=SIM_TOKEN, model="sim/image")
            with pytest.raises(ProviderRateLimited) as limited:
                await throttled.submit(request())
    assert rejected.value.status_code == 401
    assert raw.status_code == 200
    assert raw.json()["code"] == 401
    assert limited.value.retry_after == 2.0
