"""Run an open Database on a Trio loop in a background thread.

Hypothesis's stateful machines are synchronous; the portal lets their rules
call the real (Trio) database code one operation at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar

import trio

from orchestrator.db import Database, open_database

T = TypeVar("T")


class Portal:
    def __init__(self, url: str) -> None:
        self._url = url
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.db: Database | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        assert self._token is not None

        async def run() -> T:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(run, trio_token=self._token)

    def _main(self) -> None:
        async def serve() -> None:
            try:
                async with open_database(self._url, min_size=1, max_size=4) as db:
                    self.db = db
                    self._stop = trio.Event()
                    self._token = trio.lowlevel.current_trio_token()
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                raise

        trio.run(serve)
