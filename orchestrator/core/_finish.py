"""Ending an admitted job: the one path the job task and the sweeper share.

`settle` decides what an ending means (status, code, message, refund, outputs);
the store's `finish` writes it in one transaction, under the caller's fence.
"""

from __future__ import annotations

from ._lifecycle import Ending, Fence, Finish, Job, Settlement, settle
from ._ports import JobStore


async def finish(
    store: JobStore, job: Job, ending: Ending, *, fence: Fence | None
) -> tuple[Settlement, Finish]:
    """Store how `job` ended; what was decided, and what the store did (a no-op if ended)."""
    settlement = settle(job, ending)
    done = await store.finish(
        job.id,
        settlement.status,
        code=settlement.code,
        message=settlement.message,
        outputs=settlement.outputs,
        fence=fence,
    )
    return settlement, done
