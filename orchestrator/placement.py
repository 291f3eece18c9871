"""Which daemon should own which partition slot: rendezvous hashing, and a round's plan.

Pure functions over values. Every member computes the same target owner for a
slot from the same list of live members (highest random weight: the member
whose hash with the slot is largest), so a join or a leave moves only the slots
whose winner changed, about 1/N of them. A round's plan caps how many slots a
member gives up at once, so a rolling deploy moves slots gradually.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import attrs

from orchestrator.core import ALL_SLOTS


def weight(member: str, slot: int) -> int:
    """The member's rendezvous weight for the slot: stable across processes and versions."""
    digest = hashlib.blake2b(f"{slot}:{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def target_owner(slot: int, members: Sequence[str]) -> str | None:
    """The live member that should own `slot`; None when nobody is alive."""
    if not members:
        return None
    return max(members, key=lambda member: (weight(member, slot), member))


def targets(members: Sequence[str], slots: Iterable[int] = ALL_SLOTS) -> dict[int, str]:
    """Every slot's target owner among `members` (empty when there are none)."""
    if not members:
        return {}
    return {slot: target_owner(slot, members) or "" for slot in slots}


@attrs.frozen
class RoundPlan:
    """What a member asks for in one lease round."""

    keep: tuple[int, ...]
    take: tuple[int, ...]
    release: tuple[int, ...]


def plan_round(
    me: str,
    members: Sequence[str],
    held: Iterable[int],
    *,
    max_release: int,
    leaving: bool = False,
) -> RoundPlan:
    """Keep what is ours, ask for our targets, give up at most `max_release` others.

    The member itself always counts as live (it is heartbeating in this very
    round). Asking for a slot another member still holds is harmless: the
    round takes only free or expired ones. A leaving member keeps nothing.
    """
    held = sorted(set(held))
    if leaving:
        return RoundPlan(keep=(), take=(), release=tuple(held))
    live = sorted(set(members) | {me})
    wanted = {slot for slot, owner in targets(live).items() if owner == me}
    surplus = [slot for slot in held if slot not in wanted]
    release = tuple(surplus[:max_release])
    keep = tuple(slot for slot in held if slot not in release)
    take = tuple(sorted(wanted.difference(held)))
    return RoundPlan(keep=keep, take=take, release=release)


def moved(before: Mapping[int, str], after: Mapping[int, str]) -> int:
    """How many slots change owner between two assignments."""
    return sum(1 for slot, owner in after.items() if before.get(slot) != owner)
