"""The master record's rules, applied to a real PostgreSQL database one event at a time."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from processor.app import prune_processed
from processor.store import Result, apply_batch
from schemas.base import Channel
from schemas.inventory_events import (
    AnyInventoryEvent,
    OrderCancelled,
    OrderPlaced,
    StockCounted,
    StockObserved,
    StockReceived,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def sale(
    n: int, quantity: int, *, at: datetime = T0, sku: str = "SKU-1", channel: Channel = "shopify"
) -> OrderPlaced:
    return OrderPlaced(
        event_id=f"{channel}-1:order:{n}:line:1",
        tenant="acme",
        sku=sku,
        quantity=quantity,
        connection_id=f"{channel}-1",
        channel=channel,
        order_id=str(n),
        line_id="1",
        occurred_at=at,
        received_at=at,
    )


def count(n: int, quantity: int, *, as_of: datetime, sku: str = "SKU-1") -> StockCounted:
    return StockCounted(
        event_id=f"admin:count:{n}",
        tenant="acme",
        sku=sku,
        quantity=quantity,
        occurred_at=as_of,
        received_at=as_of,
    )


def receipt(n: int, quantity: int, *, at: datetime, sku: str = "SKU-1") -> StockReceived:
    return StockReceived(
        event_id=f"admin:receipt:{n}",
        tenant="acme",
        sku=sku,
        quantity=quantity,
        occurred_at=at,
        received_at=at,
    )


async def run(database_url: str, event: AnyInventoryEvent) -> Result:
    async with await AsyncConnection.connect(database_url) as conn, conn.transaction():
        [result] = await apply_batch(conn, [event])
        return result


def state(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT available, version FROM inventory WHERE sku = 'SKU-1'").fetchone()
    assert row is not None
    return row[0], row[1]


def ledger_outcomes(database_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT event_id, outcome FROM ledger ORDER BY id")]


async def test_sale_duplicate_and_oversell(database_url: str) -> None:
    assert (await run(database_url, count(1, 5, as_of=T0 - timedelta(hours=1)))).outcome == "applied"
    first = await run(database_url, sale(1, 3))
    assert first.outcome == "applied"
    assert json.loads(first.payload or b"")["available"] == 2
    again = await run(database_url, sale(1, 3))
    assert again.outcome == "duplicate"
    assert (again.topic, json.loads(again.payload or b"")) == (first.topic, json.loads(first.payload or b""))
    refused = await run(database_url, sale(2, 3))
    assert (refused.outcome, refused.topic) == ("rejected", "stock.rejected")
    assert json.loads(refused.payload or b"")["reason"] == "out_of_stock"
    assert state(database_url) == (2, 2)
    assert ledger_outcomes(database_url) == [
        ("admin:count:1", "applied"),
        ("shopify-1:order:1:line:1", "applied"),
        ("shopify-1:order:2:line:1", "rejected"),
    ]


async def test_unknown_sku_is_recorded_not_created(database_url: str) -> None:
    result = await run(database_url, sale(1, 1, sku="GHOST"))
    assert result.outcome == "unknown_sku"
    assert json.loads(result.payload or b"")["reason"] == "unknown_sku"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM inventory").fetchone() == (0,)


async def test_a_count_as_of_t_absorbs_sales_before_t_and_not_after(database_url: str) -> None:
    t = T0
    await run(database_url, count(1, 100, as_of=t - timedelta(days=1)))
    # A sale after T is applied before the count arrives; the count must not erase it.
    await run(database_url, sale(1, 4, at=t + timedelta(minutes=5)))
    await run(database_url, count(2, 50, as_of=t))
    assert state(database_url)[0] == 46
    # A sale before T arrives late: the count already includes it, so it is recorded, not applied again.
    assert (await run(database_url, sale(2, 7, at=t - timedelta(minutes=5)))).outcome == "stale"
    # A sale after T arriving now is applied.
    assert (await run(database_url, sale(3, 6, at=t + timedelta(minutes=10)))).outcome == "applied"
    assert state(database_url)[0] == 40
    # An older count arriving late changes nothing.
    assert (await run(database_url, count(3, 999, as_of=t - timedelta(hours=2)))).outcome == "stale"
    assert state(database_url)[0] == 40


async def test_concurrent_sales_of_the_last_units_never_oversell(database_url: str) -> None:
    """12 buyers on 4 channels, each in its own connection and transaction, race for the last 3 units."""
    await run(database_url, count(1, 3, as_of=T0 - timedelta(hours=1)))
    channels: list[Channel] = ["shopify", "amazon", "ebay", "walmart"]
    racers = [sale(n, 1, channel=channels[n % 4]) for n in range(12)]
    results = await asyncio.gather(*(run(database_url, e) for e in racers))
    assert sorted(r.outcome for r in results) == ["applied"] * 3 + ["rejected"] * 9
    assert state(database_url) == (0, 4)
    with psycopg.connect(database_url) as conn:
        befores = conn.execute(
            "SELECT before FROM ledger WHERE kind = 'order_placed' AND outcome = 'applied' ORDER BY version"
        ).fetchall()
    assert [b[0] for b in befores] == [3, 2, 1]  # each accepted sale saw the count its predecessor left


async def test_retention_prunes_old_ids_and_a_pruned_id_stays_a_duplicate(database_url: str) -> None:
    await run(database_url, count(1, 5, as_of=T0 - timedelta(hours=1)))
    await run(database_url, sale(1, 2))
    await run(database_url, sale(2, 1))
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE processed_events SET processed_at = now() - interval '40 days' "
            "WHERE event_id LIKE '%:1:%'"
        )
    async with AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False) as pool:
        assert await prune_processed(pool, timedelta(days=30)) == 1
        assert await prune_processed(pool, timedelta(days=30)) == 0
    with psycopg.connect(database_url) as conn:
        kept = [r[0] for r in conn.execute("SELECT event_id FROM processed_events ORDER BY event_id")]
    assert kept == ["admin:count:1", "shopify-1:order:2:line:1"]
    # The pruned sale is redelivered long after: the ledger still knows it, so nothing changes.
    assert (await run(database_url, sale(1, 2))).outcome == "duplicate"
    assert state(database_url) == (2, 3)


async def test_receipts_add_create_new_skus_and_survive_an_older_count(database_url: str) -> None:
    first = await run(database_url, receipt(1, 4, at=T0))
    assert (first.outcome, first.after, first.version) == ("applied", 4, 1)  # a first receipt creates the SKU
    assert (await run(database_url, receipt(2, 3, at=T0 + timedelta(minutes=1)))).after == 7
    assert (await run(database_url, receipt(2, 3, at=T0 + timedelta(minutes=1)))).outcome == "duplicate"
    # A count as of a time before the second receipt: that receipt is not in it and is added back on top.
    assert (await run(database_url, count(1, 10, as_of=T0 + timedelta(seconds=30)))).after == 13
    # A receipt older than the count is already inside it.
    assert (await run(database_url, receipt(3, 5, at=T0 + timedelta(seconds=10)))).outcome == "stale"
    assert state(database_url) == (13, 3)


def restock(n: int, quantity: int, *, sale_n: int, at: datetime = T0) -> OrderCancelled:
    """A refund of part of sale `sale_n` (its own id, as a Shopify refund line item has)."""
    return OrderCancelled(
        event_id=f"shopify-1:refund:{n}:line:1",
        tenant="acme",
        sku="SKU-1",
        quantity=quantity,
        connection_id="shopify-1",
        channel="shopify",
        order_id=str(sale_n),
        line_id="1",
        sale_event_id=f"shopify-1:order:{sale_n}:line:1",
        occurred_at=at,
        received_at=at,
    )


async def test_the_restocks_of_a_sale_never_return_more_than_it_took(database_url: str) -> None:
    await run(database_url, count(1, 10, as_of=T0 - timedelta(hours=1)))
    await run(database_url, sale(7, 3))
    assert state(database_url)[0] == 7
    first = await run(database_url, restock(1, 1, sale_n=7))
    second = await run(database_url, restock(2, 5, sale_n=7))  # asks for 5: only 2 of the 3 are left
    third = await run(database_url, restock(3, 1, sale_n=7))
    assert [(r.outcome, r.after) for r in (first, second, third)] == [
        ("applied", 8),
        ("applied", 10),
        ("ignored", 10),
    ]
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT delta, reason, sale_event_id FROM ledger WHERE kind = 'order_cancelled' ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == [1, 2, 0]
    assert "restocked 2 of 5" in rows[1][1]
    assert "already restocked" in rows[2][1]
    assert {r[2] for r in rows} == {"shopify-1:order:7:line:1"}


async def test_a_channels_own_count_is_recorded_and_changes_nothing(database_url: str) -> None:
    await run(database_url, count(1, 10, as_of=T0 - timedelta(hours=1)))
    before = state(database_url)
    observed = StockObserved(
        event_id="shopify-1:level:9001:1:t1",
        tenant="acme",
        sku="SKU-1",
        quantity=14,
        connection_id="shopify-1",
        channel="shopify",
        occurred_at=T0,
        received_at=T0,
    )
    result = await run(database_url, observed)
    again = await run(database_url, observed)
    assert (result.outcome, result.topic, again.outcome) == ("observed", None, "duplicate")
    assert state(database_url) == before  # count and version unchanged: master wins
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT kind, delta, absolute, before, after, reason FROM ledger WHERE event_id = %s",
            (observed.event_id,),
        ).fetchone()
    assert row == ("stock_observed", 0, 14, 10, 10, "shopify shows 14; the master has 10")


async def test_a_sale_the_clock_cannot_order_against_a_count_is_applied_not_taken_as_counted(
    database_url: str,
) -> None:
    """Issue 12: a count taken at a sub-second "now", then a Shopify sale 12 ms later stamped in whole
    seconds (so its stamp reads before the count): the sale is applied, never recorded 'stale'."""
    counted = T0 + timedelta(milliseconds=988)
    await run(database_url, count(1, 10, as_of=counted))
    shopify_stamp = T0  # the sale happened at T0 + 1.000 s; Shopify's created_at drops the fraction
    assert (await run(database_url, sale(1, 1, at=shopify_stamp))).outcome == "applied"
    assert state(database_url)[0] == 9
    # A sub-second stamp before the count is inside it (no clock skew by default: PROCESSOR_CLOCK_SKEW_S)...
    assert (await run(database_url, sale(2, 1, at=counted - timedelta(milliseconds=1)))).outcome == "stale"
    # ...and so is a whole-second stamp whose whole second lies before the count.
    assert (await run(database_url, sale(3, 1, at=T0 - timedelta(seconds=1)))).outcome == "stale"
    assert state(database_url)[0] == 9


async def test_a_count_arriving_after_an_ambiguous_sale_takes_that_sale_off_again(database_url: str) -> None:
    """The same rule from the other side: a whole-second sale applied first, then a count whose as-of time
    lies within the sale's second: the count cannot tell whether it includes the sale, so it is assumed not
    to (one unit too few at worst, never one sold twice)."""
    await run(database_url, count(1, 100, as_of=T0 - timedelta(days=1)))
    await run(database_url, sale(1, 2, at=T0))  # happened somewhere in [T0, T0 + 1 s)
    await run(database_url, count(2, 50, as_of=T0 + timedelta(milliseconds=500)))
    assert state(database_url)[0] == 48
    # A sale well before the count is inside it.
    await run(database_url, sale(2, 5, at=T0 - timedelta(minutes=5)))
    await run(database_url, count(3, 30, as_of=T0 + timedelta(minutes=1)))
    assert state(database_url)[0] == 30


async def test_the_skew_window_is_a_setting(database_url: str) -> None:
    counted = T0 + timedelta(seconds=30)
    await run(database_url, count(1, 10, as_of=counted))
    at = counted - timedelta(seconds=10, milliseconds=1)
    async with await AsyncConnection.connect(database_url) as conn:
        async with conn.transaction():
            [wide] = await apply_batch(conn, [sale(1, 1, at=at)], skew=timedelta(seconds=20))
        async with conn.transaction():
            [narrow] = await apply_batch(conn, [sale(2, 1, at=at)], skew=timedelta(0))
    assert (wide.outcome, narrow.outcome) == ("applied", "stale")


async def test_a_duplicate_re_emits_the_exact_bytes_of_the_first_delivery(database_url: str) -> None:
    await run(database_url, count(1, 10, as_of=T0 - timedelta(hours=1)))
    first = await run(database_url, sale(1, 2))
    again = await run(database_url, sale(1, 2))
    assert (first.outcome, again.outcome) == ("applied", "duplicate")
    assert first.payload is not None
    assert (again.topic, again.payload) == (first.topic, first.payload)  # byte for byte, not re-serialised
