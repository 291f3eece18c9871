"""Exceptions as the daemon sees them: expected faults apart from bugs, groups seen through.

Trio wraps whatever a nursery's body raised in an ExceptionGroup. Where a
nursery is ours and not the caller's business (trio-asyncio's loop, the
daemon's root), the caller should get the one real error it can act on.
"""

from __future__ import annotations

import trio


class ExpectedFault(Exception):
    """A failure the daemon is built to ride out, logged as one warning line.

    A provider 5xx, a dropped connection, a Postgres restart; a traceback means a bug.
    """


class FencedOff(Exception):
    """This daemon's lease on the job's partition slot is gone: another may own it now.

    The write was refused as a whole. The job is not ours to settle: drop its task,
    refund nothing, and leave it to the slot's new owner.
    """


def is_expected(exc: BaseException) -> bool:
    """Whether `exc` (every leaf of it, for a group) is a fault we expect, not a bug."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_expected(leaf) for leaf in exc.exceptions)
    return isinstance(exc, ExpectedFault | OSError | trio.TooSlowError)


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The group's only leaf exception, or the group itself when there are several."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop()
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    return leaves[0] if len(leaves) == 1 else group
