"""Unit tests of the pure escrow rules (``allocation.rules``): each step keeps ``sum(granted) <= available``
and no write lets a connection sell more than its grant (test_allocation_model.py checks the whole system)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocation.rules import (
    WRITE_MODES,
    Holder,
    Write,
    after_cancellation,
    after_sale,
    allocate,
    cas_retarget,
    decay,
    mirror,
    shares,
)


def test_a_sale_lowers_the_grant_never_below_zero() -> None:
    assert after_sale(5, 2) == 3
    assert after_sale(2, 2) == 0
    assert after_sale(1, 3) == 0


def test_a_cancellation_gives_the_units_back() -> None:
    assert after_cancellation(0, 2) == 2
    assert after_cancellation(3, 1) == 4


@pytest.mark.parametrize(
    ("expect", "current", "quantity", "shown"),
    [
        (3, 3, 5, 5),  # what we expected: the plain raise
        (3, 1, 5, 3),  # sold 2 unheard of: those 2 plus the 3 it now shows make the grant, 5
        (3, 0, 5, 2),  # sold everything unheard of: only the raise
        (3, 7, 5, 5),  # shows more than its grant (units it put back itself): not ours to count on
        (0, 0, 4, 4),
    ],
)
def test_cas_retarget(expect: int, current: int, quantity: int, shown: int) -> None:
    assert cas_retarget(expect, current, quantity) == shown


@given(expect=st.integers(0, 50), current=st.integers(0, 60), raise_by=st.integers(1, 20))
def test_cas_retarget_never_exceeds_the_new_grant_with_the_sales_unheard_of(
    expect: int, current: int, raise_by: int
) -> None:
    shown = cas_retarget(expect, current, expect + raise_by)
    unheard = max(0, expect - current)  # what it sold that the grant `expect` still counted
    assert shown >= 0
    assert shown + unheard <= expect + raise_by


def test_shares_splits_by_score_in_whole_units() -> None:
    assert shares(5, {"a": 1.0, "b": 1.0}) == {"a": 3, "b": 2}  # tie: the id breaks it
    assert shares(4, {"a": 3.0, "b": 1.0}) == {"a": 3, "b": 1}
    assert shares(0, {"a": 1.0}) == {"a": 0}
    assert shares(3, {"a": 0.0, "b": 0.0}) == {"a": 2, "b": 1}  # no score: evenly
    assert shares(3, {}) == {}


@given(total=st.integers(0, 100), scores=st.dictionaries(st.text(max_size=3), st.floats(0, 10), max_size=9))
def test_shares_adds_up(total: int, scores: dict[str, float]) -> None:
    out = shares(total, scores)
    assert set(out) == set(scores)
    assert all(n >= 0 for n in out.values())
    if scores:
        assert sum(out.values()) == total


def test_decay_halves_per_half_life() -> None:
    assert decay(8.0, 60.0) == pytest.approx(4.0)
    assert decay(8.0, 0.0) == 8.0
    assert decay(8.0, -5.0) == 8.0


def test_first_allocation_spreads_half_and_writes_absolute_and_cas() -> None:
    alloc = allocate(10, [Holder("shop", "cas"), Holder("ebay", "absolute")])
    assert sum(alloc.granted.values()) == 5
    assert alloc.slack == 5
    by = {w.connection_id: w for w in alloc.writes}
    assert by["shop"] == Write("shop", alloc.granted["shop"], 0)
    assert by["ebay"] == Write("ebay", alloc.granted["ebay"], None)


def test_an_absolute_connection_with_units_left_is_not_raised() -> None:
    alloc = allocate(20, [Holder("ebay", "absolute", granted=1), Holder("shop", "cas", granted=1)])
    assert alloc.granted["ebay"] == 1
    assert [w.connection_id for w in alloc.writes] == ["shop"]
    assert alloc.writes[0].expect == 1


def test_grants_above_the_count_are_kept_and_nothing_is_raised() -> None:
    alloc = allocate(3, [Holder("a", "cas", granted=4), Holder("b", "cas", granted=0)])
    assert alloc.granted == {"a": 4, "b": 0}
    assert alloc.writes == ()
    assert alloc.slack == -1


def test_an_inactive_connection_keeps_its_grant_and_is_never_written() -> None:
    alloc = allocate(10, [Holder("gone", "cas", granted=2, active=False), Holder("a", "cas")])
    assert alloc.granted["gone"] == 2
    assert all(w.connection_id == "a" for w in alloc.writes)


def test_the_buffer_is_never_granted() -> None:
    alloc = allocate(4, [Holder("a", "cas", granted=1)], buffer=3, spread=1.0)
    assert alloc.pool == 1
    assert alloc.granted == {"a": 1}
    assert alloc.writes == ()


holders = st.lists(
    st.builds(
        Holder,
        connection_id=st.sampled_from([f"c{i}" for i in range(9)]),
        mode=st.sampled_from(WRITE_MODES),
        granted=st.integers(0, 30),
        weight=st.floats(0, 3),
        buffer=st.integers(0, 3),
        velocity=st.floats(0, 20),
        active=st.booleans(),
    ),
    max_size=9,
    unique_by=lambda h: h.connection_id,
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    available=st.integers(-5, 80),
    hs=holders,
    buffer=st.integers(0, 5),
    spread=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
)
def test_allocate_only_raises_within_the_slack_through_safe_writes(
    available: int, hs: list[Holder], buffer: int, spread: float
) -> None:
    alloc = allocate(available, hs, buffer=buffer, spread=spread)
    pool = max(0, available - buffer)
    before = {h.connection_id: h.granted for h in hs}
    written = {w.connection_id: w for w in alloc.writes}
    assert len(written) == len(alloc.writes)
    if sum(before.values()) <= pool:
        assert sum(alloc.granted.values()) <= pool
    else:
        assert alloc.writes == ()
    for h in hs:
        cid = h.connection_id
        w = written.get(cid)
        if w is None:
            assert alloc.granted[cid] == before[cid]
            continue
        assert h.active
        assert w.quantity == alloc.granted[cid] > before[cid]
        assert w.delta == alloc.granted[cid] - before[cid]
        assert alloc.granted[cid] <= alloc.targets[cid]  # never raised past its share
        if h.mode == "absolute":
            assert before[cid] == 0
            assert w.expect is None
        else:
            assert w.expect == before[cid]


def test_mirror_shows_every_connection_the_whole_count() -> None:
    writes = mirror(
        7,
        [
            Holder("a", "cas", granted=3),
            Holder("b", "absolute", buffer=2, weight=0.5),
            Holder("c", "cas", active=False),
        ],
        buffer=1,
    )
    assert writes == (Write("a", 6), Write("b", 2))
