"""Failures at the provider edge, one branch per decision the caller has to make.

Every adapter maps whatever its HTTP stack or the provider's body throws at it into exactly
one of these, so callers never see ``httpx`` or ``json`` exceptions:

```
ProviderError
├── ProviderUnavailable        transport error, timeout, 5xx: try again later
│   ├── ProviderUnreachable    no request was sent (connecting failed): resending is safe
│   └── ProviderRateLimited    429: try again after ``retry_after`` seconds
├── ProviderRejected           any other 4xx: this request will never succeed
└── ProviderProtocolError      a 2xx whose body is not what the API promises
```

Each carries a ``summary`` that is safe to log and to store on a job: it never contains the
API token, the prompt, or a URL with credentials in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from ._exceptions import ExpectedFault
from ._text import clean_text


class ProviderError(ExpectedFault):
    """Base of every failure a provider adapter raises; providers fail, that is expected."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary: str = summary


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or failed on its side; retrying may work.

    ``status_code`` is ``None`` when no HTTP response arrived at all.
    """

    def __init__(self, summary: str, *, status_code: int | None = None) -> None:
        super().__init__(summary)
        self.status_code: int | None = status_code


class ProviderUnreachable(ProviderUnavailable):
    """No connection, so no request reached the provider: sending it again cannot pay twice.

    Unlike a read timeout or a reset, where the provider may have acted on a request
    whose answer was lost.
    """


class ProviderRateLimited(ProviderUnavailable):
    """The provider asked us to slow down (HTTP 429).

    ``retry_after`` is the server's ``Retry-After`` in seconds, or ``None`` when it sent none
    (or sent a form we do not trust), leaving the backoff to the caller.
    """

    def __init__(self, summary: str, *, retry_after: float | None = None) -> None:
        super().__init__(summary, status_code=429)
        self.retry_after: float | None = retry_after


class ProviderRejected(ProviderError):
    """The provider refused this request (401, 404, 422, ...); sending it again is pointless.

    ``status_code`` is ``None`` when the adapter refused it before sending anything (an id
    that could escape its URL, a request the API cannot express).
    """

    def __init__(self, summary: str, *, status_code: int | None = None) -> None:
        super().__init__(summary)
        self.status_code: int | None = status_code


class ProviderProtocolError(ProviderError):
    """The provider answered, but not in a shape we understand (bad JSON, unknown status)."""


_MAX_SUMMARY: Final = 200
_URL_USERINFO: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_URL_QUERY: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s?#]*)\?[^\s#]*")
_BEARER: Final = re.compile(r"(?i)\b(bearer|token|basic)(\s*[:=]?\s*)[A-Za-z0-9._~+/=-]{6,}")
_REPLICATE_TOKEN: Final = re.compile(r"\br8_[A-Za-z0-9]{8,}")
_WHITESPACE: Final = re.compile(r"\s+")


def safe_summary(text: str, *, secrets: Iterable[str] = ()) -> str:
    """Make provider-supplied text fit to log and to store on a job.

    Provider error texts are free-form: model tracebacks quote signed weight URLs, gateways
    echo headers. So known secrets (the token, the prompt) are cut out verbatim, URL
    credentials and query strings (where signed URLs keep their signatures) are dropped,
    anything token-shaped is masked, and the result is one line of at most 200 characters
    with no NUL or other control character in it.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = clean_text(text, limit=len(text))
    text = _URL_USERINFO.sub(r"\1[redacted]@", text)
    text = _URL_QUERY.sub(r"\1?[redacted]", text)
    text = _BEARER.sub(r"\1\2[redacted]", text)
    text = _REPLICATE_TOKEN.sub("[redacted]", text)
    text = _WHITESPACE.sub(" ", text).strip()
    if len(text) > _MAX_SUMMARY:
        text = text[: _MAX_SUMMARY - 1] + "…"
    return text
