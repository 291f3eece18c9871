"""KIE's market-model task API (``/api/v1/jobs``) over an injected ``httpx.AsyncClient``.

KIE wraps every answer in an envelope ``{"code", "msg", "data"}`` and reports most errors as
HTTP 200 with an error ``code`` inside, so each response is checked twice: first the HTTP
status, then the envelope's code, both mapped by the same table as Replicate's statuses.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Final

import httpx

from orchestrator.core import (
    Prediction,
    PredictionRequest,
    PredictionStatus,
    ProviderProtocolError,
    ProviderRejected,
    TaggedPrediction,
    kie_failure_retryable,
    safe_summary,
)

from ._http import (
    checked_id,
    mapped_errors,
    parsed_id,
    raise_for_status,
    retry_after,
    status_error,
    tag_webhook,
)

_LABEL: Final = "kie"
_CODE_OK: Final = 200
_CODE_MAINTENANCE: Final = 455
_STATES: Final = {
    "waiting": PredictionStatus.STARTING,
    "queuing": PredictionStatus.STARTING,
    "generating": PredictionStatus.PROCESSING,
    "success": PredictionStatus.SUCCEEDED,
    "fail": PredictionStatus.FAILED,
}


class KieProvider:
    """`Provider` for KIE (or anything speaking its jobs API, like the simulator in KIE mode).

    One KIE task makes one image, so a request must ask for exactly one output; the daemon
    runs a multi-output job as several single-output predictions. Submitting with a webhook
    URL sends it as ``callBackUrl`` with ``?job_id=<uuid>`` appended, so every callback names
    its job.

    Args:
        client: Shared HTTP client; this class never closes it.
        base_url: API root without ``/api``, e.g. ``https://api.kie.ai``.
        token: API key, sent only as a bearer header to ``base_url``.
        model: KIE's model name, e.g. ``google/nano-banana``.

    Raises:
        ValueError: ``model`` is empty.
    """

    def __init__(self, client: httpx.AsyncClient, *, base_url: str, token: str, model: str) -> None:
        if not model:
            raise ValueError("model must name a KIE model")
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._model = model

    def __repr__(self) -> str:
        return f"KieProvider(base_url={self._base_url!r}, model={self._model!r})"

    async def submit(self, request: PredictionRequest) -> Prediction:
        """Create a task; KIE answers with its id only, so the prediction starts ``starting``.

        Raises:
            ProviderRejected: ``request.num_outputs`` is not 1; nothing is sent.
            ProviderError: Any failure; see the hierarchy in `ProviderError`.
        """
        if request.num_outputs != 1:
            raise ProviderRejected("kie: num_outputs must be 1: a KIE task makes exactly one image")
        body: dict[str, object] = {
            "model": self._model,
            "input": {"prompt": request.prompt} | dict(request.params),
        }
        webhook: str | None = None
        if request.webhook_url is not None:
            webhook = tag_webhook(request.webhook_url, request.job_id, request.output_index)
            body["callBackUrl"] = webhook
        with self._mapped_errors("submit"):
            response = await self._client.post(
                self._url("/api/v1/jobs/createTask"), json=body, headers=self._headers()
            )
            task_id = parsed_id(self._data(response, (request.prompt,))["taskId"], "kie")
        return Prediction(id=task_id, status=PredictionStatus.STARTING, webhook=webhook)

    async def get(self, prediction_id: str) -> Prediction:
        """Read a task's current state through ``recordInfo``.

        Raises:
            ValueError: ``prediction_id`` is not shaped like a task id.
            ProviderError: Any failure of the call itself.
        """
        params = {"taskId": checked_id(prediction_id, "KIE")}
        with self._mapped_errors("get"):
            response = await self._client.get(
                self._url("/api/v1/jobs/recordInfo"), params=params, headers=self._headers()
            )
            return _parse_task(self._data(response, ()), self._token)

    async def cancel(self, prediction_id: str) -> None:
        """Do nothing: KIE documents no way to cancel a task, so it runs (and bills) to the end.

        The id is still validated, so a caller's bug shows up the same way as with providers
        that can cancel.

        Raises:
            ValueError: ``prediction_id`` is not shaped like a task id.
        """
        checked_id(prediction_id, "KIE")

    def parse_webhook(self, body: bytes) -> Prediction:
        """Read a callback: the same envelope as ``recordInfo``, with the task as ``data``.

        The envelope's ``code`` is not checked against 200 here: on a callback it describes
        the task (KIE sends 501 for a failed generation), and ``data.state`` says the same
        more precisely.

        Raises:
            ProviderProtocolError: The body is not a task callback.
        """
        with self._mapped_errors("webhook"):
            envelope = _expect_object(json.loads(body), "callback")
            _envelope_code(envelope)
            return _parse_task(envelope["data"], self._token)

    async def find_for_job(
        self,
        job_id: uuid.UUID,  # noqa: ARG002 -- the protocol fixes the signature
        output_index: int = 0,  # noqa: ARG002
        *,
        since: datetime | None = None,  # noqa: ARG002
    ) -> Prediction | None:
        """Always ``None``: KIE offers no task listing to search.

        A task whose id was lost can only come back through its callback, which carries the
        job id and output in its URL; without a webhook URL such a task is unrecoverable.
        """
        return None

    async def recent(self) -> tuple[TaggedPrediction, ...]:
        """Always empty: KIE lists no tasks (and cannot cancel one either)."""
        return ()

    async def list_page(
        self,
        cursor: str | None = None,  # noqa: ARG002 -- the protocol fixes the signature
    ) -> tuple[tuple[Prediction, ...], str | None]:
        """Always an empty last page: KIE lists no tasks, so each one is polled."""
        return (), None

    def _url(self, path: str) -> str:
        return self._base_url + path

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def _data(self, response: httpx.Response, secrets: tuple[str, ...]) -> Mapping[str, object]:
        """Check the HTTP status, then the envelope's code, and return the envelope's data."""
        redact = (self._token, *secrets)
        raise_for_status(_LABEL, response, secrets=redact)
        envelope = _expect_object(response.json(), "response")
        code = _envelope_code(envelope)
        if code != _CODE_OK:
            msg = envelope.get("msg")
            raise status_error(
                _LABEL,
                code,
                kind="code",
                detail=safe_summary(msg, secrets=redact) if isinstance(msg, str) else "",
                retry_after=retry_after(response.headers.get("retry-after")),
                unavailable=(_CODE_MAINTENANCE,),
            )
        return _expect_object(envelope["data"], "data")

    def _mapped_errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return mapped_errors(_LABEL, action)


def _expect_object(body: object, what: str) -> Mapping[str, object]:
    if not isinstance(body, dict):
        raise ProviderProtocolError(f"kie: {what} is not a JSON object")
    return body


def _envelope_code(envelope: Mapping[str, object]) -> int:
    code = envelope["code"]
    if isinstance(code, bool) or not isinstance(code, int):
        raise ProviderProtocolError("kie: envelope code is not an integer")
    return code


def _parse_task(body: object, token: str) -> Prediction:
    """Read a task record strictly: a guess here would be a wrong charge."""
    data = _expect_object(body, "task")
    task_id = parsed_id(data["taskId"], "kie")
    state = data["state"]
    status = _STATES.get(state) if isinstance(state, str) else None
    if status is None:
        raise ProviderProtocolError("kie: unknown task state")
    original = _original_request(data.get("param"))
    original_input = original.get("input")
    prompt = original_input.get("prompt") if isinstance(original_input, dict) else None
    secrets = (token, prompt) if isinstance(prompt, str) else (token,)
    webhook = original.get("callBackUrl")
    failed = status is PredictionStatus.FAILED
    error = safe_summary(_failure_text(data), secrets=secrets) if failed else None
    return Prediction(
        id=task_id,
        status=status,
        output=_result_urls(data.get("resultJson")) if status is PredictionStatus.SUCCEEDED else (),
        error=error,
        webhook=webhook if isinstance(webhook, str) else None,
        retryable=_failure_retryable(data, error) if failed else None,
    )


def _original_request(param: object) -> Mapping[str, object]:
    """The original request KIE echoes as a JSON string; informational, so tolerated if odd.

    It only supplies the webhook (for matching) and the prompt (to redact it from errors),
    neither of which is worth refusing an otherwise readable task over.
    """
    if not isinstance(param, str):
        return {}
    try:
        decoded = json.loads(param)
    except (ValueError, RecursionError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _result_urls(result_json: object) -> tuple[str, ...]:
    """``resultJson`` is a JSON *string* holding ``{"resultUrls": [...]}``."""
    if not isinstance(result_json, str):
        raise ProviderProtocolError("kie: resultJson is not a string")
    try:
        result = json.loads(result_json)
    except ValueError:
        raise ProviderProtocolError("kie: resultJson is not JSON") from None
    urls = result.get("resultUrls") if isinstance(result, dict) else None
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise ProviderProtocolError("kie: resultUrls is not a list of URLs")
    return tuple(str(url) for url in urls)


def _failure_retryable(data: Mapping[str, object], error: str | None) -> bool | None:
    """After `_failure_text` refused a code that is not text; ``error`` is the redacted text."""
    code = data.get("failCode")
    return kie_failure_retryable(code if isinstance(code, str | int) else None, error)


def _failure_text(data: Mapping[str, object]) -> str:
    parts: list[str] = []
    for key in ("failCode", "failMsg"):
        value = data.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ProviderProtocolError(f"kie: {key} is not text")
        parts.append(str(value))
    return ": ".join(parts) or "kie: task failed without a reason"
