"""Flipkart's order list (Search Shipments, v3) against the simulator on loopback: one sweep per filter type
and cancellation type, nextPageUrl paging, status mapping, the high water, bad shipments and failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from channels.connection import Connection
from channels.errors import ChannelError
from channels.flipkart import api, webhooks
from channels.flipkart.orders import SWEEPS, list_orders, next_page_url
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from lab.marketplaces.flipkart import FlipkartSimulator, sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import serving_sample

pytestmark = pytest.mark.integration

SKUS = ("SKU-1", "SKU-2")
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
Event = OrderPlaced | OrderCancelled


def paged(connection: Connection, size: int) -> Connection:
    return connection.model_copy(update={"options": {**connection.options, "orders_page_size": str(size)}})


async def listed(session: aiohttp.ClientSession, connection: Connection, since: datetime) -> list[OrderBatch]:
    budget = TokenBucket(1000.0, 1000.0)
    return [b async for b in list_orders(session, connection, since, budget=budget, received_at=RECEIVED)]


def roomy() -> FlipkartSimulator:
    """A simulator whose rate limit these tests never reach (one test reaches it on purpose)."""
    return FlipkartSimulator(bucket=TokenBucket(1000.0, 1000.0))


async def notified(
    session: aiohttp.ClientSession, connection: Connection, signed: tuple[bytes, dict[str, str]], at: datetime
) -> list[Event]:
    """What the gateway makes of a notification sent at `at`: verify, expand, normalise."""
    body, headers = signed
    assert webhooks.verify(connection.webhook_secret.get_secret_value(), body, headers, now=at)
    expanded = await webhooks.expand(session, connection, body, headers)
    return webhooks.normalise(connection, expanded, headers, RECEIVED)


async def test_sweeps_map_every_status_to_the_notifications_ids_and_only_the_last_moves_the_checkpoint() -> (
    None
):
    simulator = roomy()
    async with serving_sample(simulator, sample_connection, SKUS, initial=50) as (draft, session):
        connection = paged(draft, 2)
        expected: list[Event] = []
        for n in range(6):  # 100..102 stay APPROVED, 103 is shipped, 104 and 105 are cancelled
            at = T0 + timedelta(minutes=n)
            signed = simulator.place_order(connection, 100 + n, [("SKU-1", 1), ("SKU-2", 2)], at)
            expected += await notified(session, connection, signed, at)
        simulator.advance_order(103, "SHIPPED", T0 + timedelta(minutes=30))
        cancelled_at = T0 + timedelta(hours=1)
        for order, by in ((104, "buyerCancellation"), (105, "sellerCancellation")):
            signed = simulator.cancel_order(connection, order, cancelled_at, by=by)
            expected += await notified(session, connection, signed, cancelled_at)
        searches = simulator.searches

        batches = await listed(session, connection, T0)

        events = [e for b in batches for e in b.events]
        key = [(type(e).__name__, e.event_id, e.sku, e.quantity) for e in events]
        assert sorted(key) == sorted((type(e).__name__, e.event_id, e.sku, e.quantity) for e in expected)
        assert len({e.event_id for e in events}) == len(events)
        assert all(b.rejected == [] for b in batches)
        # one first page per sweep (5) and one next page for the three APPROVED orders at two a page
        assert simulator.searches - searches == len(SWEEPS) + 1
        # a cancelled shipment gives each item's sale, then its cancellation undoing it, at the cancellation
        by_order = {o: [e for e in events if e.order_id == o] for o in ("OD104", "OD105")}
        for order_events in by_order.values():
            assert [type(e) for e in order_events] == [OrderPlaced] * 2 + [OrderCancelled] * 2
            sales = [e.event_id for e in order_events[:2]]
            assert [e.sale_event_id for e in order_events[2:] if isinstance(e, OrderCancelled)] == sales
            assert [e.occurred_at for e in order_events[2:]] == [cancelled_at] * 2
        # shipped or approved: the sale only, at the order time
        assert {type(e) for e in events if e.order_id in ("OD100", "OD103")} == {OrderPlaced}
        # pages of the first four sweeps hold the checkpoint; the last sweep's pages move it, oldest first,
        # and its last page to the newest time seen in any sweep (the cancellations an hour later)
        *early, last_a, last_b = batches
        assert [b.high_water for b in early] == [None] * len(early)
        assert [e.order_id for e in last_a.events + last_b.events] == [
            f"OD{n}" for n in (100, 100, 101, 101, 102, 102)
        ]
        assert last_a.high_water == T0 + timedelta(minutes=1)
        assert last_b.high_water == cancelled_at


async def test_since_filters_orders_on_their_order_date_and_cancellations_on_theirs() -> None:
    simulator = roomy()
    async with serving_sample(simulator, sample_connection, SKUS, initial=50) as (connection, session):
        for n in range(4):
            simulator.place_order(connection, 200 + n, [("SKU-1", 1)], T0 + timedelta(minutes=n))
        simulator.cancel_order(connection, 200, T0 + timedelta(hours=1), by="marketplaceCancellation")

        batches = await listed(session, connection, T0 + timedelta(minutes=2))

        events = [e for b in batches for e in b.events]
        # 202 and 203 were ordered after since; 200 was ordered before it but cancelled after it
        assert sorted({e.order_id for e in events}) == ["OD200", "OD202", "OD203"]
        assert [type(e) for e in events if e.order_id == "OD200"] == [OrderPlaced, OrderCancelled]
        assert batches[-1].high_water == T0 + timedelta(hours=1)


async def test_a_partly_cancelled_shipment_is_in_two_sweeps_but_gives_its_events_once() -> None:
    simulator = roomy()
    async with serving_sample(simulator, sample_connection, SKUS, initial=50) as (connection, session):
        simulator.place_order(connection, 300, [("SKU-1", 1), ("SKU-2", 1)], T0)
        simulator.cancel_order(connection, 300, T0 + timedelta(minutes=5))
        shipment = simulator.shipments[simulator.shipment_of_order["OD300"]]
        kept = shipment["orderItems"][1]
        kept["status"] = "APPROVED"
        del kept["cancellationDate"]

        batches = await listed(session, connection, T0)

        events = [e for b in batches for e in b.events]
        assert len({e.event_id for e in events}) == len(events) == 3
        assert [(type(e), e.sku) for e in events if isinstance(e, OrderCancelled)] == [
            (OrderCancelled, "SKU-1")
        ]


async def test_an_unusable_shipment_is_rejected_with_its_id_and_failures_raise_naming_the_connection() -> (
    None
):
    simulator = roomy()
    async with serving_sample(simulator, sample_connection, SKUS, initial=50) as (draft, session):
        connection = paged(draft, 1)
        for n in range(2):
            simulator.place_order(connection, 400 + n, [("SKU-1", 1)], T0 + timedelta(minutes=n))
        bad = simulator.shipment_of_order["OD401"]
        simulator.shipments[bad]["orderItems"][0]["sku"] = "NOPE"

        batches = await listed(session, connection, T0)
        assert [e.order_id for b in batches for e in b.events] == ["OD400"]
        [(raw, reason)] = [r for b in batches for r in b.rejected]
        assert reason.startswith(f"shipment {bad!r}")
        assert "not mapped" in reason
        assert b'"NOPE"' in raw

        # Flipkart fails on the preDispatch sweep's second page: the pages before it were yielded
        got: list[OrderBatch] = []
        with pytest.raises(ChannelError) as caught:
            await collect_failing_after(session, connection, simulator, got, pages=len(SWEEPS))
        assert len(got) == len(SWEEPS)
        assert [e.order_id for e in got[-1].events] == ["OD400"]
        assert (caught.value.status, caught.value.retryable) == (503, True)
        assert connection.id in str(caught.value)

    # over Flipkart's rate limit: a retryable 429 with its Retry-After, naming the connection
    simulator = FlipkartSimulator(bucket=TokenBucket(0.01, 1.0))
    async with serving_sample(simulator, sample_connection, SKUS, initial=50) as (connection, session):
        with pytest.raises(ChannelError) as limited:
            await listed(session, connection, T0)
        assert (limited.value.status, limited.value.retryable) == (429, True)
        assert limited.value.retry_after_s is not None
        assert "rate limit" in str(limited.value)
        assert connection.id in str(limited.value)
        assert simulator.rate_limited == 1


async def collect_failing_after(
    session: aiohttp.ClientSession,
    connection: Connection,
    simulator: FlipkartSimulator,
    got: list[OrderBatch],
    *,
    pages: int,
) -> None:
    """List into `got`, telling the simulator to answer 503 once `pages` pages are in."""
    source = list_orders(session, connection, T0, budget=TokenBucket(1000.0, 1000.0), received_at=RECEIVED)
    async for batch in source:
        got.append(batch)
        if len(got) == pages:
            simulator.fail_next(503)


async def test_the_simulator_refuses_searches_flipkart_refuses() -> None:
    simulator = roomy()
    async with serving_sample(simulator, sample_connection, SKUS, initial=50) as (connection, session):
        url = connection.api_base_url + api.SHIPMENT_SEARCH_PATH
        bad = [
            {"filter": {"type": "cancelled", "states": ["CANCELLED"]}},  # no cancellationType
            {"filter": {"type": "preDispatch", "states": ["SHIPPED"]}},  # a postDispatch state
            {"filter": {"states": ["APPROVED"]}},  # no type
            {"filter": {"type": "preDispatch", "states": ["APPROVED"]}, "pagination": {"pageSize": 21}},
            {"filter": {"type": "preDispatch", "states": ["APPROVED"], "orderDate": {"from": "yesterday"}}},
        ]
        for body in bad:
            async with session.post(url, json=body, headers=api.headers(connection)) as resp:
                assert resp.status == 400, body
        async with session.get(url, params={"next_token": "forged"}, headers=api.headers(connection)) as resp:
            assert resp.status == 400


def test_next_page_urls_resolve_against_the_api_base_and_never_leave_its_origin() -> None:
    connection = sample_connection("https://api.flipkart.net", skus=SKUS)
    base = "https://api.flipkart.net/sellers"
    assert (
        next_page_url(connection, "/v3/shipments/filter?next_token=a")
        == f"{base}/v3/shipments/filter?next_token=a"
    )
    assert (
        next_page_url(connection, "v3/shipments/filter?next_token=a")
        == f"{base}/v3/shipments/filter?next_token=a"
    )
    assert next_page_url(connection, "/sellers/v3/shipments/filter?next_token=a") == (
        f"{base}/v3/shipments/filter?next_token=a"
    )
    same = f"{base}/v3/shipments/filter?next_token=a"
    assert next_page_url(connection, same) == same
    with pytest.raises(ChannelError, match="refusing") as refused:
        next_page_url(connection, "https://elsewhere.example/v3/shipments/filter?next_token=a")
    assert not refused.value.retryable
