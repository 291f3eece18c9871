"""Cancelling upstream within a timeout: the one rule every caller shares.

A cancel stops paying for a prediction nobody will use; it must never hold up what
called it, so it gets a short timeout of its own, and its failure is a line in the
log, never an exception to handle. The job task, the sweeper and reconciliation all
cancel through `cancel_upstream`, so the log says the same thing whoever cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio

from ._provider_errors import ProviderError

log = structlog.get_logger("orchestrator.cancel")


async def cancel_upstream(
    cancel: Callable[[str], Awaitable[None]], prediction_id: str, timeout_s: float
) -> bool:
    """Cancel one prediction for at most `timeout_s`; whether the cancel was sent.

    `cancel` is a provider's `cancel` (possibly wrapped, to be counted).
    """
    reason = "timed out"
    with trio.move_on_after(timeout_s):
        try:
            await cancel(prediction_id)
        except ProviderError as exc:
            reason = exc.summary
        else:
            log.info("provider.canceled", prediction_id=prediction_id)
            return True
    log.warning("provider.cancel_failed", prediction_id=prediction_id, error=reason)
    return False
