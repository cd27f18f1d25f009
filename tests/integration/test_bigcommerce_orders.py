"""BigCommerce's v2 order list: lines fetched per order and charged to the budget, a cancelled order giving
its statusUpdated webhook's OrderCancelled ids, a page that ends exactly at the limit closed by the 204."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from multidict import CIMultiDict

from channels.bigcommerce import webhooks
from channels.bigcommerce.orders import list_orders
from channels.connection import Connection
from channels.orderlist import PAGE_SIZE_OPTION
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from lab.local.process import free_port
from lab.marketplaces.bigcommerce import BigCommerceSimulator, sample_connection
from lab.marketplaces.serve import serve
from schemas.inventory_events import OrderCancelled

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SKUS = ("HAT", "SCARF")


class Counted(TokenBucket):
    def __init__(self) -> None:
        super().__init__(1000, 1000)
        self.acquired = 0

    async def acquire(self, n: float = 1.0) -> float:
        self.acquired += 1
        return await super().acquire(n)


@pytest.fixture
async def store() -> AsyncIterator[tuple[BigCommerceSimulator, Connection]]:
    port = free_port()
    conn = sample_connection(f"http://127.0.0.1:{port}", skus=SKUS)
    conn = conn.model_copy(update={"options": {**conn.options, PAGE_SIZE_OPTION: "2"}})
    sim = BigCommerceSimulator(bucket=TokenBucket(1000, 1000))
    sim.adopt(conn, initial=20)
    async with serve(sim.app(), port=port):
        yield sim, conn


async def _all(conn: Connection, since: datetime, budget: TokenBucket) -> list[OrderBatch]:
    async with aiohttp.ClientSession() as session:
        return [b async for b in list_orders(session, conn, since, budget=budget, received_at=T0)]


async def test_every_line_fetch_is_charged_and_a_full_last_page_ends_at_the_204(
    store: tuple[BigCommerceSimulator, Connection],
) -> None:
    sim, conn = store
    for n in range(4):
        sim.place_order(conn, 40 + n, [("HAT", 1)], T0 + timedelta(minutes=n))
    budget = Counted()
    batches = await _all(conn, T0, budget)
    assert [[e.order_id for e in b.events] for b in batches] == [["40", "41"], ["42", "43"]]
    assert sim.order_list_calls == 3  # two full pages, then the 204
    assert budget.acquired == 3 + 4  # three list pages, one line fetch per order


async def test_a_cancelled_order_lists_as_its_status_webhooks_cancellations(
    store: tuple[BigCommerceSimulator, Connection],
) -> None:
    sim, conn = store
    sim.place_order(conn, 50, [("HAT", 1), ("SCARF", 2)], T0)
    body, headers = sim.cancel_order(conn, 50, T0 + timedelta(hours=2))
    async with aiohttp.ClientSession() as session:
        expanded = await webhooks.expand(session, conn, body, CIMultiDict(headers))
    from_webhook = webhooks.normalise(conn, expanded, CIMultiDict(headers), T0)
    listed = [e for b in await _all(conn, T0 + timedelta(hours=1), Counted()) for e in b.events]
    assert all(isinstance(e, OrderCancelled) for e in listed + from_webhook)
    assert sorted((e.event_id, e.sku, e.quantity) for e in listed) == sorted(
        (e.event_id, e.sku, e.quantity) for e in from_webhook
    )
    assert len(listed) == 2


async def test_an_order_whose_lines_are_gone_is_rejected_and_the_others_listed(
    store: tuple[BigCommerceSimulator, Connection],
) -> None:
    sim, conn = store
    for n in range(3):
        sim.place_order(conn, 60 + n, [("SCARF", 1)], T0 + timedelta(minutes=n))
    del sim.orders["61"]  # its lines 404 now
    batches = await _all(conn, T0, Counted())
    assert [e.order_id for b in batches for e in b.events] == ["60", "62"]
    rejected = [r for b in batches for r in b.rejected]
    assert len(rejected) == 1
    assert "order 61: its product lines are gone" in rejected[0][1]
