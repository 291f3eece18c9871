"""The daemon's HTTP endpoints, as one small raw ASGI app served by hypercorn on Trio.

GET  /healthz                 200 while the process runs
GET  /readyz                  200 when the database answers, the schema is
                              current and the listener is connected; 503
                              with the failing checks otherwise
GET  /metrics                 Prometheus text format
POST /webhooks/{provider}     provider callbacks (when enabled)
GET  /ui, /ui/...             the read-only web view (orchestrator.ui), when enabled
GET  /renders/{job}/{i}.{ext} a delivered output, when outputs are files
                              (orchestrator.outputs.FileRoutes); 404 otherwise
GET  /inputs/{user}/{name}    a user's input image, when outputs are files and
                              the URL's signature is valid and unexpired
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import structlog
import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from orchestrator.asgi import lifespan, read_body
from orchestrator.metrics import CONTENT_TYPE, Metrics
from orchestrator.ui import WebUI
from orchestrator.webhooks import WebhookHandler

log = structlog.get_logger("orchestrator.http")

MAX_WEBHOOK_BODY: Final = 1 << 20
_READY_TIMEOUT_S: Final = 2.0

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


class FileRoutes(Protocol):
    """Routes that answer for themselves, streaming their bodies: stored files.

    `orchestrator.outputs.FileRoutes` implements it; declared here so that this edge
    does not import that one.
    """

    def handles(self, path: str) -> bool: ...

    async def __call__(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None: ...


class HttpApp:
    def __init__(
        self,
        *,
        metrics: Metrics,
        readiness: ReadinessCheck,
        webhooks: WebhookHandler | None,
        ui: WebUI | None = None,
        files: FileRoutes | None = None,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._webhooks = webhooks
        self._ui = ui
        self._files = files

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if self._files is not None and self._files.handles(path):
            await self._files(scope, receive, send)
            return
        if self._ui is not None and (path == "/ui" or path.startswith("/ui/")):
            page = await self._ui.handle(scope["method"], path, scope["query_string"])
            headers = [*self._ui.headers, (b"content-length", str(len(page.body)).encode())]
            if page.status == 405:  # noqa: PLR2004
                headers.append((b"allow", b"GET"))
            status, body = page.status, page.body
        else:
            status, content_type, body = await self._route(scope, receive)
            headers = [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": headers,
                "trailers": False,
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _route(
        self, scope: HTTPScope, receive: ASGIReceiveCallable
    ) -> tuple[int, str, bytes]:
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/healthz":
            return _json(200, {"status": "ok"})
        if method == "GET" and path == "/readyz":
            return await self._ready()
        if method == "GET" and path == "/metrics":
            return 200, CONTENT_TYPE, self._metrics.render()
        if path.startswith("/webhooks/") and self._webhooks is not None:
            if method != "POST":
                return _json(405, {"error": "use POST"})
            return await self._webhook(scope, receive, path.removeprefix("/webhooks/"))
        return _json(404, {"error": "not found"})

    async def _ready(self) -> tuple[int, str, bytes]:
        checks: dict[str, bool]
        with trio.move_on_after(_READY_TIMEOUT_S) as scope:
            try:
                checks = await self._readiness()
            except Exception:  # noqa: BLE001  (any failure to check is "not ready")
                checks = {"database": False}
        if scope.cancelled_caught:
            checks = {"database": False}
        ok = all(checks.values())
        return _json(200 if ok else 503, {"ready": ok, "checks": checks})

    async def _webhook(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, provider: str
    ) -> tuple[int, str, bytes]:
        assert self._webhooks is not None  # noqa: S101
        body = await read_body(receive, MAX_WEBHOOK_BODY)
        if body is None:
            return _json(413, {"error": "body too large"})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = urllib.parse.parse_qs(scope["query_string"].decode("latin-1"))
        job_param = query.get("job_id", [None])[0]
        idx_param = query.get("idx", [None])[0]
        reply = await self._webhooks.handle(provider, headers, job_param, body, idx_param=idx_param)
        return _json(reply.status, {"result": reply.result})


def _json(status: int, payload: object) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(payload).encode()
