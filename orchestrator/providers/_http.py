"""What every HTTP adapter does the same way: status mapping, error wrapping, webhook tags.

Providers differ in their bodies, not in what a 429 or a dropped connection means to the
caller, so that decision is made once here and each adapter only supplies its label.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from typing import Final

import httpx

from orchestrator.core import (
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ProviderUnreachable,
    safe_summary,
)

JOB_ID_PARAM: Final = "job_id"
IDX_PARAM: Final = "idx"
_INDEX: Final = re.compile(r"[0-9]{1,2}")
_PREDICTION_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_HTTP_TOO_MANY_REQUESTS: Final = 429
_HTTP_REQUEST_TIMEOUT: Final = 408


def status_error(
    label: str,
    status: int,
    *,
    kind: str = "HTTP",
    detail: str = "",
    retry_after: float | None = None,
    unavailable: Iterable[int] = (),
) -> ProviderError:
    """The `ProviderError` a non-success status stands for.

    Used for HTTP statuses and for the status codes some providers wrap in a 200 body, so
    both reach the caller as the same decision: retry later, retry after, or give up.

    Args:
        label: Provider name, the start of the summary.
        status: The status that was not a success.
        kind: What the number is (``HTTP``, ``code``), for the summary.
        detail: Already redacted provider text, kept only for rejections.
        retry_after: Seconds the provider asked us to wait, for a 429.
        unavailable: Provider-specific 4xx codes that mean "try again later".
    """
    prefix = f"{label}: {kind} {status}"
    if status == _HTTP_TOO_MANY_REQUESTS:
        return ProviderRateLimited(f"{prefix} rate limited", retry_after=retry_after)
    if (
        status >= httpx.codes.INTERNAL_SERVER_ERROR
        or status == _HTTP_REQUEST_TIMEOUT
        or status in set(unavailable)
    ):
        return ProviderUnavailable(prefix, status_code=status)
    if status >= httpx.codes.BAD_REQUEST:
        return ProviderRejected(prefix + (f": {detail}" if detail else ""), status_code=status)
    return ProviderProtocolError(f"{label}: unexpected {kind} {status}")


def raise_for_status(label: str, response: httpx.Response, *, secrets: Iterable[str]) -> None:
    """Raise the mapped error for a non-2xx response; the detail comes from its JSON body.

    Raises:
        ProviderError: The response is not a 2xx.
    """
    status = response.status_code
    if httpx.codes.is_success(status):
        return
    raise status_error(
        label,
        status,
        detail=body_detail(response, secrets=secrets),
        retry_after=retry_after(response.headers.get("retry-after")),
    )


def body_detail(response: httpx.Response, *, secrets: Iterable[str]) -> str:
    """The provider's own words about an error (``detail``, ``title`` or ``msg``), redacted."""
    try:
        body = response.json()
    except (ValueError, RecursionError):  # an error body nested thousands deep says nothing
        return ""
    if not isinstance(body, dict):
        return ""
    detail = body.get("detail") or body.get("title") or body.get("msg")
    if not isinstance(detail, str):
        return ""
    return safe_summary(detail, secrets=secrets)


def retry_after(value: str | None) -> float | None:
    """Only the delta-seconds form: an HTTP-date would tie backoff to our wall clock."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


@contextlib.contextmanager
def mapped_errors(label: str, action: str) -> Iterator[None]:
    """Turn everything below an adapter into a `ProviderError`, keeping the cause.

    The messages name only the action and the exception type: httpx and json messages
    may quote URLs or body fragments, and a body fragment may be the prompt.
    """
    try:
        yield
    except ProviderError:
        raise
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        msg = f"{label} {action}: could not connect ({type(exc).__name__})"
        raise ProviderUnreachable(msg) from exc
    except httpx.TimeoutException as exc:
        msg = f"{label} {action}: timed out ({type(exc).__name__})"
        raise ProviderUnavailable(msg) from exc
    except httpx.TransportError as exc:
        msg = f"{label} {action}: transport error ({type(exc).__name__})"
        raise ProviderUnavailable(msg) from exc
    except httpx.HTTPError as exc:
        msg = f"{label} {action}: bad HTTP response ({type(exc).__name__})"
        raise ProviderProtocolError(msg) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{label} {action}: body is not JSON"
        raise ProviderProtocolError(msg) from exc
    except RecursionError as exc:
        # Valid JSON nested thousands deep: Python's decoder gives up, so do we.
        msg = f"{label} {action}: body is nested too deeply"
        raise ProviderProtocolError(msg) from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        msg = f"{label} {action}: unexpected body shape ({type(exc).__name__})"
        raise ProviderProtocolError(msg) from exc


def parsed_id(value: object, label: str) -> str:
    """An id read from a provider's answer, refused as a protocol error if unusable.

    The same rule as `checked_id`, applied where the id enters: an id we could
    never send back (to poll or cancel it) is garbage from the provider.

    Raises:
        ProviderProtocolError: not a plain token.
    """
    if not isinstance(value, str) or _PREDICTION_ID.fullmatch(value) is None:
        raise ProviderProtocolError(f"{label}: prediction id is not a plain token")
    return value


def checked_id(prediction_id: str, label: str) -> str:
    """Refuse an id that could escape a URL path or query before it becomes a request.

    Raises:
        ProviderRejected: ``prediction_id`` is not a plain token; no request is ever sent.
    """
    if _PREDICTION_ID.fullmatch(prediction_id) is None:
        raise ProviderRejected(f"{label}: prediction_id is not a {label} prediction id")
    return prediction_id


def tag_webhook(webhook_url: str, job_id: uuid.UUID, idx: int) -> str:
    """Append ``?job_id=<uuid>&idx=<n>`` so the callback names its job and output.

    The provider echoes the URL on the prediction, which is how a prediction whose id the
    daemon never got to store is still matched, in listings as in callbacks. Existing
    ``job_id`` and ``idx`` parameters are replaced, others are kept.
    """
    parts = urllib.parse.urlsplit(webhook_url)
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k not in {JOB_ID_PARAM, IDX_PARAM}
    ]
    query += [(JOB_ID_PARAM, str(job_id)), (IDX_PARAM, str(idx))]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def webhook_tag(webhook_url: object) -> tuple[uuid.UUID, int] | None:
    """The job and output `tag_webhook` put into a URL, or ``None`` for anything else."""
    if not isinstance(webhook_url, str):
        return None
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(webhook_url).query)
    job_ids, indices = query.get(JOB_ID_PARAM), query.get(IDX_PARAM, ["0"])
    if not job_ids or not _INDEX.fullmatch(indices[-1]):
        return None
    try:
        return uuid.UUID(job_ids[-1]), int(indices[-1])
    except ValueError:
        return None
