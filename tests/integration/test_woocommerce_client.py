"""The WooCommerce inventory client against the store simulator served on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import pytest
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.errors import ChannelError
from channels.ratelimit import TokenBucket
from channels.woocommerce import MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S, webhooks
from channels.woocommerce.client import WooCommerceInventoryClient
from lab.marketplaces.woocommerce import WooCommerceSimulator, sample_connection
from tests.channel_kit import FrozenClock, serving

pytestmark = pytest.mark.integration

SKUS = ("SKU-1", "SKU-2", "SKU-3", "SKU-4")


@dataclass
class Store:
    simulator: WooCommerceSimulator
    connection: Connection
    session: aiohttp.ClientSession
    client: WooCommerceInventoryClient
    clock: FrozenClock

    def item(self, sku: str) -> str:
        listing = self.connection.listings[sku]
        return (listing.inventory_ref or listing.listing_id).rpartition("/")[2]


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    clock = FrozenClock()
    draft = sample_connection("http://127.0.0.1:1", skus=SKUS)
    simulator = WooCommerceSimulator.for_connection(draft, quantity=7, clock=clock, burst=1000)
    async with serving(simulator, draft) as (connection, session):
        client = WooCommerceInventoryClient(session, connection)
        yield Store(simulator, connection, session, client, clock)


async def test_set_available_writes_simple_products_and_variations(store: Store) -> None:
    await store.client.set_available("SKU-1", 3, change_from=None, reference="r1")
    await store.client.set_available("SKU-2", 0, change_from=7, reference="r2")
    assert store.simulator.available[store.item("SKU-1")] == 3
    assert store.simulator.available[store.item("SKU-2")] == 0
    assert [(c.item_id, c.quantity, c.status, c.via) for c in store.simulator.calls] == [
        (store.item("SKU-1"), 3, 200, "put"),
        (store.item("SKU-2"), 0, 200, "put"),
    ]
    assert store.item("SKU-2") in store.simulator.parents  # really went to the variation endpoint


async def test_set_many_batches_per_collection_and_get_available_reads_back(store: Store) -> None:
    await store.client.set_many([("SKU-1", 1), ("SKU-2", 2), ("SKU-3", 3), ("SKU-4", 4)], reference="r")
    assert {c.via for c in store.simulator.calls} == {"batch"}
    assert await store.client.get_available(list(SKUS)) == {"SKU-1": 1, "SKU-2": 2, "SKU-3": 3, "SKU-4": 4}
    store.simulator.available[store.item("SKU-3")] = 11  # a manual edit in wp-admin
    assert await store.client.get_available(["SKU-3"]) == {"SKU-3": 11}


async def test_set_many_splits_at_the_batch_limit() -> None:
    skus = tuple(f"S-{n}" for n in range(1, 2 * MAX_BATCH + 2))  # 101 simple products, 100 variations
    draft = sample_connection("http://127.0.0.1:1", skus=skus)
    # a frozen budget of exactly three calls: two product batches and one variation batch
    simulator = WooCommerceSimulator.for_connection(draft, burst=3, clock=FrozenClock())
    async with serving(simulator, draft) as (connection, session):
        client = WooCommerceInventoryClient(session, connection)
        await client.set_many([(sku, 9) for sku in skus], reference="r")
        assert set(simulator.available.values()) == {9}
        assert [c.via for c in simulator.calls] == ["batch"] * len(skus)
        with pytest.raises(ChannelError, match="HTTP 429"):
            await client.get_available([skus[0]])
        assert simulator.rate_limited == 1


async def test_refused_items_are_named_and_the_rest_applied(store: Store) -> None:
    stray = store.connection.model_copy(
        update={"listings": {**store.connection.listings, "GONE": Listing(listing_id="999")}}
    )
    client = WooCommerceInventoryClient(store.session, stray)
    with pytest.raises(ChannelError, match=r"'GONE'.*Invalid ID") as caught:
        await client.set_many([("SKU-1", 5), ("GONE", 1), ("NOT-LISTED", 2)], reference="r")
    assert caught.value.retryable is False
    assert "NOT-LISTED" in str(caught.value)
    assert store.simulator.available[store.item("SKU-1")] == 5
    with pytest.raises(ChannelError, match="HTTP 404") as single:
        await client.set_available("GONE", 1, change_from=None, reference="r")
    assert single.value.retryable is False


async def test_a_burst_beyond_the_budget_gets_429_with_retry_after(store: Store) -> None:
    store.simulator.bucket = TokenBucket(RATE_LIMIT_PER_S, RATE_BURST, clock=store.clock)
    for _ in range(int(RATE_BURST)):
        await store.client.set_available("SKU-1", 1, change_from=None, reference="r")
    with pytest.raises(ChannelError) as caught:
        await store.client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert caught.value.status == 429
    assert caught.value.retryable is True
    assert caught.value.retry_after_s is not None
    assert caught.value.retry_after_s >= 1
    assert store.simulator.rate_limited == 1
    store.clock.now += 1.0 / RATE_LIMIT_PER_S  # one token comes back
    await store.client.set_available("SKU-1", 2, change_from=None, reference="r")
    assert store.simulator.available[store.item("SKU-1")] == 2


async def test_the_default_budget_is_the_channels(store: Store) -> None:
    simulator = WooCommerceSimulator(clock=store.clock)
    assert (simulator.bucket.rate, simulator.bucket.burst) == (RATE_LIMIT_PER_S, RATE_BURST)


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (500, True), (400, False), (404, False)])
async def test_injected_failures_are_classified(store: Store, status: int, retryable: bool) -> None:
    store.simulator.fail_next(status)
    with pytest.raises(ChannelError) as caught:
        await store.client.set_many([("SKU-1", 1)], reference="r")
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    await store.client.set_many([("SKU-1", 1)], reference="r")  # only the next call failed
    assert store.simulator.available[store.item("SKU-1")] == 1


async def test_wrong_or_malformed_credentials_are_not_retryable(store: Store) -> None:
    wrong = store.connection.model_copy(update={"access_token": SecretStr("ck_x:cs_y")})
    client = WooCommerceInventoryClient(store.session, wrong)
    with pytest.raises(ChannelError) as caught:
        await client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert (caught.value.status, caught.value.retryable) == (401, False)
    malformed = store.connection.model_copy(update={"access_token": SecretStr("token")})
    with pytest.raises(ChannelError, match="consumer key") as bad:
        await WooCommerceInventoryClient(store.session, malformed).get_available(["SKU-1"])
    assert bad.value.retryable is False
    assert store.simulator.calls == []


async def test_orders_and_cancellations_move_the_stores_stock_and_sign_webhooks(store: Store) -> None:
    at = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    body, headers = store.simulator.place_order(store.connection, 41, [("SKU-1", 2), ("SKU-2", 3)], at)
    secret = store.connection.webhook_secret.get_secret_value()
    assert webhooks.verify(secret, body, headers)
    assert await store.client.get_available(["SKU-1", "SKU-2"]) == {"SKU-1": 5, "SKU-2": 4}
    sales = webhooks.normalise(store.connection, body, headers, at)
    assert [(e.sku, e.quantity) for e in sales] == [("SKU-1", 2), ("SKU-2", 3)]
    body, headers = store.simulator.cancel_order(store.connection, 41, at)
    assert headers[webhooks.TOPIC_HEADER] == "order.updated"
    assert webhooks.verify(secret, body, headers)
    assert await store.client.get_available(["SKU-1", "SKU-2"]) == {"SKU-1": 7, "SKU-2": 7}
    cancels = webhooks.normalise(store.connection, body, headers, at)
    assert [e.event_id.split(":")[1] for e in cancels] == ["cancel", "cancel"]
