"""Coalesced polling: one paged listing of the provider's predictions serves every job.

Without webhooks, polling each prediction costs one request per job per poll, which at
thousands in flight exceeds both the provider's request limits and our CPU. Replicate lists
an account's predictions newest first, a hundred a page, so a sweep of a few pages sees
every prediction we wait for. Job tasks register what they wait for; each sweep pages
until it has seen them all (or its page budget is spent) and hands each ended prediction
to its task. The tasks keep a slow poll of their own as a safety net.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import structlog
import trio

from orchestrator.core import Prediction, Provider, ProviderError

from ._capacity import RateBudget

log = structlog.get_logger("actors.watch")

_PAGE_SIZE: Final = 100


def page_budget(watched: int, *, page_size: int = _PAGE_SIZE, cap: int) -> int:
    """Pages one sweep may read: enough for every watched prediction twice over, capped.

    Ended predictions of the same recent window sit between ours, hence the slack.
    """
    return min(cap, 2 * math.ceil(watched / page_size) + 1) if watched else 0


class ListingWatch:
    """Sweeps the provider's listing for the predictions job tasks wait for.

    Args:
        provider: Lists pages through `Provider.list_page`.
        interval_s: Pause between sweeps.
        max_pages: At most this many pages a sweep.
        polls: The provider request budget each page draws from, if any.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        interval_s: float,
        max_pages: int = 200,
        polls: RateBudget | None = None,
    ) -> None:
        self._provider = provider
        self._interval_s = interval_s
        self._max_pages = max_pages
        self._polls = polls
        self._watched: dict[str, Callable[[Prediction], None]] = {}
        self.sweeps = 0
        self.pages = 0

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, prediction_id: str, ended: Callable[[Prediction], None]) -> None:
        """Call `ended` (once) when a sweep sees the prediction terminal."""
        self._watched[prediction_id] = ended

    def unwatch(self, prediction_id: str) -> None:
        self._watched.pop(prediction_id, None)

    async def run(self) -> None:
        while True:
            await trio.sleep(self._interval_s)
            if self._watched:
                try:
                    await self.sweep()
                except ProviderError as exc:
                    log.info("provider.retry", operation="list", error=exc.summary)

    async def sweep(self) -> int:
        """One sweep; returns how many watched predictions it saw end.

        Raises:
            ProviderError: A page could not be read; the next sweep starts over.
        """
        self.sweeps += 1
        unseen = set(self._watched)
        ended = 0
        cursor: str | None = None
        for _ in range(page_budget(len(unseen), cap=self._max_pages)):
            if self._polls is not None:
                await self._polls.take()
            page, cursor = await self._provider.list_page(cursor)
            self.pages += 1
            for prediction in page:
                if prediction.id not in unseen:
                    continue
                unseen.discard(prediction.id)
                if prediction.status.terminal:
                    callback = self._watched.pop(prediction.id, None)
                    if callback is not None:
                        callback(prediction)
                        ended += 1
            if cursor is None or not unseen:
                break
        return ended
