"""Which target of an upstream a request goes to: priority, weight by Call-ID, health, fail
open (sip/choice.py)."""

from __future__ import annotations

from collections import Counter

from sipzone.sip.choice import Choice, Hop, choose
from sipzone.sip.values import Target

A = Target("udp", "192.0.2.1", 5060)
B = Target("udp", "192.0.2.2", 5060)
C = Target("udp", "192.0.2.3", 5070)
A6 = Target("udp", "2001:db8::1", 5060)


def everyone(_: Target) -> bool:
    return True


def test_the_lowest_priority_that_is_up_takes_the_requests() -> None:
    hops = [Hop(C, 30, 0, "c"), Hop(B, 20, 0, "b"), Hop(A, 10, 0, "a")]
    choice = choose(hops, everyone)
    assert choice is not None and choice.pick(b"x") == A and choice.spread is None
    assert choice.known == {("192.0.2.1", 5060), ("192.0.2.2", 5060), ("192.0.2.3", 5070)}
    down = {A}
    choice = choose(hops, lambda t: t not in down)
    assert choice is not None and choice.first == B and not choice.fail_open
    down = {A, B}
    choice = choose(hops, lambda t: t not in down)
    assert choice is not None and choice.first == C


def test_every_target_down_fails_open_to_the_first() -> None:
    hops = [Hop(B, 20, 0, "b"), Hop(A, 10, 5, "a")]
    choice = choose(hops, lambda _: False)
    assert choice is not None and choice.fail_open and choice.pick(b"call") == A
    assert choice.known == {("192.0.2.1", 5060), ("192.0.2.2", 5060)}
    assert choose([], everyone) is None


def test_weight_spreads_calls_and_keeps_each_call_on_one_target() -> None:
    hops = [Hop(A, 10, 3, "a"), Hop(B, 10, 1, "b"), Hop(C, 20, 100, "c")]
    choice = choose(hops, everyone)
    assert choice is not None and choice.targets == (A, B) and choice.spread == (3, 4)
    picks = Counter(choice.pick(b"call-%d@example" % i) for i in range(4000))
    assert set(picks) == {A, B}
    assert 2700 < picks[A] < 3300  # about three in four (crc32 spreads Call-IDs evenly)
    # Every request of a call (INVITE, CANCEL, ACK, BYE: one Call-ID) goes to one target.
    assert len({choice.pick(b"same-call") for _ in range(10)}) == 1


def test_weight_zero_takes_no_share_unless_all_are_zero() -> None:
    choice = choose([Hop(A, 10, 0, "a"), Hop(B, 10, 5, "b")], everyone)
    assert choice is not None
    assert {choice.pick(b"c%d" % i) for i in range(200)} == {B}
    choice = choose([Hop(A, 10, 0, "a"), Hop(B, 10, 0, "b")], everyone)
    assert choice is not None
    assert {choice.pick(b"c%d" % i) for i in range(200)} == {A, B}


def test_the_addresses_of_one_srv_target_are_alternatives_not_shares() -> None:
    hops = [Hop(A, 10, 1, "a.example"), Hop(A6, 10, 1, "a.example"), Hop(B, 10, 1, "b")]
    choice = choose(hops, everyone)
    assert choice is not None and choice.targets == (A, B)
    choice = choose(hops, lambda t: t != A)
    assert choice is not None and choice.targets == (A6, B)


def test_an_address_as_written_is_a_choice_of_one() -> None:
    choice = Choice.of(A)
    assert choice.pick(b"anything") == A and choice.known == {("192.0.2.1", 5060)}
