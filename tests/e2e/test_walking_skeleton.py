"""One sale travels the whole pipeline: signed Shopify webhook -> ingest -> Kafka -> processor ->
PostgreSQL -> stock.changed -> fan-out -> the Shopify simulator, each service its own OS process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import psycopg
import pytest

from lab.local.stack import Stack
from lab.marketplaces.shopify import ShopifySimulator, order_webhook
from schemas import inventory_events, stock_changed, stock_rejected
from schemas.base import partition_key
from schemas.inventory_events import StockCounted
from stocksync.kafka import AsyncProducer, producer_config
from stocksync.settings import KafkaSettings
from tests.fix_stack import ShopifyWorld
from tests.helpers import eventually, group_caught_up, read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def master(database_url: str, sku: str) -> tuple[int, int] | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT available, version FROM inventory WHERE tenant = 'acme' AND sku = %s", (sku,)
        ).fetchone()
    return (row[0], row[1]) if row else None


def confirmed(sim: ShopifySimulator) -> list[int]:
    """The quantities the simulator accepted, in order."""
    return [c.quantity for c in sim.calls if c.user_error is None]


def ledger(database_url: str, sku: str) -> list[tuple[str, str, int | None]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT event_id, outcome, after FROM ledger WHERE tenant = 'acme' AND sku = %s ORDER BY id",
            (sku,),
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


async def post(stack: Stack, world: ShopifyWorld, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as session:
        url = f"{stack.ingest_url}/webhooks/{world.connection.id}"
        async with session.post(url, data=body, headers=headers) as resp:
            return resp.status, await resp.json()


async def test_sale_reaches_the_channel_once_and_oversell_is_rejected(
    pipeline: Stack, shopify_world: ShopifyWorld, kafka: KafkaSettings, database_url: str
) -> None:
    sim, conn, item = shopify_world.simulator, shopify_world.connection, shopify_world.item("SKU-1")
    t0 = datetime.now(UTC) - timedelta(minutes=1)

    # The seller's count: 10 units of SKU-1 (the admin API that records counts comes later; same event).
    producer = AsyncProducer(producer_config(kafka))
    count = StockCounted(
        event_id="admin:count:1", tenant="acme", sku="SKU-1", quantity=10, occurred_at=t0, received_at=t0
    )
    await producer.send(
        kafka.topic(inventory_events.TOPIC),
        inventory_events.encode(count),
        key=partition_key("acme", "SKU-1"),
    )
    await producer.close()
    await eventually(lambda: sim.available.get(item) == 10, what="the simulator to show the count of 10")

    # A buyer orders 3 on Shopify: the signed webhook goes to the gateway.
    body, headers = sim.place_order(conn, 1001, [("SKU-1", 3)], created_at=datetime.now(UTC))
    status, answer = await post(pipeline, shopify_world, body, headers)
    assert status == 200, answer
    sale_id = "shop-acme:order:1001:line:100101"
    assert answer == {"status": "accepted", "events": [sale_id]}
    await eventually(lambda: confirmed(sim) == [10, 7], what="the simulator to be set to 7")
    # Shopify had already taken the 3 off its own count: the compare-and-set from 10 was refused, and the
    # write was redone from the count Shopify holds.
    assert [(c.quantity, c.change_from, c.user_error is None) for c in sim.calls] == [
        (10, None, True),
        (7, 10, False),
        (7, 7, True),
    ]
    assert master(database_url, "SKU-1") == (7, 2)
    assert sim.available[item] == 7

    # Shopify delivers the same webhook again: accepted, and nothing changes.
    status, answer = await post(pipeline, shopify_world, body, headers)
    assert status == 200
    assert answer["events"] == [sale_id]

    # A sale larger than the stock (a channel that still showed more): rejected, stock unchanged.
    line = {
        "id": 100201,
        "variant_id": int(conn.listings["SKU-1"].listing_id),
        "sku": "SKU-1",
        "quantity": 50,
    }
    body, headers = order_webhook(conn, 1002, [line], datetime.now(UTC))
    status, _ = await post(pipeline, shopify_world, body, headers)
    assert status == 200
    oversell_id = "shop-acme:order:1002:line:100201"
    await eventually(lambda: len(ledger(database_url, "SKU-1")) == 3, what="three ledger rows for SKU-1")

    # The duplicate was processed (its stored result re-emitted) and changed nothing.
    changes = [stock_changed.decode(m.value() or b"") for m in read_topic(kafka, stock_changed.TOPIC)]
    sale_changes = [c for c in changes if c.cause_event_id == sale_id]
    assert [(c.available, c.version) for c in sale_changes] == [(7, 2), (7, 2)]
    assert ledger(database_url, "SKU-1") == [
        ("admin:count:1", "applied", 10),
        (sale_id, "applied", 7),
        (oversell_id, "rejected", 7),
    ]
    assert master(database_url, "SKU-1") == (7, 2)
    rejections = [stock_rejected.decode(m.value() or b"") for m in read_topic(kafka, stock_rejected.TOPIC)]
    assert [(r.cause_event_id, r.requested, r.available, r.reason) for r in rejections] == [
        (oversell_id, 50, 7, "out_of_stock")
    ]

    # Once fan-out has consumed every stock.changed, the channel received exactly the master's quantities.
    await eventually(
        lambda: group_caught_up(kafka, "fanout.shopify", stock_changed.TOPIC),
        what="fan-out to commit every stock.changed offset",
    )
    # ... and the refused sale paused the listing: it shows 0 until the master changes again.
    await eventually(lambda: confirmed(sim) == [10, 7, 0], what="the listing to be paused at 0")
    assert sim.available[item] == 0

    # The processor explains the count over HTTP, newest first, and counted every outcome.
    ops = f"http://127.0.0.1:{pipeline.services['processor'].port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{ops}/audit/acme/SKU-1") as resp:
            assert resp.status == 200
            trail = (await resp.json())["changes"]
        async with session.get(f"{ops}/metrics") as resp:
            metrics = await resp.text()
    assert [(c["event_id"], c["outcome"], c["after"]) for c in trail] == [
        (oversell_id, "rejected", 7),
        (sale_id, "applied", 7),
        ("admin:count:1", "applied", 10),
    ]
    assert 'processor_events_total{outcome="applied"} 2.0' in metrics
    assert 'processor_events_total{outcome="duplicate"} 1.0' in metrics
    assert "processor_oversells_prevented_total 1.0" in metrics
