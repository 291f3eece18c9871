"""Replicate's predictions API over an injected ``httpx.AsyncClient``.

The client (timeouts, connection limits, transport) is chosen by the composition root; tests
pass ``httpx.MockTransport`` or point ``base_url`` at the simulator.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import AsyncGenerator, Mapping
from datetime import datetime, timedelta
from typing import Final

import httpx

from orchestrator.core import (
    Prediction,
    PredictionRequest,
    PredictionStatus,
    ProviderProtocolError,
    TaggedPrediction,
    failure_text_retryable,
    safe_summary,
)

from ._http import (
    checked_id,
    mapped_errors,
    parsed_id,
    raise_for_status,
    tag_webhook,
    webhook_tag,
)

_LABEL: Final = "replicate"
# A prediction is created after its job's admission; this covers clock skew with the API.
_FIND_SLACK: Final = timedelta(minutes=1)
_MODEL: Final = re.compile(r"([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)")


class ReplicateProvider:
    """`Provider` for Replicate (or anything speaking its API, like the simulator).

    Submitting with a webhook URL appends ``?job_id=<uuid>&idx=<n>`` to it; Replicate echoes
    the webhook on every prediction, which is how `find_for_job` and `recent` recognise a
    prediction whose id the daemon never got to store. Without a webhook URL nothing tags a
    prediction, so such a prediction cannot be found.

    Args:
        client: Shared HTTP client; this class never closes it.
        base_url: API root without ``/v1``, e.g. ``https://api.replicate.com``.
        token: API token, sent only as a bearer header to ``base_url``.
        model: ``owner/name`` of an official model; mutually exclusive with ``version``.
        version: Model version id, for ``POST /v1/predictions``.
        find_max_pages: How many listing pages `find_for_job` and `recent` read at most.
        find_since_max_pages: The bound on pages for a `find_for_job` that reaches back
            to a job's admission.

    Raises:
        ValueError: Neither or both of ``model`` and ``version``, or a malformed ``model``.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        token: str,
        model: str | None = None,
        version: str | None = None,
        find_max_pages: int = 10,
        find_since_max_pages: int = 100,
    ) -> None:
        if (model is None) == (version is None):
            raise ValueError("give exactly one of model ('owner/name') or version")
        if model is not None and _MODEL.fullmatch(model) is None:
            raise ValueError("model must look like 'owner/name'")
        if find_max_pages < 1 or find_since_max_pages < 1:
            raise ValueError("find_max_pages and find_since_max_pages must be at least 1")
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._model = model
        self._version = version
        self._find_max_pages = find_max_pages
        self._find_since_max_pages = find_since_max_pages

    def __repr__(self) -> str:
        target = f"model={self._model!r}" if self._model else f"version={self._version!r}"
        return f"ReplicateProvider(base_url={self._base_url!r}, {target})"

    async def submit(self, request: PredictionRequest) -> Prediction:
        """Create a prediction.

        Raises:
            ProviderError: Any failure; see the hierarchy in `ProviderError`.
        """
        body: dict[str, object] = {
            "input": {"prompt": request.prompt, "num_outputs": request.num_outputs}
            | dict(request.params)
        }
        if self._model is not None:
            path = f"/v1/models/{self._model}/predictions"
        else:
            path = "/v1/predictions"
            body["version"] = self._version
        if request.webhook_url is not None:
            body["webhook"] = tag_webhook(request.webhook_url, request.job_id, request.output_index)
            body["webhook_events_filter"] = ["completed"]
        secrets = (request.prompt,)
        with self._mapped_errors("submit"):
            response = await self._client.post(self._url(path), json=body, headers=self._headers())
            return self._prediction(response, secrets)

    async def get(self, prediction_id: str) -> Prediction:
        """Read a prediction's current state.

        Raises:
            ValueError: ``prediction_id`` is not shaped like a Replicate id.
            ProviderError: Any failure of the call itself.
        """
        path = f"/v1/predictions/{checked_id(prediction_id, 'Replicate')}"
        with self._mapped_errors("get"):
            response = await self._client.get(self._url(path), headers=self._headers())
            return self._prediction(response, ())

    async def cancel(self, prediction_id: str) -> None:
        """Cancel a prediction; Replicate answers 200 for one that already finished, too.

        Raises:
            ValueError: ``prediction_id`` is not shaped like a Replicate id.
            ProviderError: Any failure of the call itself.
        """
        path = f"/v1/predictions/{checked_id(prediction_id, 'Replicate')}/cancel"
        with self._mapped_errors("cancel"):
            response = await self._client.post(self._url(path), headers=self._headers())
            self._prediction(response, ())

    def parse_webhook(self, body: bytes) -> Prediction:
        """Read a webhook body: Replicate posts the prediction JSON that GET returns.

        Raises:
            ProviderProtocolError: The body is not a prediction.
        """
        with self._mapped_errors("webhook"):
            return _parse_prediction(json.loads(body), (self._token,))

    async def find_for_job(
        self, job_id: uuid.UUID, output_index: int = 0, *, since: datetime | None = None
    ) -> Prediction | None:
        """Scan the listing for the prediction whose webhook names this output.

        The newest `find_max_pages` pages, or with ``since`` back to a minute before it
        (within `find_since_max_pages`). With several matches the newest wins.

        Raises:
            ProviderError: Any failure while listing; a later call may succeed.
        """
        with self._mapped_errors("list"):
            async with contextlib.aclosing(self._tagged(strict=True, since=since)) as listing:
                async for tagged in listing:
                    if (tagged.job_id, tagged.output_index) == (job_id, output_index):
                        return tagged.prediction
        return None

    async def recent(self) -> tuple[TaggedPrediction, ...]:
        """The tagged predictions on the newest listing pages.

        An entry that is tagged but unreadable is skipped rather than failing the rest: it
        is one prediction we cannot reason about, not a reason to leave others running.

        Raises:
            ProviderError: Any failure while listing; a later call may succeed.
        """
        with self._mapped_errors("list"):
            return tuple([tagged async for tagged in self._tagged(strict=False)])

    async def list_page(
        self, cursor: str | None = None
    ) -> tuple[tuple[Prediction, ...], str | None]:
        """One page of the account's predictions, newest first, and the next page's cursor.

        Entries this adapter cannot read (other models' outputs) are left out: a listing
        serves to spot our own predictions, never to judge someone else's.

        Raises:
            ProviderError: The page could not be fetched or is not a listing.
        """
        with self._mapped_errors("list"):
            entries, cursor = await self._raw_page(cursor)
            return tuple(p for p in map(self._lenient, entries) if p is not None), cursor

    async def _raw_page(self, cursor: str | None) -> tuple[list[object], str | None]:
        url = self._url("/v1/predictions") if cursor is None else self._next_page(cursor)
        assert url is not None  # noqa: S101  (a cursor is never None here)
        response = await self._client.get(url, headers=self._headers())
        page = _expect_object(self._json(response, ()), "listing")
        results = page["results"]
        if not isinstance(results, list):
            raise ProviderProtocolError("replicate list: results is not a list")
        return results, self._next_page(page.get("next"))

    def _lenient(self, entry: object) -> Prediction | None:
        try:
            return _parse_prediction(entry, (self._token,))
        except (ProviderProtocolError, KeyError, TypeError, ValueError):
            return None

    async def _tagged(
        self, *, strict: bool, since: datetime | None = None
    ) -> AsyncGenerator[TaggedPrediction]:
        """Tagged entries, newest first, over at most ``find_max_pages`` pages.

        With ``since``, over as many pages as it takes to pass a minute before that moment
        (at most ``find_since_max_pages``). The listing holds every prediction of the
        account, including other models' with outputs we cannot parse, so entries are only
        fully parsed once they carry our tag.
        """
        cursor: str | None = None
        pages = self._find_max_pages if since is None else self._find_since_max_pages
        horizon = None if since is None else since - _FIND_SLACK
        for _ in range(pages):
            entries, cursor = await self._raw_page(cursor)
            if horizon is not None and not any(_created_after(e, horizon) for e in entries):
                cursor = None  # this page is older than the job: nothing further back is ours
            for entry in entries:
                tag = webhook_tag(entry.get("webhook")) if isinstance(entry, Mapping) else None
                if tag is None:
                    continue
                prediction = (
                    _parse_prediction(entry, (self._token,)) if strict else self._lenient(entry)
                )
                if prediction is not None:
                    yield TaggedPrediction(tag[0], tag[1], prediction)
            if cursor is None:
                return

    def _url(self, path: str) -> str:
        return self._base_url + path

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def _next_page(self, next_url: object) -> str | None:
        """Follow a cursor only back to our own API: the token goes wherever we follow."""
        if next_url is None:
            return None
        if not isinstance(next_url, str):
            raise ProviderProtocolError("replicate list: next is not a URL")
        if not next_url.startswith(self._base_url + "/"):
            raise ProviderProtocolError("replicate list: next points outside the API")
        return next_url

    def _prediction(self, response: httpx.Response, secrets: tuple[str, ...]) -> Prediction:
        return _parse_prediction(self._json(response, secrets), (self._token, *secrets))

    def _json(self, response: httpx.Response, secrets: tuple[str, ...]) -> object:
        """Turn a non-2xx into the matching `ProviderError`, else decode the body."""
        raise_for_status(_LABEL, response, secrets=(self._token, *secrets))
        return response.json()

    def _mapped_errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return mapped_errors(_LABEL, action)


def _expect_object(body: object, what: str) -> Mapping[str, object]:
    if not isinstance(body, dict):
        raise ProviderProtocolError(f"replicate: {what} is not a JSON object")
    return body


def _parse_prediction(body: object, secrets: tuple[str, ...]) -> Prediction:
    """Read Replicate's prediction JSON strictly: a guess here would be a wrong charge."""
    data = _expect_object(body, "prediction")
    prediction_id = parsed_id(data["id"], "replicate")
    raw_status = data["status"]
    try:
        status = PredictionStatus(str(raw_status))
    except ValueError:
        raise ProviderProtocolError("replicate: unknown prediction status") from None
    webhook = data.get("webhook")
    if webhook is not None and not isinstance(webhook, str):
        raise ProviderProtocolError("replicate: webhook is not a string")
    raw_error = data.get("error")
    error = raw_error if isinstance(raw_error, str) or raw_error is None else json.dumps(raw_error)
    original_input = data.get("input")
    prompt = original_input.get("prompt") if isinstance(original_input, dict) else None
    if isinstance(prompt, str):  # a poll knows the prompt only from Replicate's echo of it
        secrets = (*secrets, prompt)
    summary = None if error is None else safe_summary(error, secrets=secrets)
    return Prediction(
        id=prediction_id,
        status=status,
        output=_parse_output(data.get("output")),
        error=summary,
        webhook=webhook,
        # Read from the redacted text, so words of the prompt never decide a retry.
        retryable=failure_text_retryable(summary) if status is PredictionStatus.FAILED else None,
    )


def _parse_output(output: object) -> tuple[str, ...]:
    match output:
        case None:
            return ()
        case str():
            return (output,)
        case list() if all(isinstance(item, str) for item in output):
            return tuple(str(item) for item in output)
        case _:
            raise ProviderProtocolError("replicate: output is not a URL or a list of URLs")


def _created_after(entry: object, moment: datetime) -> bool:
    """Whether a listing entry was created after `moment`; unreadable dates count as after."""
    created = entry.get("created_at") if isinstance(entry, Mapping) else None
    if not isinstance(created, str):
        return True
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        return True
    if when.tzinfo is None:
        return True
    return when >= moment
