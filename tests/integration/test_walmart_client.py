"""The Walmart inventory client against the Marketplace simulator served on loopback."""

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
from channels.walmart import FEED_THRESHOLD, FEEDS_PER_HOUR, RATE_BURST, RATE_LIMIT_PER_S, webhooks
from channels.walmart.client import WalmartInventoryClient
from lab.marketplaces.walmart import WalmartSimulator, sample_connection
from tests.channel_kit import FrozenClock, serving

pytestmark = pytest.mark.integration

SKUS = ("SKU-1", "SKU-2", "SKU-3")


@dataclass
class Seller:
    simulator: WalmartSimulator
    connection: Connection
    session: aiohttp.ClientSession
    client: WalmartInventoryClient
    clock: FrozenClock

    def client_for(
        self, connection: Connection, *, feed_threshold: int = FEED_THRESHOLD
    ) -> WalmartInventoryClient:
        return WalmartInventoryClient(self.session, connection, feed_threshold=feed_threshold)


@pytest.fixture
async def seller() -> AsyncIterator[Seller]:
    clock = FrozenClock()
    draft = sample_connection("http://127.0.0.1:1", skus=SKUS)
    simulator = WalmartSimulator.for_connection(draft, quantity=7, clock=clock, burst=10_000)
    async with serving(simulator, draft) as (connection, session):
        yield Seller(simulator, connection, session, WalmartInventoryClient(session, connection), clock)


async def test_set_available_puts_the_seller_sku_and_get_available_reads_it(seller: Seller) -> None:
    await seller.client.set_available("SKU-1", 3, change_from=None, reference="r1")
    assert seller.simulator.available["WM-SKU-1"] == 3
    assert [(c.sku, c.quantity, c.status, c.via) for c in seller.simulator.calls] == [
        ("WM-SKU-1", 3, 200, "put")
    ]
    assert await seller.client.get_available(list(SKUS)) == {"SKU-1": 3, "SKU-2": 7, "SKU-3": 7}
    assert len(seller.simulator.tokens) == 1  # one token, reused across calls


async def test_small_batches_go_item_by_item(seller: Seller) -> None:
    await seller.client.set_many([("SKU-1", 1), ("SKU-2", 2), ("SKU-1", 5)], reference="r")
    assert [(c.sku, c.quantity, c.via) for c in seller.simulator.calls] == [
        ("WM-SKU-1", 5, "put"),
        ("WM-SKU-2", 2, "put"),
    ]
    assert seller.client.feed_ids == []


async def test_big_batches_use_one_inventory_feed() -> None:
    skus = tuple(f"S-{n}" for n in range(FEED_THRESHOLD))
    draft = sample_connection("http://127.0.0.1:1", skus=skus)
    simulator = WalmartSimulator.for_connection(draft, clock=FrozenClock())
    async with serving(simulator, draft) as (connection, session):
        client = WalmartInventoryClient(session, connection)
        await client.set_many([(sku, 4) for sku in skus], reference="r")
        assert set(simulator.available.values()) == {4}
        assert {c.via for c in simulator.calls} == {"feed"}
        assert len(client.feed_ids) == 1
        assert len(simulator.feeds) == 1
        assert await client.feed_status(client.feed_ids[0]) == "PROCESSED"


async def test_feed_item_failures_are_named(seller: Seller) -> None:
    stray = seller.connection.model_copy(
        update={"listings": {**seller.connection.listings, "GONE": Listing(listing_id="WM-GONE")}}
    )
    client = seller.client_for(stray, feed_threshold=1)
    await client.set_many([("SKU-1", 2), ("GONE", 1)], reference="r")
    assert seller.simulator.available["WM-SKU-1"] == 2
    with pytest.raises(ChannelError, match=r"'WM-GONE': DATA_ERROR") as caught:
        await client.feed_status(client.feed_ids[0])
    assert caught.value.retryable is False


async def test_refused_and_unlisted_skus_are_named_and_the_rest_applied(seller: Seller) -> None:
    stray = seller.connection.model_copy(
        update={"listings": {**seller.connection.listings, "GONE": Listing(listing_id="WM-GONE")}}
    )
    client = seller.client_for(stray)
    with pytest.raises(ChannelError, match=r"'GONE'.*HTTP 404") as caught:
        await client.set_many([("GONE", 1), ("SKU-2", 6), ("NOT-LISTED", 2)], reference="r")
    assert caught.value.retryable is False
    assert "NOT-LISTED" in str(caught.value)
    assert seller.simulator.available["WM-SKU-2"] == 6
    assert await client.get_available(["GONE", "SKU-2"]) == {"SKU-2": 6}  # unknown to Walmart: left out


async def test_a_burst_beyond_the_budget_gets_429_with_retry_after(seller: Seller) -> None:
    seller.simulator.bucket = TokenBucket(RATE_LIMIT_PER_S, RATE_BURST, clock=seller.clock)
    for _ in range(int(RATE_BURST)):
        await seller.client.set_available("SKU-1", 1, change_from=None, reference="r")
    with pytest.raises(ChannelError) as caught:
        await seller.client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert (caught.value.status, caught.value.retryable) == (429, True)
    assert caught.value.retry_after_s == 1
    assert seller.simulator.rate_limited == 1
    seller.clock.now += 1 / RATE_LIMIT_PER_S
    await seller.client.set_available("SKU-1", 2, change_from=None, reference="r")
    assert seller.simulator.available["WM-SKU-1"] == 2


async def test_item_by_item_batches_pace_themselves_within_the_budget() -> None:
    """The fan-out charges one token per set_many; the client must pace the PUTs it makes inside it."""
    skus = tuple(f"S-{n}" for n in range(6))
    draft = sample_connection("http://127.0.0.1:1", skus=skus).model_copy(
        update={"rate_limit_per_s": 40.0, "rate_burst": 2.0}
    )
    simulator = WalmartSimulator.for_connection(draft, rate_per_s=40.0, burst=2.0)  # real clock: ~0.1 s
    async with serving(simulator, draft) as (connection, session):
        client = WalmartInventoryClient(session, connection)
        await client.set_many([(sku, 3) for sku in skus], reference="r")
        assert simulator.rate_limited == 0
        assert set(simulator.available.values()) == {3}


async def test_more_than_ten_feeds_an_hour_are_refused(seller: Seller) -> None:
    client = seller.client_for(seller.connection, feed_threshold=1)
    for n in range(FEEDS_PER_HOUR):
        await client.set_many([("SKU-1", n)], reference="r")
    with pytest.raises(ChannelError) as caught:
        await client.set_many([("SKU-1", 99)], reference="r")
    assert (caught.value.status, caught.value.retryable) == (429, True)
    assert caught.value.retry_after_s == 360  # one feed comes back every 6 minutes
    assert seller.simulator.available["WM-SKU-1"] == FEEDS_PER_HOUR - 1
    seller.clock.now += 360
    await client.set_many([("SKU-1", 99)], reference="r")
    assert seller.simulator.available["WM-SKU-1"] == 99


def test_default_budgets_are_the_channels() -> None:
    simulator = WalmartSimulator(clock=FrozenClock())
    assert (simulator.bucket.rate, simulator.bucket.burst) == (RATE_LIMIT_PER_S, RATE_BURST)
    assert (simulator.feed_bucket.rate * 3600, simulator.feed_bucket.burst) == (
        FEEDS_PER_HOUR,
        FEEDS_PER_HOUR,
    )


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (500, True), (400, False), (404, False)])
async def test_injected_failures_are_classified(seller: Seller, status: int, retryable: bool) -> None:
    seller.simulator.fail_next(status)
    with pytest.raises(ChannelError) as caught:
        await seller.client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    await seller.client.set_available(
        "SKU-1", 1, change_from=None, reference="r"
    )  # only the next call failed
    assert seller.simulator.available["WM-SKU-1"] == 1


async def test_a_retryable_failure_in_a_small_batch_raises_at_once(seller: Seller) -> None:
    seller.simulator.fail_next(503)
    with pytest.raises(ChannelError) as caught:
        await seller.client.set_many([("SKU-1", 1), ("SKU-2", 2)], reference="r")
    assert caught.value.retryable is True
    assert seller.simulator.calls == []


async def test_wrong_or_malformed_credentials_are_not_retryable(seller: Seller) -> None:
    wrong = seller.connection.model_copy(update={"access_token": SecretStr("someone:else")})
    with pytest.raises(ChannelError, match="token request refused") as caught:
        await seller.client_for(wrong).set_available("SKU-1", 1, change_from=None, reference="r")
    assert (caught.value.status, caught.value.retryable) == (401, False)
    malformed = seller.connection.model_copy(update={"access_token": SecretStr("just-a-token")})
    with pytest.raises(ChannelError, match="client id") as bad:
        await seller.client_for(malformed).get_available(["SKU-1"])
    assert bad.value.retryable is False
    assert seller.simulator.calls == []


async def test_a_revoked_token_is_replaced_once(seller: Seller) -> None:
    await seller.client.set_available("SKU-1", 1, change_from=None, reference="r")
    seller.simulator.revoke_tokens()
    await seller.client.set_available("SKU-1", 2, change_from=None, reference="r")
    assert seller.simulator.available["WM-SKU-1"] == 2
    assert len(seller.simulator.tokens) == 1


async def test_orders_and_auto_cancellations_are_signed_events(seller: Seller) -> None:
    at = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    secret = seller.connection.webhook_secret.get_secret_value()
    body, headers = seller.simulator.place_order(seller.connection, 1001, [("SKU-1", 2), ("SKU-2", 3)], at)
    assert webhooks.verify(secret, body, headers)
    assert await seller.client.get_available(["SKU-1", "SKU-2"]) == {"SKU-1": 5, "SKU-2": 4}
    sales = webhooks.normalise(seller.connection, body, headers, at)
    assert [(e.event_id, e.sku, e.quantity) for e in sales] == [
        ("walmart-acme:order:1001:line:1", "SKU-1", 2),
        ("walmart-acme:order:1001:line:2", "SKU-2", 3),
    ]
    body, headers = seller.simulator.cancel_order(seller.connection, 1001, at, line_numbers=[2])
    assert webhooks.verify(secret, body, headers)
    (cancel,) = webhooks.normalise(seller.connection, body, headers, at)
    assert (cancel.event_id, cancel.sku, cancel.quantity) == ("walmart-acme:cancel:1001:line:2", "SKU-2", 3)
