"""Amazon's order list (SP-API getOrders + getOrderItems) against the simulator on loopback: NextToken
pages, status mapping (Canceled, Shipped, Pending), the LastUpdatedAfter filter, bad orders and throttling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import aiohttp
import pytest

from channels.amazon import webhooks
from channels.amazon.orders import list_orders
from channels.connection import Connection
from channels.errors import ChannelError
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from lab.marketplaces.amazon import AmazonSimulator, amazon_order_id, sample_connection
from lab.marketplaces.serve import serve
from schemas.inventory_events import OrderCancelled, OrderPlaced

pytestmark = pytest.mark.integration

SKUS = ("SKU-1", "SKU-2")
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)


@dataclass
class Seller:
    simulator: AmazonSimulator
    connection: Connection
    session: aiohttp.ClientSession
    requests: list[str] = field(default_factory=list)

    def notified(
        self, signed: tuple[bytes, dict[str, str]], at: datetime
    ) -> list[OrderPlaced | OrderCancelled]:
        """What the gateway makes of a notification (verified as if it arrived at `at`)."""
        body, headers = signed
        assert webhooks.verify(self.connection.webhook_secret.get_secret_value(), body, headers, now=at)
        return webhooks.normalise(self.connection, body, headers, RECEIVED)

    async def listed(self, since: datetime, budget: TokenBucket | None = None) -> list[OrderBatch]:
        bucket = budget if budget is not None else TokenBucket(1000.0, 1000.0)
        source = list_orders(self.session, self.connection, since, budget=bucket, received_at=RECEIVED)
        return [batch async for batch in source]


@pytest.fixture
async def seller() -> AsyncIterator[Seller]:
    simulator = AmazonSimulator(access_token="")
    requests: list[str] = []

    async def on_start(
        _: aiohttp.ClientSession, __: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        requests.append(f"{params.url.path}?{params.url.query_string}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with serve(simulator.app()) as base_url, aiohttp.ClientSession(trace_configs=[trace]) as session:
        draft = sample_connection(base_url, skus=SKUS)
        connection = draft.model_copy(update={"options": {**draft.options, "orders_page_size": "2"}})
        simulator.adopt(connection, initial=50)
        yield Seller(simulator, connection, session, requests)


async def test_statuses_map_as_notifications_do_and_next_token_pages_carry_only_the_token(
    seller: Seller,
) -> None:
    sim, conn = seller.simulator, seller.connection
    expected = seller.notified(sim.place_order(conn, 1, [("SKU-1", 2), ("SKU-2", 1)], T0), T0)
    expected += seller.notified(sim.place_order(conn, 2, [("SKU-2", 3)], T0 + timedelta(minutes=1)), T0)
    pending = T0 + timedelta(minutes=2)
    expected += seller.notified(sim.place_order(conn, 3, [("SKU-1", 1)], pending, status="Pending"), pending)
    cancelled_at = T0 + timedelta(minutes=30)
    expected += seller.notified(sim.cancel_order(conn, 2, cancelled_at, purchased_at=T0), cancelled_at)
    sim.place_order(conn, 4, [("SKU-1", 1)], T0 + timedelta(minutes=3))
    sim.order_book[4]["status"] = "Shipped"  # shipped: no stock moves, its items are not even fetched

    batches = await seller.listed(T0 - timedelta(minutes=1))

    events = [e for b in batches for e in b.events]
    # The Canceled order gives its sale again (the Unshipped notification's id) before the cancellation.
    assert sorted(e.event_id for e in events) == sorted(e.event_id for e in expected)
    cancel = next(e for e in events if isinstance(e, OrderCancelled))
    assert (cancel.quantity, cancel.occurred_at) == (3, cancelled_at)
    assert [len(b.events) for b in batches] == [3, 2]  # orders 1, 3 | 4 (shipped: none), 2 (updated last)
    orders_calls = [r for r in seller.requests if r.startswith("/orders/v0/orders?")]
    assert len(orders_calls) == 2
    assert "LastUpdatedAfter=2026-11-23T11:59:00.000Z" in orders_calls[0]
    assert all(
        "NextToken=" in r and "LastUpdatedAfter" not in r and "MarketplaceIds=" in r for r in orders_calls[1:]
    )
    item_calls = [r for r in seller.requests if r.endswith("/orderItems?")]
    assert sorted(item_calls) == [f"/orders/v0/orders/{amazon_order_id(n)}/orderItems?" for n in (1, 2, 3)]


async def test_last_updated_after_brings_back_an_old_order_cancelled_since(seller: Seller) -> None:
    sim, conn = seller.simulator, seller.connection
    sim.place_order(conn, 10, [("SKU-1", 1)], T0)
    sim.place_order(conn, 11, [("SKU-1", 1)], T0 + timedelta(minutes=5))
    sim.cancel_order(conn, 10, T0 + timedelta(minutes=20), purchased_at=T0)

    batches = await seller.listed(T0 + timedelta(minutes=10))

    assert [(type(e).__name__, e.order_id) for b in batches for e in b.events] == [
        ("OrderPlaced", "114-0000000-0000010"),
        ("OrderCancelled", "114-0000000-0000010"),
    ]


async def test_every_call_is_charged_and_an_unusable_order_is_rejected_alone(seller: Seller) -> None:
    sim, conn = seller.simulator, seller.connection
    for n in range(3):
        sim.place_order(conn, 20 + n, [("SKU-1", 1)], T0 + timedelta(minutes=n))
    sim.orders[21][0]["SellerSKU"] = "NOT-LISTED"

    class Counting(TokenBucket):
        acquired = 0

        async def acquire(self, n: float = 1.0) -> float:
            self.acquired += 1
            return await super().acquire(n)

    budget = Counting(1000.0, 1000.0)
    batches = await seller.listed(T0, budget)

    assert [e.order_id for b in batches for e in b.events] == ["114-0000000-0000020", "114-0000000-0000022"]
    rejected = [reason for b in batches for _, reason in b.rejected]
    assert len(rejected) == 1
    assert "NOT-LISTED" in rejected[0]
    assert budget.acquired == len(seller.requests) == 2 + 3  # two getOrders pages, three getOrderItems


async def test_throttled_get_orders_is_a_retryable_channel_error(seller: Seller) -> None:
    seller.simulator.place_order(seller.connection, 30, [("SKU-1", 1)], T0)
    seller.simulator.orders_budget = TokenBucket(0.0167, 1.0)
    seller.simulator.orders_budget.take()
    with pytest.raises(ChannelError) as caught:
        await seller.listed(T0)
    assert caught.value.status == 429
    assert caught.value.retryable
    assert seller.connection.id in str(caught.value)
    assert seller.simulator.rate_limited == 1


async def test_an_outage_mid_list_raises_after_the_pages_already_yielded(seller: Seller) -> None:
    for n in range(3):
        seller.simulator.place_order(seller.connection, 40 + n, [("SKU-1", 1)], T0 + timedelta(minutes=n))
    got: list[OrderBatch] = []

    async def read_until_outage() -> None:
        source = list_orders(
            seller.session, seller.connection, T0, budget=TokenBucket(1000.0, 1000.0), received_at=RECEIVED
        )
        async for batch in source:
            got.append(batch)
            seller.simulator.fail_next(503)

    with pytest.raises(ChannelError) as caught:
        await read_until_outage()
    assert caught.value.status == 503
    assert caught.value.retryable
    assert [e.order_id for e in got[0].events] == ["114-0000000-0000040", "114-0000000-0000041"]
