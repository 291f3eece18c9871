"""Group commit: calls that arrive while one batch runs go together as the next.

No timer and no background task. The first caller finding nothing in flight runs its
batch at once, so an idle daemon adds no latency. Callers arriving meanwhile queue; when
a batch ends, the oldest of them leads the queue as the next batch, so nobody serves
other callers' batches after its own is done. Batches never overlap, so two batches can
never take the same rows' locks in opposite orders.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Generic, TypeVar

import attrs
import trio

from ._errors import DbUnavailable

Item = TypeVar("Item")
Result = TypeVar("Result")

_BATCH_LIMIT_S: Final = 30.0


@attrs.define
class _Slot(Generic[Item, Result]):
    item: Item
    turn: trio.Event = attrs.Factory(trio.Event)
    finished: bool = False
    result: Result | None = None
    error: BaseException | None = None


class GroupCommit(Generic[Item, Result]):
    """Runs `batch` over the items that queued while the previous batch ran.

    `batch` returns one result per item, in order. When it raises, each item of that
    batch is run alone through `single`, so one bad item fails only its own caller.
    A call is shielded from cancellation (others may be waiting on its batch) and
    bounded: a batch still running after 30 s fails its callers with `DbUnavailable`.
    """

    def __init__(
        self,
        batch: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        single: Callable[[Item], Awaitable[Result]],
        *,
        max_batch: int = 128,
    ) -> None:
        self._batch = batch
        self._single = single
        self._max_batch = max_batch
        self._queue: list[_Slot[Item, Result]] = []
        self._leading = False
        self.batches = 0

    async def submit(self, item: Item) -> Result:
        slot: _Slot[Item, Result] = _Slot(item)
        self._queue.append(slot)
        with trio.CancelScope(shield=True):
            if self._leading:
                await slot.turn.wait()
            if not slot.finished:
                await self._lead()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    async def _lead(self) -> None:
        self._leading = True
        slots = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        try:
            with trio.move_on_after(_BATCH_LIMIT_S) as scope:
                await self._run(slots)
            if scope.cancelled_caught:
                for slot in slots:
                    if not slot.finished:
                        self._end(slot, error=DbUnavailable("a batch of writes timed out"))
        finally:
            if self._queue:
                self._queue[0].turn.set()  # the oldest waiter leads the next batch
            else:
                self._leading = False

    async def _run(self, slots: list[_Slot[Item, Result]]) -> None:
        self.batches += 1
        results: Sequence[Result] = ()
        if len(slots) > 1:
            try:
                results = await self._batch([slot.item for slot in slots])
            except Exception:  # noqa: BLE001 -- each item then meets its own error alone
                results = ()
        if len(results) == len(slots):
            for slot, result in zip(slots, results, strict=True):
                self._end(slot, result=result)
            return
        for slot in slots:
            try:
                self._end(slot, result=await self._single(slot.item))
            except Exception as exc:  # noqa: BLE001 -- handed to its caller
                self._end(slot, error=exc)

    @staticmethod
    def _end(
        slot: _Slot[Item, Result],
        *,
        result: Result | None = None,
        error: BaseException | None = None,
    ) -> None:
        slot.finished = True
        slot.result = result
        slot.error = error
        slot.turn.set()
