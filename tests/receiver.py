"""A callback receiver for tests: an app's webhook endpoint on loopback, verifying signatures.

It answers each POST as told (200 by default; a status; or hold the request open until
released), and keeps every request with whether its Standard Webhooks signature held.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import attrs
import hypercorn.config
import hypercorn.trio
import trio
from standardwebhooks import Webhook, WebhookVerificationError

from orchestrator.asgi import lifespan, read_body

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, base64: a test secret


@attrs.define
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int | None = None  # what it was answered; None while held

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def data(self) -> dict[str, object]:
        envelope = json.loads(self.body)
        assert envelope["type"] == "job.ended"
        data: dict[str, object] = envelope["data"]
        return data


@attrs.define
class Receiver:
    """What came in, and how to answer what comes next."""

    secret: str = SECRET
    requests: list[Received] = attrs.Factory(list)
    # Given each request, the status to answer, or None to hold it until `release`.
    answer: Callable[[Received], int | None] = lambda _request: 200
    released: trio.Event = attrs.Factory(trio.Event)
    arrived: trio.Event = attrs.Factory(trio.Event)
    url: str = ""

    def delivered(self) -> list[Received]:
        """Requests that were answered 2xx, in arrival order."""
        return [r for r in self.requests if r.status is not None and 200 <= r.status < 300]

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive, 1 << 20) or b""
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        request = Received(scope["path"], headers, body, verified)
        self.requests.append(request)
        self.arrived.set()
        self.arrived = trio.Event()
        status = self.answer(request)
        if status is None:
            await self.released.wait()
            status = 200
        request.status = status
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def wait_for(self, count: int, timeout: float = 15) -> None:
        with trio.fail_after(timeout):
            while len(self.requests) < count:
                await self.arrived.wait()


async def start_receiver(nursery: trio.Nursery, receiver: Receiver | None = None) -> Receiver:
    app = receiver or Receiver()
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.1
    binds = await nursery.start(functools.partial(hypercorn.trio.serve, app, config))
    app.url = binds[0]
    return app
