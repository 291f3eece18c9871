"""A user's bounded inbox that never blocks the sender.

Intake delivers to thousands of users from one task, so a busy user must not
stall it: `offer` is synchronous and says at once whether the message was
taken. A job already waiting in the mailbox is not queued twice, so the
notification and the catch-up scan finding the same job cost one admission.
"""

from __future__ import annotations

import enum
import uuid

import trio

from ._messages import Cancel, Message


class Offer(enum.Enum):
    ACCEPTED = "accepted"
    ALREADY_PENDING = "already_pending"
    FULL = "full"
    CLOSED = "closed"


class Mailbox:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self._send, self._receive = trio.open_memory_channel[Message](size)
        self._pending: set[tuple[type[Message], uuid.UUID]] = set()

    def offer(self, message: Message) -> Offer:
        key = (type(message), message.job_id)
        if key in self._pending:
            return Offer.ALREADY_PENDING
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            return Offer.FULL
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return Offer.CLOSED
        if not isinstance(message, Cancel):
            self._pending.add(key)
        return Offer.ACCEPTED

    async def receive(self) -> Message:
        """The next message; raises `trio.EndOfChannel` once closed and empty."""
        return await self._receive.receive()

    def done(self, message: Message) -> None:
        self._pending.discard((type(message), message.job_id))

    def close(self) -> None:
        self._send.close()

    @property
    def depth(self) -> int:
        return self._receive.statistics().current_buffer_used
