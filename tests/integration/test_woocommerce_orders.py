"""WooCommerce's order list: page numbers until X-WP-TotalPages, an order modified exactly at `since` kept
although WordPress filters strictly after, and a cancelled order giving its webhook's OrderCancelled ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from multidict import CIMultiDict

from channels.connection import Connection
from channels.orderlist import PAGE_SIZE_OPTION
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from channels.woocommerce import webhooks
from channels.woocommerce.orders import list_orders
from lab.local.process import free_port
from lab.marketplaces.serve import serve
from lab.marketplaces.woocommerce import WooCommerceSimulator, sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SKUS = ("SIMPLE", "VARIED")


@pytest.fixture
async def store() -> AsyncIterator[tuple[WooCommerceSimulator, Connection]]:
    port = free_port()
    conn = sample_connection(f"http://127.0.0.1:{port}", skus=SKUS)
    conn = conn.model_copy(update={"options": {PAGE_SIZE_OPTION: "2"}})
    sim = WooCommerceSimulator.for_connection(conn, quantity=50, burst=1000)
    async with serve(sim.app(), port=port):
        yield sim, conn


async def _all(conn: Connection, since: datetime) -> list[OrderBatch]:
    async with aiohttp.ClientSession() as session:
        return [
            b async for b in list_orders(session, conn, since, budget=TokenBucket(1000, 1000), received_at=T0)
        ]


async def test_pages_until_total_pages_and_since_is_inclusive(
    store: tuple[WooCommerceSimulator, Connection],
) -> None:
    sim, conn = store
    for n in range(5):
        sim.place_order(conn, 10 + n, [("SIMPLE", 1), ("VARIED", 2)], T0 + timedelta(minutes=n))
    batches = await _all(conn, T0)
    assert [len({e.order_id for e in b.events}) for b in batches] == [2, 2, 1]
    assert sim.order_list_calls == 3  # the last page is known from X-WP-TotalPages, no empty fourth call
    on_the_second = await _all(conn, T0 + timedelta(minutes=4))
    assert [e.order_id for b in on_the_second for e in b.events] == ["14", "14"]


async def test_a_cancelled_order_lists_as_its_webhooks_cancellations(
    store: tuple[WooCommerceSimulator, Connection],
) -> None:
    sim, conn = store
    sim.place_order(conn, 20, [("SIMPLE", 1), ("VARIED", 3)], T0)
    body, headers = sim.cancel_order(conn, 20, T0 + timedelta(hours=2))
    from_webhook = webhooks.normalise(conn, body, CIMultiDict(headers), T0)
    listed = [e for b in await _all(conn, T0 + timedelta(hours=1)) for e in b.events]
    assert all(isinstance(e, OrderCancelled) for e in listed)
    assert [(e.event_id, e.sku, e.quantity) for e in listed] == [
        (e.event_id, e.sku, e.quantity) for e in from_webhook
    ]
    assert [e.event_id for e in listed] == [
        f"{conn.id}:cancel:20:line:2001",
        f"{conn.id}:cancel:20:line:2002",
    ]


async def test_a_draft_checkout_lists_nothing_and_a_broken_order_is_rejected_alone(
    store: tuple[WooCommerceSimulator, Connection],
) -> None:
    sim, conn = store
    for n in range(3):
        sim.place_order(conn, 30 + n, [("SIMPLE", 1)], T0 + timedelta(minutes=n))
    sim.orders[30]["status"] = "checkout-draft"
    sim.orders[31]["line_items"][0]["quantity"] = 0
    batches = await _all(conn, T0)
    assert [e.order_id for b in batches for e in b.events] == ["32"]
    assert all(isinstance(e, OrderPlaced) for b in batches for e in b.events)
    rejected = [r for b in batches for r in b.rejected]
    assert len(rejected) == 1
    assert "quantity 0 is not a positive whole number" in rejected[0][1]
