"""Shopify's GraphQL order list: gids made into the webhook's numeric ids, cursor pages, an unusable order
quarantined without stopping the others, outages and throttling as ChannelError."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from channels.connection import Connection
from channels.errors import ChannelError
from channels.orderlist import PAGE_SIZE_OPTION
from channels.ratelimit import TokenBucket
from channels.shopify import API_VERSION, webhooks
from channels.shopify.orders import list_orders, rest_order, rest_refund
from channels.spec import OrderBatch
from lab.local.process import free_port
from lab.marketplaces.serve import serve
from lab.marketplaces.shopify import ShopifySimulator, sample_connection
from schemas.inventory_events import OrderCancelled

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SKUS = ("TEE", "MUG")


@pytest.fixture
async def shop() -> AsyncIterator[tuple[ShopifySimulator, Connection]]:
    port = free_port()
    conn = sample_connection(f"http://127.0.0.1:{port}", skus=SKUS)
    conn = conn.model_copy(update={"options": {PAGE_SIZE_OPTION: "2"}})
    sim = ShopifySimulator(access_token=conn.access_token.get_secret_value())
    async with serve(sim.app(), port=port):
        yield sim, conn


async def _all(conn: Connection, since: datetime) -> list[OrderBatch]:
    async with aiohttp.ClientSession() as session:
        return [
            b
            async for b in list_orders(
                session, conn, since, budget=TokenBucket(1000, 1000), received_at=T0 + timedelta(hours=1)
            )
        ]


def test_graphql_node_becomes_the_webhooks_rest_shape() -> None:
    node = {
        "id": "gid://shopify/Order/450789469",
        "legacyResourceId": "450789469",
        "createdAt": "2026-03-02T09:00:00Z",
        "lineItems": {
            "nodes": [
                {
                    "id": "gid://shopify/LineItem/466157049",
                    "sku": "TEE",
                    "quantity": 2,
                    "variant": {"legacyResourceId": "39072856"},
                }
            ],
            "pageInfo": {"hasNextPage": False},
        },
    }
    assert rest_order(node) == {
        "id": 450789469,
        "created_at": "2026-03-02T09:00:00Z",
        "line_items": [{"id": 466157049, "variant_id": 39072856, "sku": "TEE", "quantity": 2}],
        "refunds": [],
    }


def test_a_graphql_refund_becomes_the_refund_webhooks_rest_shape() -> None:
    node = {
        "legacyResourceId": "509562969",
        "createdAt": "2026-03-02T10:00:00Z",
        "refundLineItems": {
            "nodes": [
                {
                    "id": "gid://shopify/RefundLineItem/104689539",
                    "quantity": 1,
                    "restockType": "RETURN",
                    "lineItem": {
                        "id": "gid://shopify/LineItem/466157049",
                        "sku": "TEE",
                        "variant": {"legacyResourceId": "39072856"},
                    },
                }
            ],
            "pageInfo": {"hasNextPage": False},
        },
    }
    assert rest_refund(450789469, node) == {
        "id": 509562969,
        "order_id": 450789469,
        "created_at": "2026-03-02T10:00:00Z",
        "refund_line_items": [
            {
                "id": 104689539,
                "line_item_id": 466157049,
                "quantity": 1,
                "restock_type": "return",
                "line_item": {"variant_id": 39072856, "sku": "TEE"},
            }
        ],
    }


async def test_a_cancellation_whose_webhooks_were_lost_is_backfilled_with_their_ids(
    shop: tuple[ShopifySimulator, Connection],
) -> None:
    sim, conn = shop
    placed = sim.place_order(conn, 400, [("TEE", 2), ("MUG", 1)], T0)
    cancelled = sim.cancel_order(conn, 400, T0 + timedelta(minutes=5))  # neither webhook delivered
    listed = [e for b in await _all(conn, T0) for e in b.events]
    from_webhooks = [
        *webhooks.normalise(conn, *placed, T0),
        *webhooks.normalise(conn, *cancelled, T0),
    ]
    assert [e.event_id for e in listed] == [e.event_id for e in from_webhooks]
    restocks = [e for e in listed if isinstance(e, OrderCancelled)]
    assert [(e.sku, e.quantity, e.sale_event_id) for e in restocks] == [
        ("TEE", 2, f"{conn.id}:order:400:line:40001"),
        ("MUG", 1, f"{conn.id}:order:400:line:40002"),
    ]


async def test_pages_follow_the_cursor_and_an_unmapped_line_is_rejected_alone(
    shop: tuple[ShopifySimulator, Connection],
) -> None:
    sim, conn = shop
    for n in range(5):
        sim.place_order(conn, 100 + n, [("TEE", 1)], T0 + timedelta(minutes=n))
    sim.orders[102].line_items[0].update(variant_id=999, sku="NOT-LISTED")  # sold outside the mapping
    batches = await _all(conn, T0)
    assert [len(b.events) + len(b.rejected) for b in batches] == [2, 2, 1]
    assert sim.order_list_calls == 3
    assert [e.order_id for b in batches for e in b.events] == ["100", "101", "103", "104"]
    rejected = [r for b in batches for r in b.rejected]
    assert len(rejected) == 1
    assert b"gid://shopify/Order/102" in rejected[0][0]
    assert "not mapped to a master SKU" in rejected[0][1]


async def test_simulator_refuses_a_forged_cursor_and_a_page_over_250(
    shop: tuple[ShopifySimulator, Connection],
) -> None:
    _sim, conn = shop
    url = f"{conn.api_base_url}/admin/api/{API_VERSION}/graphql.json"
    headers = {"X-Shopify-Access-Token": conn.access_token.get_secret_value()}
    query = "query { orders(first: $first, after: $after) { nodes { id } } }"
    async with aiohttp.ClientSession() as session:
        for variables, problem in (
            ({"first": 2, "after": "bm90LWEtY3Vyc29y"}, "invalid cursor"),
            ({"first": 251}, "'first'"),
        ):
            async with session.post(
                url, json={"query": query, "variables": variables}, headers=headers
            ) as resp:
                body = await resp.json()
            assert resp.status == 200
            assert problem in body["errors"][0]["message"]


async def test_an_outage_after_the_first_page_raises_a_retryable_error_naming_the_connection(
    shop: tuple[ShopifySimulator, Connection],
) -> None:
    sim, conn = shop
    for n in range(4):
        sim.place_order(conn, 200 + n, [("MUG", 1)], T0 + timedelta(minutes=n))
    got: list[OrderBatch] = []
    async with aiohttp.ClientSession() as session:
        pages = list_orders(session, conn, T0, budget=TokenBucket(1000, 1000), received_at=T0)
        got.append(await anext(pages))
        sim.fail_next(503)
        with pytest.raises(ChannelError) as caught:
            await anext(pages)
    assert [e.order_id for e in got[0].events] == ["200", "201"]
    assert caught.value.status == 503
    assert caught.value.retryable
    assert conn.id in str(caught.value)


async def test_over_the_simulators_rate_limit_is_a_retryable_429(
    shop: tuple[ShopifySimulator, Connection],
) -> None:
    sim, conn = shop
    sim.bucket = TokenBucket(0.001, 1)  # one call, then throttled
    for n in range(3):
        sim.place_order(conn, 300 + n, [("TEE", 1)], T0 + timedelta(minutes=n))
    with pytest.raises(ChannelError) as caught:
        await _all(conn, T0)
    assert caught.value.status == 429
    assert caught.value.retryable
    assert caught.value.retry_after_s
    assert sim.rate_limited == 1


async def test_a_line_above_the_largest_quantity_is_rejected_alone_its_neighbours_listed(
    shop: tuple[ShopifySimulator, Connection],
) -> None:
    """The reconciler publishes a page's events and quarantines its rejected orders: an order with one line
    of 3,000,000,000 units gives its other line's events and is rejected with the line and the range."""
    sim, conn = shop
    sim.place_order(conn, 200, [("TEE", 1)], T0)
    sim.place_order(conn, 201, [("TEE", 2), ("MUG", 1)], T0 + timedelta(minutes=1))
    sim.orders[201].line_items[0].update(quantity=3_000_000_000)  # above PostgreSQL's integer
    sim.cancel_order(conn, 201, T0 + timedelta(minutes=2))  # its refund restocks both lines
    batches = await _all(conn, T0)
    events = [e for b in batches for e in b.events]
    assert [(e.order_id, e.sku, e.quantity, type(e).__name__) for e in events] == [
        ("200", "TEE", 1, "OrderPlaced"),
        ("201", "MUG", 1, "OrderPlaced"),
        ("201", "MUG", 1, "OrderCancelled"),
    ]
    [(body, reason)] = [r for b in batches for r in b.rejected]
    assert b"gid://shopify/Order/201" in body
    assert reason.startswith("2 line(s) refused, the 2 event(s) of the other lines kept: ")
    assert "line 20101: quantity 3000000000 is above the largest allowed, 2147483647" in reason
    assert "quantity 3000000000 is above the largest allowed, 2147483647" in reason.split("; ")[1]
