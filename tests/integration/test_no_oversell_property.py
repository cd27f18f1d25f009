"""No oversell, as a property over random streams applied to the real database.

For any stream of sales (from any channel) and cancellations, cut into batches at random places: every
outcome equals a plain model's (a sale is accepted iff it fits in what is available; a cancellation
restocks iff its sale was accepted, and the cancellations of one sale together at most what it took),
accepted <= available at every step, and the final count is initial - accepted sales + restocks, never below
zero.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection

from processor.store import apply_batch
from schemas.base import Channel
from schemas.inventory_events import AnyInventoryEvent, OrderCancelled, OrderPlaced, StockCounted

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)
CHANNELS: tuple[Channel, ...] = ("shopify", "amazon", "ebay", "woocommerce", "etsy")


@dataclass(frozen=True)
class Sale:
    quantity: int
    channel: Channel


@dataclass(frozen=True)
class Cancel:
    of: int  # index into the sales so far (modulo their number)


ops = st.lists(
    st.one_of(
        st.builds(Sale, st.integers(1, 5), st.sampled_from(CHANNELS)),
        st.builds(Cancel, st.integers(0, 1000)),
    ),
    max_size=40,
)


def build(sku: str, initial: int, steps: list[Sale | Cancel]) -> list[AnyInventoryEvent]:
    events: list[AnyInventoryEvent] = [
        StockCounted(
            event_id=f"count:{sku}", tenant="prop", sku=sku, quantity=initial, occurred_at=T0, received_at=T0
        )
    ]
    sales: list[OrderPlaced] = []
    for i, step in enumerate(steps, start=1):
        at = T0 + timedelta(seconds=i)
        if isinstance(step, Sale):
            conn = f"{step.channel}-1"
            sale = OrderPlaced(
                event_id=f"{conn}:order:{sku}-{i}:line:1",
                tenant="prop",
                sku=sku,
                quantity=step.quantity,
                connection_id=conn,
                channel=step.channel,
                order_id=f"{sku}-{i}",
                line_id="1",
                occurred_at=at,
                received_at=at,
            )
            sales.append(sale)
            events.append(sale)
        elif sales:
            sale = sales[step.of % len(sales)]
            events.append(
                OrderCancelled(
                    event_id=f"{sale.connection_id}:cancel:{sale.order_id}:{i}",
                    tenant="prop",
                    sku=sku,
                    quantity=sale.quantity,
                    connection_id=sale.connection_id,
                    channel=sale.channel,
                    order_id=sale.order_id,
                    line_id="1",
                    sale_event_id=sale.event_id,
                    occurred_at=at,
                    received_at=at,
                )
            )
    return events


def model(initial: int, events: list[AnyInventoryEvent]) -> tuple[list[str], int, int, int]:
    """(outcomes, final, accepted units, restocked units) by the rules, with no database."""
    available, accepted, restocked = initial, 0, 0
    left: dict[str, int] = {}  # accepted sale -> units not restocked yet
    outcomes = ["applied"]
    for e in events[1:]:
        if isinstance(e, OrderPlaced):
            if e.quantity <= available:
                available -= e.quantity
                accepted += e.quantity
                left[e.event_id] = e.quantity
                outcomes.append("applied")
            else:
                outcomes.append("rejected")
        elif isinstance(e, OrderCancelled):
            back = min(e.quantity, left.get(e.sale_event_id, 0))
            if back > 0:
                available += back
                restocked += back
                left[e.sale_event_id] -= back
                outcomes.append("applied")
            else:
                outcomes.append("ignored")
    return outcomes, available, accepted, restocked


async def apply_in_batches(database_url: str, events: list[AnyInventoryEvent], cuts: list[int]) -> None:
    bounds = sorted({0, len(events), *(c % (len(events) + 1) for c in cuts)})
    async with await AsyncConnection.connect(database_url) as conn:
        for lo, hi in itertools.pairwise(bounds):
            async with conn.transaction():
                await apply_batch(conn, events[lo:hi])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.integers(0, 15), steps=ops, cuts=st.lists(st.integers(0, 60), max_size=6))
def test_no_stream_can_oversell(
    database_url: str, initial: int, steps: list[Sale | Cancel], cuts: list[int]
) -> None:
    sku = f"P-{uuid.uuid4().hex[:10]}"  # one database for all examples: each example has its own SKU
    events = build(sku, initial, steps)
    asyncio.run(apply_in_batches(database_url, events, cuts))
    outcomes, final, accepted, restocked = model(initial, events)
    with psycopg.connect(database_url) as conn:
        trail = conn.execute(
            "SELECT kind, outcome, delta, before, after FROM ledger WHERE sku = %s ORDER BY id", (sku,)
        ).fetchall()
        (available,) = conn.execute("SELECT available FROM inventory WHERE sku = %s", (sku,)).fetchone() or (
            None,
        )
    assert [row[1] for row in trail] == outcomes
    for kind, outcome, delta, before, after in trail[1:]:
        if kind == "order_placed" and outcome == "applied":
            assert before >= -delta  # accepted <= available at that step
            assert after == before + delta >= 0
        if kind == "order_placed" and outcome == "rejected":
            assert before < -delta
            assert after == before
    assert available == final == initial - accepted + restocked
    assert available >= 0
