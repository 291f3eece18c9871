"""The simulator against the providers' published contracts, over real loopback HTTP.

Replicate: the official ``replicate`` Python client must parse every prediction the simulator
returns (it refuses, for one, a ``version`` that is not a string), and every response must
carry the fields ``schemas_prediction_response`` and the paginated listing of Replicate's
OpenAPI document (``https://api.replicate.com/openapi.json``) require, with their types. The
tables below are that document written out, so a drift in the simulator fails here.

KIE: ``createTask`` and ``recordInfo`` answers must be the envelopes docs.kie.ai documents
(``{"code", "msg", "data"}``, errors as codes on HTTP 200), with the task record's fields
and types as its "get task detail" page lists them.

The ``replicate`` client is synchronous, so its calls run in a worker thread while the
simulator serves from the test's Trio loop.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import httpx
import pytest
import replicate
import trio
from replicate.exceptions import ReplicateError
from replicate.prediction import Prediction as ReplicatePrediction

from orchestrator.core import PredictionRequest, PredictionStatus
from orchestrator.providers import KieProvider, ReplicateProvider
from orchestrator.simulator import SimulatorConfig, serve_simulator

from .test_simulator_webhooks import Receiver, world

T = TypeVar("T")
TOKEN: Final = "sim-token"  # noqa: S105 -- a fake for the loopback simulator
VERSION_ID: Final = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
HEX64: Final = re.compile(r"[0-9a-f]{64}")

# --- Replicate's OpenAPI schema, written out ---------------------------------------------


def _is_datetime(value: object) -> bool:
    """OpenAPI's ``format: date-time``: RFC 3339, with a zone."""
    if not isinstance(value, str):
        return False
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return False
    return moment.tzinfo is not None


def _is_string(value: object) -> bool:
    return isinstance(value, str)


def _is_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _is_object(value: object) -> bool:
    return isinstance(value, dict)


def _is_nullable_string(value: object) -> bool:
    return value is None or isinstance(value, str)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _anything(_value: object) -> bool:
    return True


_Check = Callable[[object], bool]
STATUSES: Final = ("starting", "processing", "succeeded", "failed", "canceled", "aborted")

# schemas_prediction_response: its "required" list, then the optional properties it types.
PREDICTION_REQUIRED: Final[Mapping[str, _Check]] = {
    "id": _is_string,
    "model": _is_string,
    "version": _is_string,  # oneOf a version id or "hidden": a string either way
    "input": _is_object,
    "output": _anything,  # "any JSON-serializable value", null included
    "data_removed": lambda value: isinstance(value, bool),
    "error": _is_nullable_string,
    "status": lambda value: value in STATUSES,
    "created_at": _is_datetime,
    "urls": _is_object,
}
PREDICTION_OPTIONAL: Final[Mapping[str, _Check]] = {
    "completed_at": _is_datetime,  # type string, not nullable: absent until it happens
    "started_at": _is_datetime,
    "deadline": _is_datetime,
    "deployment": _is_string,
    "logs": _is_string,
    "metrics": _is_object,
    "source": lambda value: value in {"web", "api"},
}
URLS_REQUIRED: Final = ("web", "get", "cancel")
URLS_OPTIONAL: Final = ("stream",)
METRICS_NUMBERS: Final = ("total_time", "predict_time")
# schemas_paginated_prediction_response (and predictions.list's own response schema).
PAGE_FIELDS: Final[Mapping[str, _Check]] = {
    "next": lambda value: value is None or _is_uri(value),
    "previous": lambda value: value is None or _is_uri(value),
    "results": lambda value: isinstance(value, list),
}


def prediction_schema_errors(body: object) -> list[str]:
    """Every way ``body`` breaks ``schemas_prediction_response``; empty when it conforms."""
    if not isinstance(body, dict):
        return ["not an object"]
    errors = [f"missing {name}" for name in PREDICTION_REQUIRED if name not in body]
    checks = {**PREDICTION_REQUIRED, **PREDICTION_OPTIONAL}
    errors += [
        f"{name}={body[name]!r} has the wrong type"
        for name, check in checks.items()
        if name in body and not check(body[name])
    ]
    urls = body.get("urls")
    if isinstance(urls, dict):
        errors += [f"missing urls.{name}" for name in URLS_REQUIRED if name not in urls]
        errors += [
            f"urls.{name} is not a URI"
            for name in (*URLS_REQUIRED, *URLS_OPTIONAL)
            if name in urls and not _is_uri(urls[name])
        ]
    metrics = body.get("metrics")
    if isinstance(metrics, dict):
        errors += [
            f"metrics.{name} is not a number"
            for name in METRICS_NUMBERS
            if name in metrics and not _is_number(metrics[name])
        ]
    return errors


def page_schema_errors(body: object) -> list[str]:
    if not isinstance(body, dict):
        return ["not an object"]
    errors = [
        f"{name} is missing or has the wrong type"
        for name, check in PAGE_FIELDS.items()
        if name not in body or not check(body[name])
    ]
    for index, entry in enumerate(body.get("results") or []):
        errors += [f"results[{index}]: {error}" for error in prediction_schema_errors(entry)]
    return errors


def assert_prediction_schema(body: object) -> dict[str, Any]:
    assert prediction_schema_errors(body) == []
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"version": None}, "version=None has the wrong type"),
        ({"started_at": None}, "started_at=None has the wrong type"),
        ({"created_at": "yesterday"}, "created_at='yesterday' has the wrong type"),
        ({"status": "exploded"}, "status='exploded' has the wrong type"),
        ({"urls": {"get": "http://x/1", "cancel": "http://x/1/cancel"}}, "missing urls.web"),
        ({"metrics": {"predict_time": "3s"}}, "metrics.predict_time is not a number"),
    ],
)
def test_the_schema_table_catches_the_drifts_it_exists_for(
    change: dict[str, object], expected: str
):
    """The checker flags a null ``version`` (what broke the client) and its siblings."""
    good = {
        "id": "abc",
        "model": "o/n",
        "version": VERSION_ID,
        "input": {},
        "output": None,
        "data_removed": False,
        "error": None,
        "status": "starting",
        "created_at": "2023-09-08T16:19:34.765994Z",
        "urls": {"web": "https://r/p/abc", "get": "https://r/abc", "cancel": "https://r/c"},
    }
    assert prediction_schema_errors(good) == []
    assert expected in prediction_schema_errors(good | change)
    assert "missing data_removed" in prediction_schema_errors(
        {k: v for k, v in good.items() if k != "data_removed"}
    )


# --- Replicate, through the official client ---------------------------------------------


@contextlib.asynccontextmanager
async def simulated(**config: Any) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    settings: dict[str, Any] = {"latency": (0.05, 0.1), "seed": 7, "token": TOKEN} | config
    async with trio.open_nursery() as nursery:
        base_url: str = await nursery.start(serve_simulator, SimulatorConfig(**settings))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(trust_env=False, timeout=5.0, headers=headers) as client:
            yield base_url, client
        nursery.cancel_scope.cancel()


def official_client(base_url: str, token: str = TOKEN) -> replicate.Client:
    client = replicate.Client(api_token=token, base_url=base_url)
    client.poll_interval = 0.01
    return client


async def in_thread(call: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(call)


def _wall(moment: str | None) -> datetime:
    assert moment is not None
    return datetime.fromisoformat(moment)


async def test_the_official_client_creates_by_model_and_waits_to_success():
    """``version`` is a string for a model-created prediction; the client's wait ends it."""
    with trio.fail_after(10):
        async with simulated() as (base, http):
            client = official_client(base)
            before = datetime.now(UTC)
            prediction = await in_thread(
                lambda: client.predictions.create(
                    model="sim/image", input={"prompt": "a cat", "num_outputs": 2}
                )
            )
            assert prediction.status == "starting"
            assert prediction.model == "sim/image"
            assert HEX64.fullmatch(prediction.version)
            assert prediction.input == {"prompt": "a cat", "num_outputs": 2}
            assert prediction.output is None
            assert prediction.started_at is None
            assert prediction.completed_at is None
            assert prediction.urls is not None
            assert prediction.urls["get"] == f"{base}/v1/predictions/{prediction.id}"
            assert prediction.urls["cancel"] == f"{base}/v1/predictions/{prediction.id}/cancel"

            await in_thread(prediction.wait)
            downloads = [await http.get(url) for url in prediction.output]
            again = await in_thread(
                lambda: client.predictions.create(model="sim/image", input={"prompt": "a dog"})
            )

    assert prediction.status == "succeeded"
    assert prediction.error is None
    assert [r.headers["content-type"] for r in downloads] == ["image/png"] * 2
    created, started, completed = map(
        _wall, (prediction.created_at, prediction.started_at, prediction.completed_at)
    )
    assert before.replace(microsecond=0) <= created <= started <= completed
    assert prediction.metrics is not None
    assert prediction.metrics["predict_time"] == pytest.approx(
        (completed - started).total_seconds(), abs=1e-3
    )
    assert prediction.metrics["total_time"] == pytest.approx(
        (completed - created).total_seconds(), abs=1e-3
    )
    assert again.version == prediction.version  # one model, one version id


@pytest.mark.parametrize(
    ("version", "model"),
    [
        (VERSION_ID, "simulator/model"),
        (f"sim/image:{VERSION_ID}", "sim/image"),
    ],
)
async def test_the_official_client_creates_by_version(version: str, model: str):
    """A bare version id, or ``owner/name:id`` split into the model and the id."""
    with trio.fail_after(10):
        async with simulated() as (base, _http):
            client = official_client(base)
            prediction = await in_thread(
                lambda: client.predictions.create(version=version, input={"prompt": "a cat"})
            )
            fetched = await in_thread(lambda: client.predictions.get(prediction.id))
    assert (prediction.version, prediction.model) == (VERSION_ID, model)
    assert (fetched.id, fetched.version, fetched.model) == (prediction.id, VERSION_ID, model)


async def test_the_official_client_reloads_and_cancels():
    """``reload`` follows a hung prediction to processing; ``cancel`` ends it canceled."""
    with trio.fail_after(10):
        async with simulated() as (base, _http):
            client = official_client(base)
            hung = await in_thread(
                lambda: client.predictions.create(
                    model="sim/image", input={"prompt": "a cat", "simulate": "hang"}
                )
            )
            while hung.status != "processing":
                await trio.sleep(0.01)
                await in_thread(hung.reload)
            await in_thread(hung.cancel)
            by_id = await in_thread(lambda: client.predictions.cancel(hung.id))
            fetched = await in_thread(lambda: client.predictions.get(hung.id))

    assert hung.status == "canceled"
    assert hung.started_at is not None
    assert hung.completed_at is not None
    assert hung.output is None
    assert by_id.status == fetched.status == "canceled"
    assert by_id.completed_at == hung.completed_at  # a second cancel changes nothing


async def test_the_official_client_pages_through_the_listing():
    """Newest first; ``next`` leads on, and a later page's ``previous`` leads back."""
    with trio.fail_after(10):
        async with simulated(page_size=2) as (base, _http):
            client = official_client(base)
            created = [
                (
                    await in_thread(
                        lambda n=n: client.predictions.create(
                            model="sim/image", input={"prompt": f"cat {n}"}
                        )
                    )
                ).id
                for n in range(5)
            ]
            first = await in_thread(client.predictions.list)
            pages = [first]
            while pages[-1].next is not None:
                cursor = pages[-1].next
                pages.append(await in_thread(lambda cursor=cursor: client.predictions.list(cursor)))
            assert pages[1].previous is not None
            back = await in_thread(lambda: client.predictions.list(pages[1].previous))

    assert [len(page.results) for page in pages] == [2, 2, 1]
    assert [p.id for page in pages for p in page.results] == created[::-1]
    assert first.previous is None
    assert pages[-1].next is None
    assert [p.id for p in back.results] == [p.id for p in first.results]
    assert all(p.urls and p.urls["web"].endswith(f"/p/{p.id}") for p in first.results)


async def test_the_official_client_reports_a_failure_and_a_wrong_token():
    """A failed prediction carries its error; a bad token is a ReplicateError with status 401."""
    with trio.fail_after(10):
        async with simulated() as (base, _http):
            client = official_client(base)
            failed = await in_thread(
                lambda: client.predictions.create(
                    model="sim/image", input={"prompt": "a cat", "simulate": "fail"}
                )
            )
            await in_thread(failed.wait)
            outsider = official_client(base, token="wrong")
            with pytest.raises(ReplicateError) as caught:
                await in_thread(lambda: outsider.predictions.get(failed.id))

    assert failed.status == "failed"
    assert failed.error is not None
    assert "CUDA out of memory" in failed.error
    assert failed.output is None
    assert caught.value.status == 401
    assert caught.value.detail


async def test_every_replicate_response_conforms_to_the_published_schema():
    """Create (both routes), get, list and cancel, read raw, against the tables above."""
    with trio.fail_after(10):
        async with simulated(page_size=2) as (base, http):
            by_model = await http.post(
                f"{base}/v1/models/sim/image/predictions",
                json={"input": {"prompt": "a cat", "simulate": "hang"}},
            )
            by_version = await http.post(
                f"{base}/v1/predictions",
                json={"version": VERSION_ID, "input": {"prompt": "a cat", "simulate": "fail"}},
            )
            succeeding = await http.post(
                f"{base}/v1/models/sim/image/predictions",
                json={"input": {"prompt": "a cat", "simulate": "succeed"}},
            )
            hung_id = by_model.json()["id"]
            starting = await http.get(f"{base}/v1/predictions/{hung_id}")
            await trio.sleep(0.2)  # the others end, the hung one runs
            running = await http.get(f"{base}/v1/predictions/{hung_id}")
            failed = await http.get(f"{base}/v1/predictions/{by_version.json()['id']}")
            succeeded = await http.get(f"{base}/v1/predictions/{succeeding.json()['id']}")
            first_page = await http.get(f"{base}/v1/predictions")
            second_page = await http.get(first_page.json()["next"])
            canceled = await http.post(f"{base}/v1/predictions/{hung_id}/cancel")

    assert [r.status_code for r in (by_model, by_version, succeeding)] == [201] * 3
    for response in (by_model, by_version, succeeding, starting, running, failed, succeeded):
        assert response.headers["content-type"].startswith("application/json")
        assert_prediction_schema(response.json())
    assert page_schema_errors(first_page.json()) == []
    assert page_schema_errors(second_page.json()) == []
    assert canceled.status_code == 200
    body = assert_prediction_schema(canceled.json())

    assert body["status"] == "canceled"
    assert {"started_at", "completed_at"} <= body.keys()
    assert {"predict_time", "total_time"} <= body["metrics"].keys()
    assert "started_at" not in by_model.json()
    assert running.json()["status"] == "processing"
    assert "completed_at" not in running.json()
    assert failed.json()["status"] == "failed"
    assert isinstance(failed.json()["error"], str)
    assert failed.json()["output"] is None
    assert succeeded.json()["output"] == [f"{base}/files/{succeeding.json()['id']}/0.png"]
    assert second_page.json()["previous"] is not None


# --- KIE's documented envelopes -----------------------------------------------------------

KIE_STATES: Final = ("waiting", "queuing", "generating", "success", "fail")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_millis_or_null(value: object) -> bool:
    return value is None or _is_int(value)


# The task record of GET /api/v1/jobs/recordInfo, as docs.kie.ai lists and exemplifies it.
KIE_RECORD: Final[Mapping[str, _Check]] = {
    "taskId": _is_string,
    "model": _is_string,
    "state": lambda value: value in KIE_STATES,
    "param": _is_string,  # the original request, as a JSON string
    "resultJson": _is_string,  # {"resultUrls": [...]} as a JSON string once it succeeded
    "failCode": _is_string,
    "failMsg": _is_string,
    "costTime": _is_millis_or_null,
    "completeTime": _is_millis_or_null,
    "createTime": _is_int,
    "updateTime": _is_int,
}


def kie_envelope(response: httpx.Response) -> dict[str, Any]:
    """The envelope's three fields, with their types; errors ride on HTTP 200 as codes."""
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "msg", "data"}
    assert _is_int(body["code"])
    assert isinstance(body["msg"], str)
    return body


def kie_record(response: httpx.Response) -> dict[str, Any]:
    envelope = kie_envelope(response)
    assert (envelope["code"], envelope["msg"]) == (200, "success")
    record = envelope["data"]
    assert set(record) == set(KIE_RECORD)
    assert [name for name, check in KIE_RECORD.items() if not check(record[name])] == []
    return record


async def test_kie_create_and_record_info_answer_the_documented_envelopes():
    """createTask's ``data`` is ``{"taskId"}``; recordInfo's is the typed task record."""
    callback = "http://127.0.0.1:9/webhooks/kie?job_id=x"
    with trio.fail_after(10):
        async with simulated(api="kie") as (base, http):
            before = round(datetime.now(UTC).timestamp() * 1000)
            created = await http.post(
                f"{base}/api/v1/jobs/createTask",
                json={"model": "sim/image", "input": {"prompt": "a cat"}, "callBackUrl": callback},
            )
            failing = await http.post(
                f"{base}/api/v1/jobs/createTask",
                json={"model": "sim/image", "input": {"prompt": "a cat", "simulate": "fail"}},
            )
            task_id = kie_envelope(created)["data"]["taskId"]
            info = f"{base}/api/v1/jobs/recordInfo"
            waiting = await http.get(info, params={"taskId": task_id})
            await trio.sleep(0.2)
            done = await http.get(info, params={"taskId": task_id})
            failed = await http.get(info, params={"taskId": failing.json()["data"]["taskId"]})
            provider = KieProvider(http, base_url=base, token=TOKEN, model="sim/image")
            parsed = await provider.get(task_id)

    envelope = kie_envelope(created)
    assert (envelope["code"], envelope["msg"]) == (200, "success")
    assert set(envelope["data"]) == {"taskId"}
    assert isinstance(task_id, str)
    assert task_id

    early = kie_record(waiting)
    assert early["state"] in {"waiting", "generating"}
    assert (early["resultJson"], early["failCode"], early["failMsg"]) == ("", "", "")
    assert (early["costTime"], early["completeTime"]) == (None, None)
    assert json.loads(early["param"]) == {
        "model": "sim/image",
        "input": {"prompt": "a cat"},
        "callBackUrl": callback,
    }

    record = kie_record(done)
    assert record["state"] == "success"
    assert json.loads(record["resultJson"]) == {"resultUrls": [f"{base}/files/{task_id}/0.png"]}
    assert before <= record["createTime"] <= record["completeTime"] == record["updateTime"]
    assert record["costTime"] <= record["completeTime"] - record["createTime"]
    assert parsed.status == PredictionStatus.SUCCEEDED
    assert parsed.output == (f"{base}/files/{task_id}/0.png",)

    broken = kie_record(failed)
    assert broken["state"] == "fail"
    assert broken["failCode"]
    assert "CUDA out of memory" in broken["failMsg"]
    assert broken["resultJson"] == ""


async def test_kie_errors_are_codes_inside_an_http_200_envelope():
    """Unknown task 404, bad token 401, invalid request 422: documented codes, ``data`` null."""
    with trio.fail_after(10):
        async with simulated(api="kie") as (base, http):
            unknown = await http.get(
                f"{base}/api/v1/jobs/recordInfo", params={"taskId": "nosuchtask"}
            )
            invalid = await http.post(f"{base}/api/v1/jobs/createTask", json={"input": {}})
            unauthorized = await http.get(
                f"{base}/api/v1/jobs/recordInfo",
                params={"taskId": "nosuchtask"},
                headers={"Authorization": "Bearer wrong"},
            )

    for response, code in ((unknown, 404), (invalid, 422), (unauthorized, 401)):
        envelope = kie_envelope(response)
        assert envelope["code"] == code
        assert envelope["msg"]
        assert envelope["data"] is None


async def test_the_adapters_still_read_the_simulator():
    """Our own Replicate adapter, by model and by version, through the corrected JSON."""
    request = PredictionRequest(
        job_id=uuid.uuid4(), prompt="a cat", params={}, num_outputs=1, webhook_url=None
    )
    with trio.fail_after(10):
        async with simulated() as (base, http):
            for target in ({"model": "sim/image"}, {"version": VERSION_ID}):
                provider = ReplicateProvider(http, base_url=base, token=TOKEN, **target)
                submitted = await provider.submit(request)
                while (got := await provider.get(submitted.id)).status != "succeeded":
                    await trio.sleep(0.01)
                assert got.output == (f"{base}/files/{submitted.id}/0.png",)
            page, _cursor = await provider.list_page()
    assert len(page) == 2


# --- webhook bodies ----------------------------------------------------------------------


async def test_replicate_webhooks_carry_the_same_conforming_prediction():
    """Replicate POSTs what a GET returns: start and completed bodies pass the schema."""
    receiver = Receiver()
    with trio.fail_after(10):
        async with world(receiver) as (base, hook, client):
            created = await client.post(
                f"{base}/v1/models/sim/image/predictions",
                json={"input": {"prompt": "a cat"}, "webhook": f"{hook}/hook"},
            )
            start, completed = await receiver.next(), await receiver.next()

    assert created.status_code == 201
    bodies = [assert_prediction_schema(delivery.json()) for delivery in (start, completed)]
    assert [body["status"] for body in bodies] == ["processing", "succeeded"]
    assert "completed_at" not in bodies[0]
    parsed = [ReplicatePrediction.parse_obj(body) for body in bodies]  # the client's own model
    assert {prediction.id for prediction in parsed} == {created.json()["id"]}
    assert parsed[1].output == [f"{base}/files/{created.json()['id']}/0.png"]


async def test_kie_callbacks_carry_the_documented_record():
    """A KIE callback is the recordInfo envelope; a failed task's code is 501."""
    receiver = Receiver()
    with trio.fail_after(10):
        async with world(receiver, api="kie") as (base, hook, client):
            for simulate in ("succeed", "fail"):
                await client.post(
                    f"{base}/api/v1/jobs/createTask",
                    json={
                        "model": "sim/image",
                        "input": {"prompt": "a cat", "simulate": simulate},
                        "callBackUrl": f"{hook}/hook",
                    },
                )
            deliveries = [await receiver.next(), await receiver.next()]

    envelopes = sorted((delivery.json() for delivery in deliveries), key=lambda e: e["code"])
    assert [(e["code"], e["msg"]) for e in envelopes] == [
        (200, "success"),
        (501, "Generation failed"),
    ]
    for envelope in envelopes:
        record = envelope["data"]
        assert set(record) == set(KIE_RECORD)
        assert [name for name, check in KIE_RECORD.items() if not check(record[name])] == []
    assert [e["data"]["state"] for e in envelopes] == ["success", "fail"]
