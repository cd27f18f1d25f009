"""processor.rules with agent holds (issue 16), pure: a hold under never_cancel never takes a unit a
marketplace was granted, so no order a storefront takes within its grant is refused because an agent
held stock.

One SKU, `available` units, up to three marketplace connections with grants that the allocation left within
the stock (``sum(granted) + buffer <= available``). Random streams, cut into random batches, of: storefront
sales within what each connection may still sell (its grant, as the fan-out's writes guarantee), agent holds
of any size, commits and releases of earlier holds (in any order, twice, or of holds that were refused).
Between batches the grants the batch moved are carried over as processor.allocate would write them.

Checked after every batch: no sale was refused, the master never went below zero, the escrow invariant
still holds, every hold's units are accounted for (held + committed + the master = the stock), and a
release or a commit acts at most once. With the hold's check switched off (holds see the whole count, as
under mirror), the same check finds a refused sale: the test can fail.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import processor.rules as rules
from processor.rules import Known, Master, Reservation, Spend, decide_batch
from schemas.inventory_events import (
    AnyInventoryEvent,
    OrderPlaced,
    ReservationCommitted,
    ReservationHeld,
    ReservationReleased,
    reservation_event_id,
)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
KEY = ("acme", "SKU-1")
CONNECTIONS = ("shop-a", "shop-b", "shop-c")


def _rid(n: int) -> str:
    return f"rsv_{n:032x}"


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    available = draw(st.integers(0, 30))
    buffer = draw(st.integers(0, min(3, available)))
    grants: dict[str, int] = {}
    room = max(0, available - buffer)
    for c in CONNECTIONS[: draw(st.integers(1, 3))]:
        grants[c] = draw(st.integers(0, room))
        room -= grants[c]
    ops = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("sale"), st.sampled_from(list(grants)), st.integers(1, 4)),
                st.tuples(st.just("hold"), st.integers(0, 7), st.integers(1, 6)),
                st.tuples(st.just("commit"), st.integers(0, 7), st.booleans()),
                st.tuples(st.just("release"), st.integers(0, 7), st.booleans()),
            ),
            max_size=40,
        )
    )
    cuts = draw(st.lists(st.integers(0, len(ops)), max_size=6))
    return {"available": available, "buffer": buffer, "grants": grants, "ops": ops, "cuts": sorted(cuts)}


def _run(world: dict[str, Any]) -> None:
    master = Master(world["available"], 1)
    grants: dict[str, int] = dict(world["grants"])
    stock = world["available"]
    reservations: dict[str, Reservation] = {}
    seen: set[str] = set()
    sold_by_storefronts = 0
    clock = T0
    n = 0
    events: list[AnyInventoryEvent] = []
    for op in world["ops"]:
        n += 1
        clock += timedelta(milliseconds=10)
        common = {"tenant": KEY[0], "sku": KEY[1], "occurred_at": clock, "received_at": clock}
        if op[0] == "sale":
            _, conn, q = op
            shown = grants[conn] - sum(  # what it may still sell: its grant less its sales in flight
                e.quantity for e in events if isinstance(e, OrderPlaced) and e.connection_id == conn
            )
            if q > shown:
                continue  # the storefront shows fewer: this buyer cannot order that many
            events.append(
                OrderPlaced(
                    event_id=f"{conn}:order:{n}",
                    quantity=q,
                    connection_id=conn,
                    channel="shopify",
                    order_id=str(n),
                    line_id="1",
                    **common,
                )
            )
        elif op[0] == "hold":
            _, which, q = op
            events.append(
                ReservationHeld(
                    event_id=reservation_event_id(_rid(which), "hold"),
                    quantity=q,
                    reservation_id=_rid(which),
                    expires_at=T0 + timedelta(hours=1),
                    **common,
                )
            )
        else:
            kind, which, _twice = op
            cls = ReservationCommitted if kind == "commit" else ReservationReleased
            extra = {} if kind == "commit" else {"reason": "released"}
            events.append(
                cls(
                    event_id=reservation_event_id(_rid(which), "commit" if kind == "commit" else "release"),
                    quantity=1,
                    reservation_id=_rid(which),
                    **extra,
                    **common,
                )
            )
    bounds = [0, *world["cuts"], len(events)]
    for start, end in pairwise(bounds):
        batch = events[start:end]
        if not batch:
            continue
        known = Known(
            processed=set(seen),
            reservations={rid: r for rid, r in reservations.items()},
            spend={KEY: Spend("never_cancel", world["buffer"], dict(grants))}
            if any(isinstance(e, ReservationHeld) for e in batch)
            else {},
        )
        # grants move with the batch's sales whether or not it holds (as processor.allocate moves them)
        decided = decide_batch(batch, {KEY: master}, known)
        for d in decided.decisions:
            e = d.event
            if d.outcome == "duplicate":
                continue
            seen.add(e.event_id)
            if isinstance(e, OrderPlaced):
                assert d.outcome == "applied", f"a storefront's sale was refused: {e} ({master})"
                grants[e.connection_id] = max(0, grants[e.connection_id] - e.quantity)
                sold_by_storefronts += e.quantity
        for rid, r in decided.reservations.items():
            r.existed, r.changed = True, False
            reservations[rid] = r
        assert master.available >= 0
        assert sum(grants.values()) + world["buffer"] <= master.available, (grants, master)
        held = sum(r.quantity for r in reservations.values() if r.state == "held")
        committed = sum(r.quantity for r in reservations.values() if r.state == "committed")
        assert master.available + held + committed + sold_by_storefronts == stock


@settings(max_examples=400, deadline=None)
@given(world=worlds())
def test_agent_holds_never_make_the_master_refuse_a_storefronts_sale(world: dict[str, Any]) -> None:
    _run(world)


def test_with_the_holds_check_switched_off_a_storefronts_sale_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # holds see the count less the buffer, ignoring what marketplaces were granted (what mirror shows)
    monkeypatch.setattr(
        rules, "agent_visible", lambda available, *, policy, buffer=0, granted=0: available - buffer
    )
    with pytest.raises(AssertionError, match=r"refused|<="):
        settings(max_examples=400, deadline=None, report_multiple_bugs=False)(given(world=worlds())(_run))()
