"""The Replicate adapter against `httpx.MockTransport`: wire shapes, parsing, error mapping."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from orchestrator import providers
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
from orchestrator.providers import ReplicateProvider

BASE = "https://api.replicate.test"
TOKEN = "r8_SuperSecretTokenValue0123456789"  # noqa: S105 -- a fake, to prove it never leaks
PROMPT = "a private prompt about my neighbour's red bicycle"
JOB_ID = uuid.UUID("5d1a7c61-6f55-4a3e-9f5e-0c6f2b9a1e01")

Handler = Callable[[httpx.Request], httpx.Response]


def prediction_json(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "pred123",
        "status": "starting",
        "output": None,
        "error": None,
        "webhook": None,
        "input": {"prompt": PROMPT},
    }
    return body | overrides


def request(**overrides: Any) -> PredictionRequest:
    values: dict[str, Any] = {
        "job_id": JOB_ID,
        "prompt": PROMPT,
        "params": {"aspect_ratio": "1:1"},
        "num_outputs": 2,
        "webhook_url": None,
    }
    return PredictionRequest(**(values | overrides))


@contextlib.asynccontextmanager
async def replicate(handler: Handler, **kwargs: Any) -> AsyncIterator[ReplicateProvider]:
    options: dict[str, Any] = {"model": "owner/name"} | kwargs
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        yield ReplicateProvider(client, base_url=BASE, token=TOKEN, **options)


def answer(status: int = 200, body: Any = None, **kwargs: Any) -> Handler:
    def handler(_request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, **kwargs)
        return httpx.Response(status, json=prediction_json() if body is None else body, **kwargs)

    return handler


async def test_submit_to_a_model_sends_auth_input_and_a_job_tagged_webhook():
    """A model-based submit posts to the model's endpoint with prompt, params and job id."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(201, json=prediction_json())

    async with replicate(handler) as provider:
        await provider.submit(request(webhook_url="https://daemon.test/webhooks/replicate?x=1"))

    (sent,) = seen
    assert sent.method == "POST"
    assert sent.url == f"{BASE}/v1/models/owner/name/predictions"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    body = json.loads(sent.content)
    assert body["input"] == {"prompt": PROMPT, "num_outputs": 2, "aspect_ratio": "1:1"}
    assert "version" not in body
    assert body["webhook_events_filter"] == ["completed"]
    webhook = urllib.parse.urlsplit(body["webhook"])
    assert webhook.path == "/webhooks/replicate"
    assert urllib.parse.parse_qs(webhook.query) == {
        "x": ["1"],
        "job_id": [str(JOB_ID)],
        "idx": ["0"],
    }


async def test_submit_to_a_version_posts_it_to_the_generic_endpoint():
    """Without a model the version goes in the body of ``POST /v1/predictions``."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(201, json=prediction_json())

    async with replicate(handler, model=None, version="v123") as provider:
        await provider.submit(request())

    (sent,) = seen
    assert sent.url == f"{BASE}/v1/predictions"
    assert json.loads(sent.content)["version"] == "v123"


async def test_submit_without_a_webhook_url_sends_no_webhook():
    """No webhook URL configured means Replicate gets no webhook fields at all."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(201, json=prediction_json())

    async with replicate(handler) as provider:
        await provider.submit(request(webhook_url=None))

    body = json.loads(seen[0].content)
    assert "webhook" not in body
    assert "webhook_events_filter" not in body


async def test_get_and_cancel_use_the_prediction_paths():
    """``get`` reads and ``cancel`` posts to the prediction's own URLs, with auth."""
    seen: list[tuple[str, str, str | None]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.method, str(req.url), req.headers.get("authorization")))
        return httpx.Response(200, json=prediction_json(id="abc", status="canceled"))

    async with replicate(handler) as provider:
        got = await provider.get("abc")
        await provider.cancel("abc")

    assert got == Prediction(id="abc", status=PredictionStatus.CANCELED)
    auth = f"Bearer {TOKEN}"
    assert seen == [
        ("GET", f"{BASE}/v1/predictions/abc", auth),
        ("POST", f"{BASE}/v1/predictions/abc/cancel", auth),
    ]


async def test_cancelling_a_finished_prediction_is_not_an_error():
    """Replicate answers 200 with the finished prediction; cancel just returns."""
    handler = answer(200, prediction_json(status="succeeded", output=["https://x/0.png"]))
    async with replicate(handler) as provider:
        assert await provider.cancel("pred123") is None


async def test_an_id_that_could_escape_the_path_is_refused_before_any_request():
    """A stored id is data; one shaped like a path must not become a request."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=prediction_json())

    async with replicate(handler) as provider:
        with pytest.raises(ProviderRejected, match="prediction id"):
            await provider.get("../models/owner/name")
    assert seen == []


@pytest.mark.parametrize("status", list(PredictionStatus))
async def test_every_replicate_status_is_parsed(status: PredictionStatus):
    """Each of Replicate's six statuses maps to the same-named `PredictionStatus`."""
    async with replicate(answer(200, prediction_json(status=status.value))) as provider:
        assert (await provider.get("pred123")).status is status


def test_only_finished_statuses_are_terminal():
    """Polling stops at succeeded, failed, canceled and aborted, never before."""
    assert {s for s in PredictionStatus if s.terminal} == {
        PredictionStatus.SUCCEEDED,
        PredictionStatus.FAILED,
        PredictionStatus.CANCELED,
        PredictionStatus.ABORTED,
    }


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (None, ()),
        ("https://cdn.test/0.png", ("https://cdn.test/0.png",)),
        (
            ["https://cdn.test/0.png", "https://cdn.test/1.png"],
            ("https://cdn.test/0.png", "https://cdn.test/1.png"),
        ),
        ([], ()),
    ],
)
async def test_output_may_be_null_a_url_or_a_list_of_urls(output: Any, expected: tuple[str, ...]):
    """All three output shapes Replicate uses become a tuple of URLs."""
    body = prediction_json(status="succeeded", output=output)
    async with replicate(answer(200, body)) as provider:
        assert (await provider.get("pred123")).output == expected


async def test_a_failed_predictions_error_is_redacted_and_short():
    """Model errors may quote tokens and signed URLs; the stored error keeps neither."""
    error = (
        f"boom with {TOKEN} while fetching https://user:hunter2@weights.test/m.bin?sig=abc123 "
        + "x" * 500
    )
    body = prediction_json(status="failed", error=error)
    async with replicate(answer(200, body)) as provider:
        got = await provider.get("pred123")

    assert got.status is PredictionStatus.FAILED
    assert got.error is not None
    assert got.error.startswith("boom with")
    assert TOKEN not in got.error
    assert "hunter2" not in got.error
    assert "abc123" not in got.error
    assert len(got.error) <= 200


def raising(exc: Exception) -> Handler:
    def handler(_request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("handler", "expected", "status_code"),
    [
        (raising(httpx.ConnectError("connection refused")), ProviderUnreachable, None),
        (raising(httpx.ReadTimeout("read timed out")), ProviderUnavailable, None),
        (answer(500, {"detail": "oops"}), ProviderUnavailable, 500),
        (answer(503, b"<html>maintenance</html>"), ProviderUnavailable, 503),
        (answer(408, b""), ProviderUnavailable, 408),
        (answer(401, {"detail": "Unauthenticated"}), ProviderRejected, 401),
        (answer(422, {"detail": "Invalid input"}), ProviderRejected, 422),
        (answer(404, {"detail": "Not found."}), ProviderRejected, 404),
    ],
    ids=["connect", "read-timeout", "500", "503", "408", "401", "422", "404"],
)
async def test_transport_and_http_failures_map_to_retryable_or_not(
    handler: Handler, expected: type[ProviderError], status_code: int | None
):
    """Transport errors, timeouts and 5xx may be retried; other 4xx may not."""
    async with replicate(handler) as provider:
        with pytest.raises(expected) as caught:
            await provider.get("pred123")
    error = caught.value
    assert type(error) is expected
    assert isinstance(error, ProviderUnavailable | ProviderRejected)
    assert error.status_code == status_code


async def test_a_timeout_keeps_the_httpx_exception_as_its_cause():
    """The mapped error is raised from the original, so tracebacks keep the detail."""
    original = httpx.ReadTimeout("read timed out")
    async with replicate(raising(original)) as provider:
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.submit(request())
    assert caught.value.__cause__ is original


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), ("0.5", 0.5), (None, None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)
async def test_429_is_rate_limited_with_the_servers_retry_after(
    retry_after: str | None, expected: float | None
):
    """429 is a retryable `ProviderRateLimited` carrying Retry-After in seconds when numeric."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    async with replicate(answer(429, {"detail": "throttled"}, headers=headers)) as provider:
        with pytest.raises(ProviderRateLimited) as caught:
            await provider.submit(request())
    assert isinstance(caught.value, ProviderUnavailable)
    assert caught.value.retry_after == expected
    assert caught.value.status_code == 429


@pytest.mark.parametrize(
    "handler",
    [
        answer(200, b"<html>not json</html>"),
        answer(200, b'{"id": "pred123", "sta'),
        answer(200, b"\xff\xfe\x00garbage"),
        answer(200, ["unexpected", "shape"]),
        answer(200, {"status": "succeeded"}),
        answer(200, prediction_json(id=42)),
        answer(200, prediction_json(status="exploded")),
        answer(200, prediction_json(status=None)),
        answer(200, prediction_json(status="succeeded", output={"image": "x"})),
        answer(200, prediction_json(status="succeeded", output=["ok", 3])),
        answer(200, prediction_json(webhook=["not", "a", "url"])),
        answer(302, b"", headers={"Location": "https://elsewhere.test/"}),
    ],
    ids=[
        "html",
        "truncated-json",
        "not-utf8",
        "json-list",
        "missing-id",
        "non-string-id",
        "unknown-status",
        "null-status",
        "dict-output",
        "non-url-in-output",
        "non-string-webhook",
        "redirect",
    ],
)
async def test_bodies_that_are_not_a_prediction_are_protocol_errors(handler: Handler):
    """Anything but a well-formed prediction is a `ProviderProtocolError`, never a guess."""
    async with replicate(handler) as provider:
        with pytest.raises(ProviderProtocolError):
            await provider.get("pred123")


def echoing(status: int) -> Handler:
    def handler(req: httpx.Request) -> httpx.Response:
        leak = f"{PROMPT} {req.headers['authorization']} {TOKEN}"
        if status == 200:
            return httpx.Response(200, content=leak.encode())
        return httpx.Response(status, json={"title": leak, "detail": f"bad input: {leak}"})

    return handler


@pytest.mark.parametrize(
    "handler",
    [
        echoing(200),
        echoing(401),
        echoing(422),
        echoing(429),
        echoing(500),
        raising(httpx.ConnectError(f"refused {TOKEN} {PROMPT}")),
        answer(200, {"id": f"{TOKEN}", "status": PROMPT}),
    ],
    ids=["non-json-echo", "401-echo", "422-echo", "429", "500", "transport-message", "status"],
)
async def test_exceptions_never_carry_the_token_or_the_prompt(handler: Handler):
    """Even when the provider echoes them back, neither secret reaches a message."""
    async with replicate(handler) as provider:
        with pytest.raises(ProviderError) as caught:
            await provider.submit(request())
    for text in (str(caught.value), repr(caught.value), caught.value.summary):
        assert TOKEN not in text
        assert PROMPT not in text
        assert "SuperSecret" not in text
    assert "replicate" in caught.value.summary


def listing(results: list[dict[str, Any]], next_url: str | None) -> dict[str, Any]:
    return {"previous": None, "next": next_url, "results": results}


def tagged(prediction_id: str, job_id: uuid.UUID) -> dict[str, Any]:
    return prediction_json(
        id=prediction_id,
        status="processing",
        webhook=f"https://daemon.test/webhooks/replicate?job_id={job_id}",
    )


async def test_find_for_job_follows_cursors_and_matches_the_webhook_job_id():
    """The prediction tagged with the job id is found on a later page, unrelated ones skipped."""
    other_job = uuid.uuid4()
    pages = {
        f"{BASE}/v1/predictions": listing(
            [
                tagged("other", other_job),
                prediction_json(id="foreign", output={"text": "not ours"}, webhook=None),
                prediction_json(id="hookless"),
            ],
            f"{BASE}/v1/predictions?cursor=abc",
        ),
        f"{BASE}/v1/predictions?cursor=abc": listing(
            [tagged("ours", JOB_ID), tagged("older-duplicate", JOB_ID)], None
        ),
    }
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(str(req.url))
        assert req.headers["authorization"] == f"Bearer {TOKEN}"
        return httpx.Response(200, json=pages[str(req.url)])

    async with replicate(handler) as provider:
        found = await provider.find_for_job(JOB_ID)

    assert found is not None
    assert found.id == "ours"
    assert found.status is PredictionStatus.PROCESSING
    assert seen == list(pages)


async def test_find_for_job_gives_up_after_the_page_budget():
    """An endless listing is read for at most ``find_max_pages`` pages, then ``None``."""
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(str(req.url))
        page = len(seen)
        return httpx.Response(
            200,
            json=listing(
                [tagged(f"p{page}", uuid.uuid4())], f"{BASE}/v1/predictions?cursor={page}"
            ),
        )

    async with replicate(handler, find_max_pages=3) as provider:
        assert await provider.find_for_job(JOB_ID) is None
    assert len(seen) == 3


async def test_find_for_job_returns_none_when_the_listing_ends_without_a_match():
    """Predictions submitted without a webhook cannot be matched; the answer is ``None``."""
    body = listing([prediction_json(id="a"), prediction_json(id="b")], None)
    async with replicate(answer(200, body)) as provider:
        assert await provider.find_for_job(JOB_ID) is None


async def test_find_for_job_never_follows_a_cursor_to_another_host():
    """The bearer token goes wherever the cursor points, so a foreign ``next`` is refused."""
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.host)
        return httpx.Response(200, json=listing([], "https://evil.test/v1/predictions?c=1"))

    async with replicate(handler) as provider:
        with pytest.raises(ProviderProtocolError):
            await provider.find_for_job(JOB_ID)
    assert seen == ["api.replicate.test"]


async def test_find_for_job_maps_a_broken_listing_to_a_protocol_error():
    """A listing without ``results`` is a protocol error, like any other bad body."""
    async with replicate(answer(200, {"next": None})) as provider:
        with pytest.raises(ProviderProtocolError):
            await provider.find_for_job(JOB_ID)


@pytest.mark.parametrize(
    "options",
    [{"model": None}, {"model": "owner/name", "version": "v1"}, {"model": "no-slash"}],
    ids=["neither", "both", "bad-model"],
)
async def test_the_adapter_needs_exactly_one_well_formed_target(options: dict[str, Any]):
    """Model and version are alternatives; a misconfiguration fails at construction."""
    with pytest.raises(ValueError, match="model"):
        async with replicate(answer(), **options):
            pass


async def test_the_adapters_repr_never_shows_the_token():
    """Logging the provider object must not leak its credentials."""
    async with replicate(answer()) as provider:
        assert TOKEN not in repr(provider)
        assert "owner/name" in repr(provider)


@pytest.mark.parametrize("params", [{"prompt": "other"}, {"num_outputs": 30}])
def test_params_cannot_override_what_the_user_paid_for(params: dict[str, object]):
    """Extra model input may not replace the prompt or the charged number of outputs."""
    with pytest.raises(ValueError, match="params"):
        request(params=params)


@pytest.mark.parametrize("num_outputs", [0, 31])
def test_num_outputs_is_bounded(num_outputs: int):
    """Replicate accepts 1..30 outputs; anything else is refused before any request."""
    with pytest.raises(ValueError, match="num_outputs"):
        request(num_outputs=num_outputs)


def test_request_repr_and_params_hide_the_prompt_and_stay_immutable():
    """A logged request never shows the prompt, and its params cannot be mutated later."""
    params = {"seed": 1}
    made = request(params=params)
    params["seed"] = 2
    assert PROMPT not in repr(made)
    assert made.params == {"seed": 1}
    with pytest.raises(TypeError):
        made.params["seed"] = 3  # type: ignore[index]


def test_the_front_door_exports_exactly_the_sorted_public_names():
    """``__all__`` is sorted and matches the public names the package binds."""
    public = {name for name in vars(providers) if not name.startswith("_")}
    assert providers.__all__ == sorted(providers.__all__)
    assert set(providers.__all__) == public


@pytest.mark.parametrize("bad_id", ["pred.v1", "../x", "a b", ""])
async def test_a_prediction_id_we_could_never_send_back_is_a_protocol_error(bad_id: str):
    """An id unusable for get/cancel is refused where it enters, not where it would crash later."""
    async with replicate(answer(201, prediction_json(id=bad_id))) as provider:
        with pytest.raises(ProviderProtocolError):
            await provider.submit(request())
        with pytest.raises(ProviderProtocolError):
            provider.parse_webhook(json.dumps(prediction_json(id=bad_id)).encode())
