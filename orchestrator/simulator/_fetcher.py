"""Fetching predictions' ``image_input`` URLs, as Replicate does before a model runs.

`SimulatorState` queues one fetch per URL when a prediction is created; the `InputFetcher`
here takes them off the queue, GETs each URL once and reports what it found, so the
create request is answered at once and only the prediction's end waits. A fetch follows
no redirect, gives up after the configured timeout, reads at most `MAX_INPUT_BYTES` and
accepts a 200 that is an image by type or by its first bytes. Like the webhook sender it
only ever calls loopback, so a simulator handed real URLs never reaches the internet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Final

import attrs
import httpx
import trio

from ._inputs import (
    MAX_INPUT_BYTES,
    SNIFF_BYTES,
    InputFetch,
    InputFetchRequest,
    body_problem,
    status_problem,
)
from ._state import SimulatorState
from ._webhooks import is_loopback

FETCH_CONCURRENCY: Final = 32
_MIB: Final = 1 << 20


@attrs.define
class _Seen:
    """What a fetch learnt so far, kept when a timeout cuts it short."""

    status_code: int | None = None
    content_type: str | None = None
    size: int = 0
    sha256: str | None = None


class InputFetcher:
    """Runs the input fetches a `SimulatorState` queues, as a background task.

    Args:
        client: Used for every fetch; ``trust_env=False`` so no proxy gets in between. It
            must not buffer whole bodies (no `orchestrator.transport.QueuedTransport`),
            or the size cap would apply only after the bytes were already in memory.
        wall_clock: Unix seconds, for `InputFetch.started_at`.
        timeout: Seconds one fetch may take, from connect to last byte.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        wall_clock: Callable[[], float],
        timeout: float,
    ) -> None:
        self._client = client
        self._wall_clock = wall_clock
        self._timeout = timeout
        self._slots = trio.CapacityLimiter(FETCH_CONCURRENCY)
        self._changed = trio.Event()

    def wake(self) -> None:
        """Look at the state again: a prediction with inputs may have been created."""
        self._changed.set()

    async def run(
        self,
        state: SimulatorState,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Fetch queued inputs until cancelled, each in its own task.

        Args:
            state: Queues the fetches and receives their outcomes; its clock must be Trio's.
            task_status: Started once the loop runs.
        """
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self._changed = trio.Event()
                for request in state.take_input_fetches():
                    nursery.start_soon(self._fetch_into, state, request)
                await self._changed.wait()

    async def _fetch_into(self, state: SimulatorState, request: InputFetchRequest) -> None:
        async with self._slots:
            fetch = await self.fetch(request.index, request.url)
        state.record_input_fetch(request.prediction_id, fetch)

    async def fetch(self, index: int, url: str) -> InputFetch:
        """GET one input URL and judge it; never raises for anything the network does."""
        started_at = self._wall_clock()
        begun = trio.current_time()
        seen = _Seen()
        with trio.move_on_after(self._timeout) as deadline:
            problem = await self._read(url, seen)
        if deadline.cancelled_caught:
            problem = f"timed out after {self._timeout:g} s"
        return InputFetch(
            index=index,
            url=url,
            started_at=started_at,
            elapsed=trio.current_time() - begun,
            status_code=seen.status_code,
            content_type=seen.content_type,
            size=seen.size,
            sha256=seen.sha256,
            problem=problem,
        )

    async def _read(self, url: str, seen: _Seen) -> str | None:
        """Why the input at ``url`` is unusable, with every network error put in words."""
        if not is_loopback(url):
            return "not a loopback URL (the simulator fetches only from this machine)"
        try:
            return await self._stream(url, seen)
        except httpx.TimeoutException:
            return f"timed out after {self._timeout:g} s"
        except httpx.ConnectError as exc:
            return f"connection failed ({exc})"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__} ({exc})"
        except httpx.InvalidURL as exc:
            return f"invalid URL ({exc})"

    async def _stream(self, url: str, seen: _Seen) -> str | None:
        async with self._client.stream(
            "GET", url, follow_redirects=False, timeout=self._timeout
        ) as response:
            seen.status_code = response.status_code
            seen.content_type = response.headers.get("content-type")
            problem = status_problem(response.status_code) or _declared_too_large(response)
            if problem is not None:
                return problem
            digest = hashlib.sha256()
            head = b""
            async for chunk in response.aiter_bytes():
                seen.size += len(chunk)
                if seen.size > MAX_INPUT_BYTES:
                    return _too_large()
                digest.update(chunk)
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
            seen.sha256 = digest.hexdigest()
            return body_problem(seen.content_type, head)


def _declared_too_large(response: httpx.Response) -> str | None:
    """Refuse at the headers what ``content-length`` already says is over the cap."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_INPUT_BYTES:
        return _too_large()
    return None


def _too_large() -> str:
    return f"larger than {MAX_INPUT_BYTES // _MIB} MiB"
