"""Cancelling upstream within a timeout: the one rule every caller shares.

A cancel stops paying for a prediction nobody will use; it must never hold up what
called it, so it gets a short timeout of its own, and its failure is a reason to log,
never an exception to handle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ._provider_errors import ProviderError


async def cancel_within(cancel: Callable[[], Awaitable[None]], timeout_s: float) -> str | None:
    """Run `cancel` for at most `timeout_s`; None once it is sent, else why not.

    `cancel` is a provider's `cancel` bound to one prediction (possibly wrapped, to be
    counted).
    """
    with trio.move_on_after(timeout_s):
        try:
            await cancel()
        except ProviderError as exc:
            return exc.summary
        return None
    return "timed out"
