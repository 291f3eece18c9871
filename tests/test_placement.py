"""Rendezvous placement of partition slots: every member computes the same owners, and
a join or a leave moves only about 1/N of the slots, and only to or from that member."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core import SLOTS
from orchestrator.placement import moved, plan_round, target_owner, targets

names = st.text(alphabet="abcdefghij0123456789:.-", min_size=1, max_size=12)
crowds = st.lists(names, min_size=2, max_size=8, unique=True)


def test_every_slot_has_one_target_and_the_order_of_members_does_not_matter():
    members = ["host-a:1:aa", "host-b:2:bb", "host-c:3:cc"]
    forward = targets(members)
    backward = targets(list(reversed(members)))
    assert forward == backward
    assert set(forward) == set(range(SLOTS))
    assert set(forward.values()) == set(members)


def test_three_members_each_get_about_a_third():
    owners = list(targets(["a:1:x", "b:2:y", "c:3:z"]).values())
    shares = [owners.count(member) / SLOTS for member in ("a:1:x", "b:2:y", "c:3:z")]
    assert all(0.25 < share < 0.42 for share in shares), shares


def test_nobody_alive_means_no_targets():
    assert targets([]) == {}
    assert target_owner(7, []) is None


@settings(max_examples=40, deadline=None)
@given(crowd=crowds, newcomer=names)
def test_a_join_moves_slots_only_to_the_newcomer_and_about_one_in_n(crowd, newcomer):
    if newcomer in crowd:
        return
    before = targets(crowd)
    after = targets([*crowd, newcomer])
    changed = [slot for slot in before if before[slot] != after[slot]]
    assert all(after[slot] == newcomer for slot in changed)
    share = len(changed) / SLOTS
    expected = 1 / (len(crowd) + 1)
    assert expected / 2 < share < expected * 1.6, (share, expected)


@settings(max_examples=40, deadline=None)
@given(crowd=crowds)
def test_a_leave_moves_only_the_leavers_slots(crowd):
    leaver = crowd[0]
    before = targets(crowd)
    after = targets(crowd[1:])
    changed = {slot for slot in before if before[slot] != after[slot]}
    assert changed == {slot for slot, owner in before.items() if owner == leaver}
    assert moved(before, after) == len(changed)


def test_a_round_gives_up_at_most_the_cap_and_keeps_the_rest():
    me, other = "a:1:x", "b:2:y"
    everything = range(SLOTS)
    plan = plan_round(me, [me, other], everything, max_release=64)
    assert len(plan.release) == 64
    assert len(plan.keep) == SLOTS - 64
    assert not set(plan.keep) & set(plan.release)
    assert plan.take == ()  # it holds all of its targets already
    theirs = {slot for slot, owner in targets([me, other]).items() if owner == other}
    assert set(plan.release) <= theirs


def test_a_round_asks_for_its_targets_it_does_not_hold():
    me = "a:1:x"
    plan = plan_round(me, [], [], max_release=64)  # alone: everything is ours
    assert plan.take == tuple(range(SLOTS))
    assert plan.keep == plan.release == ()


def test_a_leaving_member_keeps_nothing():
    plan = plan_round("a:1:x", ["a:1:x"], [1, 2, 3], max_release=1, leaving=True)
    assert plan == plan.__class__(keep=(), take=(), release=(1, 2, 3))
