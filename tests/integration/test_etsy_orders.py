"""Etsy's receipt list: offset pages until ``count``, a canceled receipt giving its order.canceled webhook's
ids, an unpaid receipt nothing, `since` rounded down to Etsy's whole seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from multidict import CIMultiDict

from channels.connection import Connection
from channels.etsy import webhooks
from channels.etsy.orders import list_orders
from channels.orderlist import PAGE_SIZE_OPTION
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from lab.local.process import free_port
from lab.marketplaces.etsy import EtsySimulator, sample_connection
from lab.marketplaces.serve import serve
from schemas.inventory_events import OrderCancelled

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SKUS = ("PRINT", "CARD")


@pytest.fixture
async def shop() -> AsyncIterator[tuple[EtsySimulator, Connection]]:
    port = free_port()
    conn = sample_connection(f"http://127.0.0.1:{port}", skus=SKUS)
    conn = conn.model_copy(update={"options": {**conn.options, PAGE_SIZE_OPTION: "2"}})
    sim = EtsySimulator.for_connection(conn, {"PRINT": 50, "CARD": 50})
    sim.bucket = TokenBucket(1000, 1000)
    async with serve(sim.app(), port=port):
        yield sim, conn


async def _all(conn: Connection, since: datetime) -> list[OrderBatch]:
    async with aiohttp.ClientSession() as session:
        return [
            b async for b in list_orders(session, conn, since, budget=TokenBucket(1000, 1000), received_at=T0)
        ]


async def test_offset_pages_until_count_and_since_within_a_second(
    shop: tuple[EtsySimulator, Connection],
) -> None:
    sim, conn = shop
    for n in range(5):
        sim.place_order(conn, 80 + n, [("PRINT", 1)], T0 + timedelta(minutes=n))
    batches = await _all(conn, T0)
    assert [[e.order_id for e in b.events] for b in batches] == [["80", "81"], ["82", "83"], ["84"]]
    assert sim.receipt_list_calls == 3  # count says when to stop: no empty fourth page
    half_second_later = T0 + timedelta(minutes=4, microseconds=500_000)
    assert [e.order_id for b in await _all(conn, half_second_later) for e in b.events] == ["84"]


async def test_canceled_receipt_gives_the_webhooks_cancellations_and_unpaid_gives_nothing(
    shop: tuple[EtsySimulator, Connection],
) -> None:
    sim, conn = shop
    sim.place_order(conn, 90, [("PRINT", 1), ("CARD", 2)], T0)
    body, headers = sim.cancel_order(conn, 90, T0 + timedelta(hours=2))
    sim.place_order(conn, 91, [("CARD", 1)], T0 + timedelta(hours=3))
    sim.receipts["91"].update(is_paid=False, status="open")
    async with aiohttp.ClientSession() as session:
        expanded = await webhooks.expand(session, conn, body, CIMultiDict(headers))
    from_webhook = webhooks.normalise(conn, expanded, CIMultiDict(headers), T0)
    listed = [e for b in await _all(conn, T0 + timedelta(hours=1)) for e in b.events]
    assert all(isinstance(e, OrderCancelled) for e in listed)
    assert [(e.event_id, e.sku, e.quantity) for e in listed] == [
        (e.event_id, e.sku, e.quantity) for e in from_webhook
    ]
    assert {e.order_id for e in listed} == {"90"}
