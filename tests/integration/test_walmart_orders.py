"""Walmart's order list (``GET /v3/orders``) against the Marketplace simulator on loopback: cursor pages,
the last-modified filter, cancelled lines, bad orders, budget and failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import aiohttp
import pytest
from pydantic import SecretStr

from channels.connection import Connection
from channels.errors import ChannelError
from channels.ratelimit import TokenBucket
from channels.registry import SPECS
from channels.spec import OrderBatch
from channels.walmart.orders import list_orders
from lab.marketplaces.serve import serve
from lab.marketplaces.walmart import WalmartSimulator, sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced

pytestmark = pytest.mark.integration

SKUS = ("SKU-1", "SKU-2")
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)


@dataclass
class Shop:
    simulator: WalmartSimulator
    connection: Connection
    session: aiohttp.ClientSession
    requests: list[str] = field(default_factory=list)  # every HTTP request the session sent (method path)

    def webhook_events(self, body: bytes, headers: dict[str, str]) -> list[OrderPlaced | OrderCancelled]:
        adapter = SPECS["walmart"]
        assert adapter.verify_for(self.connection)(
            self.connection.webhook_secret.get_secret_value(), body, headers
        )
        events = adapter.normalise(self.connection, body, headers, RECEIVED)
        assert all(isinstance(e, OrderPlaced | OrderCancelled) for e in events), "orders only"
        return [e for e in events if isinstance(e, OrderPlaced | OrderCancelled)]


class CountingBucket(TokenBucket):
    def __init__(self) -> None:
        super().__init__(1000.0, 1000.0)
        self.acquired = 0

    async def acquire(self, n: float = 1.0) -> float:
        self.acquired += 1
        return await super().acquire(n)


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    draft = sample_connection("http://127.0.0.1:1", skus=SKUS)
    draft = draft.model_copy(update={"options": {**draft.options, "orders_page_size": "3"}})
    simulator = WalmartSimulator.for_connection(draft, quantity=100, burst=1000)
    requests: list[str] = []

    async def on_start(
        _: aiohttp.ClientSession, __: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        requests.append(f"{params.method} {params.url.path}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with serve(simulator.app()) as base_url, aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield Shop(simulator, draft.model_copy(update={"api_base_url": base_url}), session, requests)


async def collect(shop: Shop, since: datetime, budget: TokenBucket | None = None) -> list[OrderBatch]:
    bucket = budget if budget is not None else TokenBucket(1000.0, 1000.0)
    return [
        batch
        async for batch in list_orders(
            shop.session, shop.connection, since, budget=bucket, received_at=RECEIVED
        )
    ]


async def test_pages_follow_next_cursor_and_ids_equal_the_notifications_including_cancellations(
    shop: Shop,
) -> None:
    expected: list[OrderPlaced | OrderCancelled] = []
    for n in range(7):
        body, headers = shop.simulator.place_order(
            shop.connection, 5000 + n, [("SKU-1", 1), ("SKU-2", n + 1)], T0 + timedelta(minutes=n)
        )
        expected += shop.webhook_events(body, headers)
    # Line 2 of the second order is auto-cancelled later: the list shows it as a Cancelled line status.
    body, headers = shop.simulator.cancel_order(
        shop.connection, 5001, T0 + timedelta(hours=1), line_numbers=[2]
    )
    expected += shop.webhook_events(body, headers)

    budget = CountingBucket()
    batches = await collect(shop, T0, budget)

    assert len(batches) == 3  # 7 orders, 3 a page
    events = [e for b in batches for e in b.events]
    assert sorted(e.event_id for e in events) == sorted(e.event_id for e in expected)
    cancels = [e for e in events if isinstance(e, OrderCancelled)]
    assert [(c.event_id, c.quantity, c.occurred_at) for c in cancels] == [
        ("walmart-acme:cancel:5001:line:2", 2, T0 + timedelta(hours=1))
    ]
    # Oldest change first: the cancelled order moved to the last page, and high water only rises.
    assert [e.order_id for e in batches[-1].events][-1] == "5001"
    waters = [b.high_water for b in batches if b.high_water is not None]
    assert len(waters) == len(batches)
    assert waters == sorted(waters)
    assert waters[-1] == T0 + timedelta(hours=1)
    assert all(not b.rejected for b in batches)
    # One token, then one GET per page; every call charged to the budget first.
    assert shop.requests == ["POST /v3/token"] + ["GET /v3/orders"] * 3
    assert budget.acquired == len(shop.requests)


async def test_since_keeps_orders_changed_after_it_and_drops_the_rest(shop: Shop) -> None:
    for n in range(4):
        shop.simulator.place_order(shop.connection, 6000 + n, [("SKU-1", 1)], T0 + timedelta(minutes=10 * n))
    shop.simulator.cancel_order(shop.connection, 6000, T0 + timedelta(minutes=35))

    batches = await collect(shop, T0 + timedelta(minutes=20))

    ids = [e.event_id for b in batches for e in b.events]
    # 6002 and 6003 were created after `since`; 6000 was changed (cancelled) after it; 6001 did neither.
    assert sorted(ids) == sorted(
        [
            "walmart-acme:order:6002:line:1",
            "walmart-acme:order:6003:line:1",
            "walmart-acme:order:6000:line:1",
            "walmart-acme:cancel:6000:line:1",
        ]
    )


async def test_an_unusable_order_is_rejected_with_its_reason_and_the_others_still_come(shop: Shop) -> None:
    for n in range(3):
        shop.simulator.place_order(shop.connection, 7000 + n, [("SKU-1", 1)], T0 + timedelta(minutes=n))
    shop.simulator.orders["7001"]["orderLines"][0]["sku"] = "NOT-LISTED"

    batches = await collect(shop, T0)

    assert [e.order_id for b in batches for e in b.events] == ["7000", "7002"]
    rejected = [r for b in batches for r in b.rejected]
    assert len(rejected) == 1
    raw, reason = rejected[0]
    assert b'"purchaseOrderId": "7001"' in raw
    assert "NOT-LISTED" in reason
    assert "walmart-acme" in reason


async def test_a_wrong_api_key_raises_naming_the_connection(shop: Shop) -> None:
    shop.simulator.place_order(shop.connection, 8000, [("SKU-1", 1)], T0)
    client_id = shop.simulator.client_id
    shop.connection = shop.connection.model_copy(update={"access_token": SecretStr(f"{client_id}:wrong")})
    with pytest.raises(ChannelError) as caught:
        await collect(shop, T0)
    assert caught.value.status == 401
    assert not caught.value.retryable
    assert "walmart-acme" in str(caught.value)
    assert "access_token" in str(caught.value)


async def test_an_outage_after_the_first_page_raises_retryably_after_that_page(shop: Shop) -> None:
    for n in range(5):
        shop.simulator.place_order(shop.connection, 9000 + n, [("SKU-1", 1)], T0 + timedelta(minutes=n))
    got: list[OrderBatch] = []

    async def read_failing_after_each_page() -> None:
        async for batch in list_orders(
            shop.session, shop.connection, T0, budget=TokenBucket(1000.0, 1000.0), received_at=RECEIVED
        ):
            got.append(batch)
            shop.simulator.fail_next(503)

    with pytest.raises(ChannelError) as caught:
        await read_failing_after_each_page()
    assert caught.value.status == 503
    assert caught.value.retryable
    assert [e.order_id for e in got[0].events] == ["9000", "9001", "9002"]


async def test_the_simulator_answers_429_when_the_list_is_read_past_its_rate_limit(shop: Shop) -> None:
    shop.simulator.bucket = TokenBucket(0.001, 2.0)  # the token call is free; two GETs, then refused
    for n in range(9):
        shop.simulator.place_order(shop.connection, 9500 + n, [("SKU-1", 1)], T0 + timedelta(minutes=n))
    with pytest.raises(ChannelError) as caught:
        await collect(shop, T0)
    assert caught.value.status == 429
    assert caught.value.retryable
    assert caught.value.retry_after_s
    assert shop.simulator.rate_limited == 1
