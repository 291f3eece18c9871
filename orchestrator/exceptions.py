"""Seeing through exception groups that are an implementation detail.

Trio wraps whatever a nursery's body raised in an ExceptionGroup. Where a
nursery is ours and not the caller's business (trio-asyncio's loop, the
daemon's root), the caller should get the one real error it can act on.
"""

from __future__ import annotations


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
