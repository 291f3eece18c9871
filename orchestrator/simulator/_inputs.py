"""A prediction's ``image_input``: its validation at create, and what fetching each URL found.

Pure: no I/O and no clock. ``_fetcher`` does the fetching and hands `InputFetch` values to
`SimulatorState`, which keeps them beside the prediction and lets its end wait for them.
Validation follows Replicate's schema for ``google/nano-banana`` (``image_input``: an array
of uri), so a request the real model would refuse with 422 is refused here too.
"""

from __future__ import annotations

import urllib.parse
from typing import Final

import attrs

MAX_IMAGE_INPUTS: Final = 4
MAX_INPUT_BYTES: Final = 20 << 20
# The Replicate models whose schema has ``image_input``: the real editor and the
# simulator's own model, which the tests and the demo use.
IMAGE_INPUT_MODELS: Final = frozenset({"google/nano-banana", "sim/image"})
_HTTP_OK: Final = 200
_REDIRECTS: Final = range(300, 400)
# Leading bytes of the formats nano-banana reads; WebP is RIFF....WEBP.
_MAGIC: Final = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
SNIFF_BYTES: Final = 12


class InvalidPredictionInput(ValueError):
    """The create request is one Replicate would answer with 422."""


def image_input_urls(value: object) -> tuple[str, ...]:
    """The URLs of ``input.image_input`` (absent means none), exactly as sent.

    Raises:
        InvalidPredictionInput: Not an array, more than `MAX_IMAGE_INPUTS` items, or an
            item that is not an absolute http(s) URL with a host.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidPredictionInput(
            f"input.image_input must be an array of uri, got {type(value).__name__}"
        )
    if len(value) > MAX_IMAGE_INPUTS:
        raise InvalidPredictionInput(
            f"input.image_input must have at most {MAX_IMAGE_INPUTS} items, got {len(value)}"
        )
    for index, item in enumerate(value):
        if not (isinstance(item, str) and _is_http_url(item)):
            raise InvalidPredictionInput(
                f"input.image_input[{index}] must be an http(s) uri: {_shown(item)}"
            )
    return tuple(value)


def _is_http_url(text: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(text)
        host = parts.hostname
    except ValueError:  # a malformed port or IPv6 literal
        return False
    return parts.scheme in {"http", "https"} and bool(host) and text == text.strip()


_SHOWN_CHARS: Final = 80


def _shown(item: object) -> str:
    """The offending item, short: a bad item may be a data URL of megabytes."""
    text = repr(item)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


@attrs.frozen
class InputFetchRequest:
    """One URL the fetcher owes a prediction; ``index`` is its place in ``image_input``."""

    prediction_id: str
    index: int
    url: str


@attrs.frozen
class InputFetch:
    """What fetching one ``image_input`` URL found, made by the fetcher and kept as it was.

    Attributes:
        index: Its place in ``image_input``.
        url: The URL exactly as the request carried it, so a test can read its expiry.
        started_at: Unix seconds when the fetch began (after waiting for a free slot).
        elapsed: Seconds from then until it succeeded or gave up.
        status_code: The HTTP status, ``None`` when no response came (refused, timed out).
        content_type: The ``content-type`` header as sent, if any.
        size: Body bytes read, even when reading stopped early (too large, timed out).
        sha256: Hex digest of the whole body, ``None`` unless it was read to the end.
        problem: Why the input is unusable, ``None`` when it is a fetched image.
    """

    index: int
    url: str
    started_at: float
    elapsed: float
    status_code: int | None = None
    content_type: str | None = None
    size: int = 0
    sha256: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def error(self) -> str | None:
        """The failed prediction's ``error`` when this input is the one that sank it."""
        if self.problem is None:
            return None
        return f"image_input[{self.index}] could not be fetched: {self.problem}"


@attrs.frozen
class ImageInputs:
    """What one prediction was given as ``image_input``, and what fetching each found.

    Attributes:
        prediction_id: The prediction.
        model: The model it was created for.
        urls: ``image_input`` exactly as received.
        fetches: One per URL in the same order; ``None`` while that fetch is under way.
    """

    prediction_id: str
    model: str | None
    urls: tuple[str, ...]
    fetches: tuple[InputFetch | None, ...]

    @property
    def done(self) -> bool:
        return all(fetch is not None for fetch in self.fetches)

    @property
    def failure(self) -> InputFetch | None:
        """The first unusable input by position, whatever order the fetches finished in."""
        return next((f for f in self.fetches if f is not None and not f.ok), None)


def status_problem(status_code: int) -> str | None:
    """Why a response's status rules it out as an input; ``None`` to go on and read the body."""
    if status_code in _REDIRECTS:
        return f"HTTP {status_code} (redirects are not followed)"
    if status_code != _HTTP_OK:
        return f"HTTP {status_code}"
    return None


def body_problem(content_type: str | None, head: bytes) -> str | None:
    """Why a 200 body is not an image: neither an ``image/*`` type nor an image's magic bytes.

    Either suffices, as a real fetcher sniffs what a bucket labelled
    ``application/octet-stream``.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.startswith("image/") or looks_like_image(head):
        return None
    return f"not an image (content type {media or 'none'})"


def looks_like_image(head: bytes) -> bool:
    """Whether ``head`` starts a PNG, JPEG, GIF or WebP file."""
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
