"""eBay's getOrders: read newest first through ``next`` links, yielded oldest first; a ``next`` link to
another host is not followed with the seller's token; a cancelled order lists its sale as notified."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web

from channels.connection import Connection
from channels.ebay.orders import list_orders
from channels.errors import ChannelError
from channels.orderlist import PAGE_SIZE_OPTION
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from lab.local.process import free_port
from lab.marketplaces.ebay import EbaySimulator, order_number, sample_connection
from lab.marketplaces.serve import serve
from schemas.inventory_events import OrderPlaced

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
SKUS = ("LENS", "CAMERA")


@pytest.fixture
async def account() -> AsyncIterator[tuple[EbaySimulator, Connection]]:
    port = free_port()
    conn = sample_connection(f"http://127.0.0.1:{port}", skus=SKUS)
    conn = conn.model_copy(update={"options": {PAGE_SIZE_OPTION: "2"}})
    sim = EbaySimulator.for_connection(conn, {"LENS": 50, "CAMERA": 50})
    sim.bucket = TokenBucket(1000, 1000)
    async with serve(sim.app(), port=port):
        yield sim, conn


async def _all(conn: Connection, since: datetime) -> list[OrderBatch]:
    async with aiohttp.ClientSession() as session:
        return [
            b async for b in list_orders(session, conn, since, budget=TokenBucket(1000, 1000), received_at=T0)
        ]


async def test_newest_first_pages_come_out_oldest_first(account: tuple[EbaySimulator, Connection]) -> None:
    sim, conn = account
    for n in range(5):
        sim.place_order(conn, 1 + n, [("LENS", 1)], T0 + timedelta(minutes=n))
    batches = await _all(conn, T0)
    assert sim.order_list_calls == 3
    assert [[e.order_id for e in b.events] for b in batches] == [
        [order_number(1)],
        [order_number(2), order_number(3)],
        [order_number(4), order_number(5)],
    ]
    assert [b.high_water for b in batches] == [T0, T0 + timedelta(minutes=2), T0 + timedelta(minutes=4)]


async def test_a_cancelled_order_lists_its_sale_like_its_notification(
    account: tuple[EbaySimulator, Connection],
) -> None:
    sim, conn = account
    sim.place_order(conn, 7, [("CAMERA", 1)], T0)
    sim.orders[order_number(7)]["cancelStatus"]["cancelState"] = "CANCELED"
    events = [e for b in await _all(conn, T0) for e in b.events]
    assert [(type(e), e.event_id) for e in events] == [
        (OrderPlaced, f"{conn.id}:order:{order_number(7)}:line:701")
    ]


async def test_a_next_link_to_another_host_is_refused() -> None:
    async def page(request: web.Request) -> web.Response:
        body = {"total": 3, "orders": [{"orderId": "x"}], "next": "http://203.0.113.9/steal?offset=1"}
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/sell/fulfillment/v1/order", page)
    port = free_port()
    conn = sample_connection(f"http://127.0.0.1:{port}", skus=SKUS)
    async with serve(app, port=port):
        with pytest.raises(ChannelError, match="another host"):
            await _all(conn, T0)
