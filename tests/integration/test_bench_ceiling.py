"""The bench's set-based ceiling (lab.bench.ceiling) against the real rules on real PostgreSQL: on a stream
the rules apply whole, both leave the same master rows, ledger and claimed ids."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from lab.bench.ceiling import apply_set_based, ceiling_rate, seed_rows
from processor.store import apply_batch
from schemas.base import Channel
from schemas.inventory_events import (
    AnyInventoryEvent,
    OrderCancelled,
    OrderPlaced,
    StockCounted,
    StockObserved,
    StockReceived,
)
from stocksync.db import migrate

pytestmark = pytest.mark.integration

# Sub-second stamps: no whole-second precision window; a count absorbs exactly the changes stamped before it.
T0 = datetime(2026, 11, 23, 12, 0, 0, 1000, tzinfo=UTC)


def at(i: int) -> datetime:
    return T0 + timedelta(milliseconds=10 * i)


def sale(i: int, sku: str, q: int, channel: Channel = "shopify") -> OrderPlaced:
    return OrderPlaced(
        event_id=f"{channel}-acme:order:{i}:line:1",
        tenant="acme",
        sku=sku,
        quantity=q,
        connection_id=f"{channel}-acme",
        channel=channel,
        order_id=str(i),
        line_id="1",
        occurred_at=at(i),
        received_at=at(i),
    )


def receipt(i: int, sku: str, q: int) -> StockReceived:
    return StockReceived(
        event_id=f"admin:receipt:{i}",
        tenant="acme",
        sku=sku,
        quantity=q,
        occurred_at=at(i),
        received_at=at(i),
    )


def applied_stream() -> list[AnyInventoryEvent]:
    """Receipts that create two SKUs, sales that all fit, a restock of an applied sale, a count, a drift
    signal, and duplicates across and within batches: every event applied (or observed) by the real rules."""
    first = sale(3, "A", 3)
    late = sale(10, "A", 5, "amazon")
    return [
        receipt(1, "A", 10),
        receipt(2, "B", 5),
        first,
        sale(4, "B", 2, "ebay"),
        first,  # redelivered in a later batch
        OrderCancelled(
            event_id="shopify-acme:cancel:3:line:1",
            tenant="acme",
            sku="A",
            quantity=3,
            connection_id="shopify-acme",
            channel="shopify",
            order_id="3",
            line_id="1",
            sale_event_id=first.event_id,
            occurred_at=at(6),
            received_at=at(6),
        ),
        sale(7, "A", 4),
        StockCounted(
            event_id="admin:count:A:8",
            tenant="acme",
            sku="A",
            quantity=20,
            occurred_at=at(8),
            received_at=at(8),
        ),
        StockObserved(
            event_id="shopify-acme:observed:B:9",
            tenant="acme",
            sku="B",
            quantity=7,
            connection_id="shopify-acme",
            channel="shopify",
            occurred_at=at(9),
            received_at=at(9),
        ),
        late,
        late,  # twice in one batch
        receipt(12, "B", 1),
        sale(13, "B", 4, "walmart"),
    ]


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {
            "inventory": conn.execute(
                "SELECT tenant, sku, available, version, counted_at FROM inventory ORDER BY tenant, sku"
            ).fetchall(),
            "ledger": conn.execute(
                "SELECT event_id, kind, delta, absolute, before, after, version, outcome, channel, "
                "connection_id, sale_event_id FROM ledger ORDER BY id"
            ).fetchall(),
            "claimed": conn.execute("SELECT event_id FROM processed_events ORDER BY event_id").fetchall(),
        }


async def real_rules(url: str, stream: list[AnyInventoryEvent], batch: int) -> None:
    async with await AsyncConnection.connect(url) as conn:
        for i in range(0, len(stream), batch):
            async with conn.transaction():
                results = await apply_batch(conn, stream[i : i + batch])
            assert {r.outcome for r in results} <= {"applied", "observed", "duplicate"}


def ceiling(url: str, stream: list[AnyInventoryEvent], batch: int) -> None:
    with psycopg.connect(url) as conn:
        with conn.transaction():
            seed_rows(conn, stream)
        for i in range(0, len(stream), batch):
            with conn.transaction():
                counts = apply_set_based(conn, stream[i : i + batch])
            assert counts.rejected == 0


@pytest.mark.parametrize("batch", [1, 4, 100])
async def test_ceiling_leaves_what_the_rules_leave_on_an_applied_stream(
    new_database: Callable[[], str], batch: int
) -> None:
    rules_db, ceiling_db = new_database(), new_database()
    migrate(rules_db)
    migrate(ceiling_db)
    stream = applied_stream()
    await real_rules(rules_db, stream, batch)
    ceiling(ceiling_db, stream, batch)
    expected = snapshot(rules_db)
    assert expected["inventory"] == [
        ("acme", "A", 15, 6, at(8)),  # 10 - 3 + 3 - 4, counted 20, then - 5
        ("acme", "B", 0, 4, None),  # 5 - 2 + 1 - 4; the drift signal changes nothing
    ]
    assert snapshot(ceiling_db) == expected


def test_ceiling_refuses_a_sku_whose_batch_would_go_negative(database_url: str) -> None:
    stream: list[AnyInventoryEvent] = [receipt(1, "A", 2), receipt(2, "B", 1)]
    ceiling(database_url, stream, 10)
    with psycopg.connect(database_url) as conn, conn.transaction():
        counts = apply_set_based(conn, [sale(3, "A", 1), sale(4, "A", 2), sale(5, "B", 1)])
    assert (counts.claimed, counts.applied, counts.rejected) == (3, 1, 2)
    after = snapshot(database_url)
    assert [r[2] for r in after["inventory"]] == [2, 0]
    assert [r[7] for r in after["ledger"][2:]] == ["rejected", "rejected", "applied"]


def test_ceiling_rate_applies_the_whole_stream(database_url: str) -> None:
    stream = applied_stream()
    assert ceiling_rate(database_url, stream, batch=4) > 0
    assert len(snapshot(database_url)["ledger"]) == len({e.event_id for e in stream})
