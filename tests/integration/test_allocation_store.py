"""The allocation step inside the master's transaction (processor/allocate.py), on a real PostgreSQL: grants
move with the sales, never add up to more than the master holds, are logged, and a redelivered batch
re-emits the same stock.allocated record."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection
from pydantic import SecretStr

from allocation.policy import grants, set_policy
from channels.connection import Connection, ConnectionRegistry, Listing
from processor.allocate import AllocationConfig
from processor.store import Result, apply_batch
from schemas.base import Channel
from schemas.inventory_events import AnyInventoryEvent, OrderPlaced, StockCounted

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
CHANNELS: tuple[Channel, ...] = ("shopify", "walmart", "ebay")


def connection(channel: Channel) -> Connection:
    return Connection(
        id=f"{channel}-acme",
        tenant="acme",
        channel=channel,
        webhook_secret=SecretStr("s"),
        api_base_url="http://127.0.0.1:9",
        listings={"SKU-1": Listing(listing_id="1", inventory_ref="ref-1")},
    )


CONFIG = AllocationConfig.of(ConnectionRegistry([connection(c) for c in CHANNELS]))


def sale(n: int, quantity: int, channel: Channel) -> OrderPlaced:
    return OrderPlaced(
        event_id=f"{channel}:order:{n}",
        tenant="acme",
        sku="SKU-1",
        quantity=quantity,
        connection_id=f"{channel}-acme",
        channel=channel,
        order_id=str(n),
        line_id="1",
        occurred_at=T0 + timedelta(seconds=n),
        received_at=T0 + timedelta(seconds=n),
    )


def count(quantity: int) -> StockCounted:
    return StockCounted(
        event_id="admin:count:1",
        tenant="acme",
        sku="SKU-1",
        quantity=quantity,
        occurred_at=T0,
        received_at=T0,
    )


async def run(database_url: str, events: list[AnyInventoryEvent]) -> list[Result]:
    async with await AsyncConnection.connect(database_url) as conn, conn.transaction():
        return await apply_batch(conn, events, allocation=CONFIG)


def allotment(result: Result) -> dict[str, Any]:
    assert result.allotment is not None
    parsed: dict[str, Any] = json.loads(result.allotment)
    return parsed


def available(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT available FROM inventory WHERE sku = 'SKU-1'").fetchone()
    assert row is not None
    return int(row[0])


async def test_grants_follow_sales_and_never_exceed_the_master(database_url: str) -> None:
    [counted] = await run(database_url, [count(12)])
    first = allotment(counted)
    assert json.loads(counted.payload or b"")["policy"] == "never_cancel"
    granted = {cid: a["granted"] for cid, a in first["connections"].items()}
    # half of the 12 units are spread (the rest refills whoever sells out), every write a raise from 0
    assert sum(granted.values()) == 6
    assert first["slack"] == 6
    assert {cid: a["write"] for cid, a in first["connections"].items()} == granted
    assert first["connections"]["shopify-acme"]["expect"] == 0  # compare-and-set from 0
    assert first["connections"]["walmart-acme"]["expect"] is None  # an absolute set

    # Walmart sells out its grant: it is refilled from the reserve, the others are left alone.
    sold = await run(database_url, [sale(1, granted["walmart-acme"], "walmart")])
    after = allotment(sold[-1])
    assert after["seq"] == first["seq"] + 1
    assert after["connections"]["walmart-acme"]["write"] is not None
    assert after["connections"]["ebay-acme"]["write"] is None
    state = grants(database_url, "acme", ["SKU-1"])["SKU-1"]
    assert sum(state.values()) <= available(database_url)

    # Sales beyond every grant drain the SKU; the grants never exceed what the master holds.
    for n in range(2, 30):
        await run(database_url, [sale(n, 1, CHANNELS[n % 3])])
        assert sum(grants(database_url, "acme", ["SKU-1"])["SKU-1"].values()) <= available(database_url)
    assert available(database_url) == 0
    with psycopg.connect(database_url) as conn:
        reasons = [r[0] for r in conn.execute("SELECT reason FROM allocation_log ORDER BY id")]
    assert any(r.startswith("sold ") for r in reasons)
    assert any("raised to" in r for r in reasons)


async def test_a_redelivered_batch_re_emits_the_same_allocation(database_url: str) -> None:
    await run(database_url, [count(10)])
    first = await run(database_url, [sale(1, 1, "ebay"), sale(2, 2, "shopify")])
    again = await run(database_url, [sale(1, 1, "ebay"), sale(2, 2, "shopify")])
    assert [r.outcome for r in again] == ["duplicate", "duplicate"]
    assert [r.allotment for r in again] == [r.allotment for r in first]
    assert first[-1].allotment is not None
    assert first[0].allotment is None


async def test_mirror_policy_drops_the_grants_and_emits_none(database_url: str) -> None:
    await run(database_url, [count(10)])
    assert grants(database_url, "acme", ["SKU-1"])
    set_policy(database_url, "acme", "mirror")
    [result] = await run(database_url, [sale(1, 1, "ebay")])
    assert result.allotment is None
    assert json.loads(result.payload or b"")["policy"] == "mirror"
    assert grants(database_url, "acme", ["SKU-1"]) == {}


async def test_the_fanout_journal_never_sends_an_allocation_write_twice(database_url: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    from fanout.journal import WriteJournal
    from fanout.plan import target_for
    from schemas.stock_allocated import Allotment, StockAllocated

    def write(seq: int) -> Any:
        record = StockAllocated(
            tenant="acme",
            sku="SKU-1",
            seq=seq,
            available=9,
            version=seq,
            slack=0,
            connections={"walmart-acme": Allotment(channel="walmart", granted=3, write=3)},
            cause_event_id=f"e-{seq}",
            received_at=T0,
            committed_at=T0,
        )
        return target_for(record, "walmart-acme", buffer=0, allocation=1.0, pause_on_rejection=True)

    async with AsyncConnectionPool(database_url, min_size=0, max_size=1, open=False) as pool:
        journal = WriteJournal(pool)
        first, already = await journal.claim([write(4)])
        assert (len(first), already) == (1, [])
        again, already = await journal.claim([write(4)])  # the same record delivered a second time
        assert again == []
        assert [t.seq for t in already] == [4]
        older, _ = await journal.claim([write(3)])  # an older record arriving late
        assert older == []
        newer, _ = await journal.claim([write(7)])
        assert [t.seq for t in newer] == [7]
