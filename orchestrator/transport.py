"""An httpx transport that queues requests in Trio, in front of the connection pool.

httpcore assigns queued requests to connections by scanning every queued request against
every connection, on every request: with thousands of jobs polling at once, that scan took
all of a core (measured with py-spy at 2,000 jobs in flight, in the daemon and in the
simulator alike). Waiting here instead, at most `limit` requests deep, keeps the pool's own
queue empty. The limit should not exceed the pool's `max_connections`.
"""

from __future__ import annotations

import httpx
import trio


class QueuedTransport(httpx.AsyncBaseTransport):
    """Lets at most `limit` requests into `inner` at once; the rest wait their turn."""

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int) -> None:
        self._inner = inner
        self._limiter = trio.CapacityLimiter(limit)

    @property
    def waiting(self) -> int:
        return self._limiter.statistics().tasks_waiting

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with self._limiter:
            response = await self._inner.handle_async_request(request)
            # Read the body while holding the place: the connection is busy until then.
            await response.aread()
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def queued_client(
    *, limit: int, timeout: httpx.Timeout | float, **kwargs: object
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` whose pool holds `limit` connections behind a Trio queue."""
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    inner = httpx.AsyncHTTPTransport(limits=limits)
    return httpx.AsyncClient(
        transport=QueuedTransport(inner, limit),
        timeout=timeout,
        trust_env=False,
        **kwargs,  # type: ignore[arg-type]
    )
