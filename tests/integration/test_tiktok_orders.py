"""TikTok Shop's order list (Get Order List, 202309) against the simulator on loopback: update-time filter
and sort, page tokens, cancelled orders, bad orders and failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from channels.connection import Connection
from channels.errors import ChannelError
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from channels.tiktok import webhooks
from channels.tiktok.orders import list_orders
from lab.marketplaces.tiktok import TikTokSimulator, sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import serving_sample

pytestmark = pytest.mark.integration

SKUS = ("SKU-1", "SKU-2")
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)


async def listed(session: aiohttp.ClientSession, connection: Connection, since: datetime) -> list[OrderBatch]:
    source = list_orders(session, connection, since, budget=TokenBucket(1000.0, 1000.0), received_at=RECEIVED)
    return [batch async for batch in source]


async def notified(
    session: aiohttp.ClientSession, connection: Connection, signed: tuple[bytes, dict[str, str]]
) -> list[OrderPlaced | OrderCancelled]:
    body, headers = signed
    assert webhooks.verifier(connection)(connection.webhook_secret.get_secret_value(), body, headers)
    expanded = await webhooks.expand(session, connection, body, headers)
    return webhooks.normalise(connection, expanded, headers, RECEIVED)


async def test_cancelled_orders_give_the_notifications_ids_and_pages_follow_update_time() -> None:
    simulator = TikTokSimulator()
    async with serving_sample(simulator, sample_connection, SKUS, initial=50) as (draft, session):
        connection = draft.model_copy(update={"options": {**draft.options, "orders_page_size": "2"}})
        expected = []
        for n in range(3):
            signed = simulator.place_order(
                connection, 100 + n, [("SKU-1", 1), ("SKU-2", 2)], T0 + timedelta(minutes=n)
            )
            expected += await notified(session, connection, signed)
        signed = simulator.cancel_order(connection, 100, T0 + timedelta(hours=1))
        expected += await notified(session, connection, signed)

        batches = await listed(session, connection, T0)

        events = [e for b in batches for e in b.events]
        assert sorted(e.event_id for e in events) == sorted({e.event_id for e in expected})
        assert len(batches) == 2
        # Sorted by update time: the cancelled order 100 comes last, its sales before its cancellations.
        assert [e.order_id for e in batches[-1].events] == ["100"] * 6
        kinds = [type(e).__name__ for e in batches[-1].events]
        assert kinds == ["OrderPlaced"] * 3 + ["OrderCancelled"] * 3
        assert batches[-1].high_water == T0 + timedelta(hours=1)

        later = await listed(session, connection, T0 + timedelta(minutes=30))
        assert {e.order_id for b in later for e in b.events} == {"100"}


async def test_an_unusable_order_is_rejected_and_an_outage_raises_naming_the_connection() -> None:
    simulator = TikTokSimulator()
    async with serving_sample(simulator, sample_connection, SKUS, initial=50) as (connection, session):
        for n in range(2):
            simulator.place_order(connection, 200 + n, [("SKU-1", 1)], T0 + timedelta(minutes=n))
        simulator.orders["201"]["line_items"][0].update(sku_id="999", seller_sku="NOPE")

        batches = await listed(session, connection, T0)
        assert [e.order_id for b in batches for e in b.events] == ["200"]
        assert next(reason for b in batches for _, reason in b.rejected).startswith("line 201001")

        simulator.fail_next(503)
        with pytest.raises(ChannelError) as caught:
            await listed(session, connection, T0)
        assert caught.value.status == 503
        assert caught.value.retryable
        assert connection.id in str(caught.value)
