"""Replicate's or KIE's HTTP API as a raw ASGI app over `SimulatorState`.

No framework: a handful of routes, and being raw keeps every status code, header and byte of
each response, including the deliberately broken ones, under the simulator's control. The
same module renders webhook bodies, so a delivery reports a prediction exactly as a GET would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Final

import attrs

from orchestrator.asgi import lifespan, read_body

from ._inputs import ImageInputs, InputFetch, InvalidPredictionInput
from ._state import (
    Fault,
    FaultKind,
    SimulatedPrediction,
    SimulatorState,
)
from ._wire import WireStatus

if TYPE_CHECKING:  # annotations only: the CLI need not load hypercorn to parse its flags
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

MAX_BODY: Final = 1 << 20
_FILE_NAME: Final = re.compile(r"(\d{1,3})\.png")
_DEFAULT_MODEL: Final = "simulator/model"
_VERSION_ID: Final = re.compile(r"[0-9a-f]{64}")
_WEBHOOK_EVENTS: Final = frozenset({"start", "output", "logs", "completed"})


@attrs.frozen
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _json(status: int, payload: object, *headers: tuple[bytes, bytes]) -> _Response:
    return _Response(status, json.dumps(payload).encode(), headers=headers)


_SERVER_ERROR: Final = 500
_TITLES: Final = {401: "Unauthenticated", 404: "Not found", 413: "Request too large"}


def _problem(status: int, detail: str) -> _Response:
    """Replicate's RFC 7807 problem details: ``title``, ``detail`` and ``status``."""
    fallback = "Invalid request" if status < _SERVER_ERROR else "Internal server error"
    title = _TITLES.get(status, fallback)
    return _json(status, {"title": title, "detail": detail, "status": status})


_NOT_FOUND: Final = _problem(404, "Not found.")
_KIE_STATES: Final = {
    WireStatus.STARTING: "waiting",
    WireStatus.PROCESSING: "generating",
    WireStatus.SUCCEEDED: "success",
}
_KIE_GENERATION_FAILED: Final = 501
_HTTP_UNAVAILABLE: Final = 503


def _kie(code: int, msg: str, data: object = None, *headers: tuple[bytes, bytes]) -> _Response:
    """KIE's envelope; its errors ride on HTTP 200 with the real status as ``code``."""
    return _json(200, {"code": code, "msg": msg, "data": data}, *headers)


class _BadRequestError(Exception):
    """Answered as 422 with ``detail``, as Replicate does for invalid requests."""


_Handler = Callable[[bytes], _Response]


class SimulatorApp:
    """ASGI entry point; one instance per `SimulatorState`.

    Args:
        state: Holds the predictions; shared with whoever wants to inspect it.
        wall_clock: Unix seconds, read once to turn monotonic times into timestamps.
    """

    def __init__(self, state: SimulatorState, *, wall_clock: Callable[[], float]) -> None:
        self._state = state
        self._wall_offset = wall_clock() - state.now()

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await read_body(receive, MAX_BODY)
        if body is None:
            response = _problem(413, "Request body too large.")
        else:
            response = self._handle(scope, body)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (b"content-type", response.content_type.encode()),
                    (b"content-length", str(len(response.body)).encode()),
                    *response.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body, "more_body": False})

    def _handle(self, scope: HTTPScope, body: bytes) -> _Response:
        """Answer one request whose body has been read; synchronous, so atomic under Trio."""
        method = scope["method"]
        parts = tuple(part for part in scope["path"].split("/") if part)
        base = _base_url(scope)
        match method, parts:
            case "GET", ("_sim", *what):
                return self._introspect(what)
            case "GET", ("files", prediction_id, file_name):
                return self._file(prediction_id, file_name)
        if self._state.config.api == "kie":
            return self._handle_kie(scope, body, method, parts, base)
        handler: _Handler | None = None
        match method, parts:
            case "POST", ("v1", "predictions"):
                handler = partial(self._create, base=base, model=None)
            case "POST", ("v1", "models", owner, name, "predictions"):
                handler = partial(self._create, base=base, model=f"{owner}/{name}")
            case "GET", ("v1", "predictions"):
                query = urllib.parse.parse_qs(scope["query_string"].decode("latin-1"))
                handler = partial(self._list, query=query, base=base)
            case "GET", ("v1", "predictions", prediction_id):
                handler = partial(self._found, self._state.get, prediction_id, base=base)
            case "POST", ("v1", "predictions", prediction_id, "cancel"):
                handler = partial(self._found, self._state.cancel, prediction_id, base=base)
        if handler is None:
            return _NOT_FOUND
        return self._api(scope, body, handler)

    def _introspect(self, what: list[str]) -> _Response:
        """``/_sim/...``: what tests read about the simulator, outside any provider's API."""
        match what:
            case ["stats"]:
                return _json(200, self._state.stats())
            case ["inputs"]:
                given = self._state.all_image_inputs()
                return _json(200, {"predictions": [_inputs_json(inputs) for inputs in given]})
            case ["inputs", prediction_id]:
                found = self._state.image_inputs(prediction_id)
                return _NOT_FOUND if found is None else _json(200, _inputs_json(found))
        return _NOT_FOUND

    def _handle_kie(
        self, scope: HTTPScope, body: bytes, method: str, parts: tuple[str, ...], base: str
    ) -> _Response:
        handler: _Handler | None = None
        match method, parts:
            case "POST", ("api", "v1", "jobs", "createTask"):
                handler = self._kie_create
            case "GET", ("api", "v1", "jobs", "recordInfo"):
                query = urllib.parse.parse_qs(scope["query_string"].decode("latin-1"))
                handler = partial(self._kie_record_info, query=query, base=base)
        if handler is None:
            return _NOT_FOUND
        return self._kie_api(scope, body, handler)

    def _authorized(self, scope: HTTPScope) -> bool:
        token = self._state.config.token
        if token is None:
            return True
        sent = _header(scope, b"authorization") or ""
        if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return True
        self._state.note_unauthorized()
        return False

    def _api(self, scope: HTTPScope, body: bytes, handler: _Handler) -> _Response:
        """Authenticate, maybe misbehave, then run the handler."""
        if not self._authorized(scope):
            return _problem(401, "You did not pass a valid authentication token")
        fault = self._state.draw_fault()
        if fault is not None and fault.kind is not FaultKind.MALFORMED:
            return self._failed(fault)
        try:
            response = handler(body)
        except _BadRequestError as exc:
            response = _problem(422, str(exc))
        if fault is not None:
            return _malformed(
                fault, response, {"id": "malformed", "status": "exploded", "output": None}
            )
        return response

    def _kie_api(self, scope: HTTPScope, body: bytes, handler: _Handler) -> _Response:
        """`_api` in KIE's dialect: errors are envelope codes, mostly on HTTP 200.

        A 503 still arrives as a bare HTTP 503, as from a gateway in front of KIE, so a
        client has to handle both layers.
        """
        if not self._authorized(scope):
            return _kie(401, "You do not have access permissions")
        fault = self._state.draw_fault()
        if fault is not None and fault.kind is FaultKind.RATE_LIMITED:
            retry_after = f"{self._state.config.retry_after:g}".encode()
            return _kie(429, "Rate limited", None, (b"retry-after", retry_after))
        if fault is not None and fault.kind is FaultKind.SERVER_ERROR:
            if fault.status_code == _HTTP_UNAVAILABLE:
                return _Response(fault.status_code, b"Service Unavailable", "text/plain")
            return _kie(fault.status_code, "Server error")
        try:
            response = handler(body)
        except _BadRequestError as exc:
            response = _kie(422, str(exc))
        if fault is not None:
            wrong = {"code": 200, "msg": "success", "data": {"taskId": "x", "state": "exploded"}}
            return _malformed(fault, response, wrong)
        return response

    def _kie_create(self, raw: bytes) -> _Response:
        request = _object(_decode(raw), "request body")
        model = request.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequestError("model is required")
        prediction_input = _object(request.get("input"), "input")
        callback = request.get("callBackUrl")
        if callback is not None and not (
            isinstance(callback, str) and callback.startswith(("http://", "https://"))
        ):
            raise _BadRequestError("callBackUrl must be an http(s) URL")
        try:
            created = self._state.create(prediction_input, model=model, webhook=callback)
        except InvalidPredictionInput as exc:
            raise _BadRequestError(str(exc)) from exc
        return _kie(200, "success", {"taskId": created.id})

    def _kie_record_info(
        self, _raw: bytes, *, query: Mapping[str, list[str]], base: str
    ) -> _Response:
        task_ids = query.get("taskId")
        if not task_ids:
            raise _BadRequestError("taskId is required")
        prediction = self._state.get(task_ids[-1])
        if prediction is None:
            return _kie(404, "Task not found")
        return _kie(200, "success", self._kie_record(prediction, base))

    def _failed(self, fault: Fault) -> _Response:
        if fault.kind is FaultKind.RATE_LIMITED:
            retry_after = self._state.config.retry_after
            return _json(
                429,
                {"status": 429, "detail": "Request was throttled."},
                (b"retry-after", f"{retry_after:g}".encode()),
            )
        return _problem(fault.status_code, "Internal server error.")

    def _create(self, raw: bytes, *, base: str, model: str | None) -> _Response:
        request = _object(_decode(raw), "request body")
        prediction_input = _object(request.get("input"), "input")
        version = request.get("version")
        if model is None and not (isinstance(version, str) and version):
            raise _BadRequestError("version is required")
        if isinstance(version, str) and version:
            model, version = _split_version(version)
        webhook = request.get("webhook")
        if webhook is not None and not (
            isinstance(webhook, str) and webhook.startswith(("http://", "https://"))
        ):
            raise _BadRequestError("webhook must be an http(s) URL")
        events = request.get("webhook_events_filter", [])
        if not isinstance(events, list) or not all(
            isinstance(event, str) and event in _WEBHOOK_EVENTS for event in events
        ):
            raise _BadRequestError(f"webhook_events_filter must be a subset of {_WEBHOOK_EVENTS}")
        try:
            created = self._state.create(
                prediction_input,
                model=model,
                version=version if isinstance(version, str) else _model_version(model),
                webhook=webhook,
                webhook_events_filter=tuple(str(event) for event in events),
            )
        except InvalidPredictionInput as exc:
            raise _BadRequestError(str(exc)) from exc
        return _json(201, self._render(created, base))

    def _list(self, _raw: bytes, *, query: Mapping[str, list[str]], base: str) -> _Response:
        cursor: int | None = None
        if "cursor" in query:
            try:
                cursor = int(query["cursor"][-1])
            except ValueError:
                raise _BadRequestError("cursor is invalid") from None
        page, next_cursor = self._state.list_page(cursor)
        listing = f"{base}/v1/predictions"
        next_url = None if next_cursor is None else f"{listing}?cursor={next_cursor}"
        # A cursor past the newest prediction reads the newest page, so no clamping is needed.
        previous_url = None
        if cursor is not None:
            previous_url = f"{listing}?cursor={cursor + self._state.config.page_size}"
        return _json(
            200,
            {
                "previous": previous_url,
                "next": next_url,
                "results": [self._render(prediction, base) for prediction in page],
            },
        )

    def _found(
        self,
        action: Callable[[str], SimulatedPrediction | None],
        prediction_id: str,
        _raw: bytes,
        *,
        base: str,
    ) -> _Response:
        """Run ``action`` only now, after auth and fault injection decided it may happen."""
        prediction = action(prediction_id)
        if prediction is None:
            return _NOT_FOUND
        return _json(200, self._render(prediction, base))

    def _file(self, prediction_id: str, file_name: str) -> _Response:
        match = _FILE_NAME.fullmatch(file_name)
        if match is None:
            return _NOT_FOUND
        png = self._state.output_png(prediction_id, int(match.group(1)))
        if png is None:
            return _NOT_FOUND
        return _Response(200, png, content_type="image/png")

    def _render(self, prediction: SimulatedPrediction, base: str) -> dict[str, object]:
        """Replicate's prediction JSON (``schemas_prediction_response``), outputs served here.

        Every field the published schema requires is present with its type; ``started_at``
        and ``completed_at`` are strings there, never null, so they are left out until they
        happen, as Replicate does.
        """
        output: list[str] | None = None
        if prediction.status == "succeeded":
            output = [
                f"{base}/files/{prediction.id}/{idx}.png" for idx in range(prediction.num_outputs)
            ]
        metrics: dict[str, float] = {}
        if prediction.completed_at is not None:
            if prediction.started_at is not None:
                metrics["predict_time"] = prediction.completed_at - prediction.started_at
            metrics["total_time"] = prediction.completed_at - prediction.created_at
        api = f"{base}/v1/predictions/{prediction.id}"
        model = prediction.model or _DEFAULT_MODEL
        rendered: dict[str, object] = {
            "id": prediction.id,
            "model": model,
            "version": prediction.version or _model_version(model),
            "input": dict(prediction.input),
            "logs": "",
            "output": output,
            "data_removed": False,
            "error": prediction.error,
            "status": prediction.status.value,
            "source": "api",
            "created_at": self._timestamp(prediction.created_at),
            "urls": {"web": f"{base}/p/{prediction.id}", "get": api, "cancel": f"{api}/cancel"},
            "webhook": prediction.webhook,
            "webhook_events_filter": list(prediction.webhook_events_filter),
            "metrics": metrics,
        }
        if prediction.started_at is not None:
            rendered["started_at"] = self._timestamp(prediction.started_at)
        if prediction.completed_at is not None:
            rendered["completed_at"] = self._timestamp(prediction.completed_at)
        return rendered

    def _kie_record(self, prediction: SimulatedPrediction, base: str) -> dict[str, object]:
        """KIE's task record: nested JSON as strings, times in epoch milliseconds."""
        succeeded = prediction.status is WireStatus.SUCCEEDED
        urls = [f"{base}/files/{prediction.id}/{idx}.png" for idx in range(prediction.num_outputs)]
        original: dict[str, object] = {"model": prediction.model, "input": dict(prediction.input)}
        if prediction.webhook is not None:
            original["callBackUrl"] = prediction.webhook
        cost: int | None = None
        if prediction.started_at is not None and prediction.completed_at is not None:
            cost = round((prediction.completed_at - prediction.started_at) * 1000)
        updated = max(
            moment
            for moment in (prediction.created_at, prediction.started_at, prediction.completed_at)
            if moment is not None
        )
        return {
            "taskId": prediction.id,
            "model": prediction.model,
            "state": _KIE_STATES.get(prediction.status, "fail"),
            "param": json.dumps(original),
            "resultJson": json.dumps({"resultUrls": urls}) if succeeded else "",
            "failCode": prediction.fail_code or "",
            "failMsg": prediction.error or "",
            "costTime": cost,
            "completeTime": self._millis(prediction.completed_at),
            "createTime": self._millis(prediction.created_at),
            "updateTime": self._millis(updated),
        }

    def webhook_body(self, prediction: SimulatedPrediction, *, base: str) -> bytes:
        """What the provider being simulated POSTs about ``prediction``.

        Replicate sends the prediction JSON a GET returns; KIE sends the ``recordInfo``
        envelope, with code 501 for a failed generation.

        Args:
            prediction: The prediction as the message reports it.
            base: This server's URL, for the output links.
        """
        if self._state.config.api == "replicate":
            return json.dumps(self._render(prediction, base)).encode()
        failed = prediction.status.terminal and prediction.status is not WireStatus.SUCCEEDED
        envelope = {
            "code": _KIE_GENERATION_FAILED if failed else 200,
            "msg": "Generation failed" if failed else "success",
            "data": self._kie_record(prediction, base),
        }
        return json.dumps(envelope).encode()

    def _millis(self, monotonic: float | None) -> int | None:
        if monotonic is None:
            return None
        return round((monotonic + self._wall_offset) * 1000)

    def _timestamp(self, monotonic: float) -> str:
        moment = datetime.fromtimestamp(monotonic + self._wall_offset, UTC)
        return moment.isoformat().replace("+00:00", "Z")


def _inputs_json(inputs: ImageInputs) -> dict[str, object]:
    """`ImageInputs` for `/_sim/inputs`: URLs as received, one entry per fetch (null if running).

    Times are Unix seconds, so a test can set them beside an expiry carried in a URL.
    """
    return {
        "id": inputs.prediction_id,
        "model": inputs.model,
        "image_input": list(inputs.urls),
        "fetches": [None if fetch is None else _fetch_json(fetch) for fetch in inputs.fetches],
        "error": None if inputs.failure is None else inputs.failure.error,
    }


def _fetch_json(fetch: InputFetch) -> dict[str, object]:
    return {**attrs.asdict(fetch), "ok": fetch.ok, "error": fetch.error}


def _malformed(fault: Fault, real: _Response, wrong_shape: object) -> _Response:
    """A 200 whose body is not what the API promises, after the real work was done."""
    match fault.variant:
        case 0:
            return _Response(200, b"<html><body>upstream hiccup</body></html>", "text/html")
        case 1:
            return _Response(200, real.body[: max(1, len(real.body) // 2)])
        case 2:
            return _json(200, ["unexpected", "shape"])
        case _:
            return _json(200, wrong_shape)


def _model_version(model: str | None) -> str:
    """A stable 64-hex version id for a model, as Replicate reports one for official models."""
    return hashlib.sha256((model or _DEFAULT_MODEL).encode()).hexdigest()


def _split_version(version: str) -> tuple[str | None, str]:
    """``model`` and version id from ``id``, ``owner/name:id`` or an official ``owner/name``.

    Those are the three spellings ``POST /v1/predictions`` accepts for ``version``.
    """
    if ":" in version:
        model, _, version_id = version.partition(":")
        return model, version_id
    if "/" in version and _VERSION_ID.fullmatch(version) is None:
        return version, _model_version(version)
    return None, version


def _decode(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        raise _BadRequestError("request body is not valid JSON") from None


def _object(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _BadRequestError(f"{what} must be a JSON object")
    return value


def _header(scope: HTTPScope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _base_url(scope: HTTPScope) -> str:
    host = _header(scope, b"host")
    if host is None:
        server = scope["server"] or ("127.0.0.1", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    return f"{scope['scheme']}://{host}"
