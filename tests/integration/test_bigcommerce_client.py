"""The BigCommerce inventory client and webhook expansion against the simulator, over HTTP on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import pytest
from pydantic import SecretStr

from channels.bigcommerce import MAX_BATCH, RATE_BURST, api, webhooks
from channels.bigcommerce.client import BigCommerceInventoryClient
from channels.connection import Connection, Listing
from channels.errors import ChannelError, PayloadError
from lab.marketplaces.bigcommerce import BigCommerceSimulator, sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import assert_burst_is_throttled, serving_sample

pytestmark = pytest.mark.integration

SKUS = tuple(f"SKU-{n}" for n in range(1, MAX_BATCH + 6))  # one more batch than fits in a call
AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@dataclass
class World:
    simulator: BigCommerceSimulator
    connection: Connection
    session: aiohttp.ClientSession
    client: BigCommerceInventoryClient

    def variant(self, sku: str) -> str:
        return self.connection.listings[sku].listing_id

    def other_client(self, **changes: object) -> BigCommerceInventoryClient:
        return BigCommerceInventoryClient(self.session, self.connection.model_copy(update=changes))


@pytest.fixture
async def world() -> AsyncIterator[World]:
    simulator = BigCommerceSimulator()
    async with serving_sample(simulator, sample_connection, SKUS, initial=5) as (connection, session):
        yield World(simulator, connection, session, BigCommerceInventoryClient(session, connection))


async def test_set_available_changes_the_level_and_is_recorded(world: World) -> None:
    await world.client.set_available("SKU-2", 17, change_from=3, reference="stocksync://acme/SKU-2")
    assert world.simulator.available[world.variant("SKU-2")] == 17
    [call] = world.simulator.calls
    assert (call.variant_id, call.quantity, call.status, call.error) == (
        world.variant("SKU-2"),
        17,
        200,
        None,
    )


async def test_set_many_sends_batches_of_at_most_fifty(world: World) -> None:
    await world.client.set_many([(sku, n) for n, sku in enumerate(SKUS)], reference="batch-1")
    assert [world.simulator.available[world.variant(sku)] for sku in SKUS] == list(range(len(SKUS)))
    assert world.simulator.writes == 2
    assert len(world.simulator.calls) == len(SKUS)


async def test_get_available_reads_the_levels_per_product(world: World) -> None:
    world.simulator.available[world.variant("SKU-3")] = 42
    assert await world.client.get_available(["SKU-1", "SKU-2", "SKU-3", "SKU-4"]) == {
        "SKU-1": 5,
        "SKU-2": 5,
        "SKU-3": 42,
        "SKU-4": 5,
    }


async def test_a_partly_failed_batch_names_the_variant_and_is_not_retryable(world: World) -> None:
    listings = dict(world.connection.listings)
    listings["SKU-1"] = Listing(listing_id="999999", inventory_ref=listings["SKU-1"].inventory_ref)
    with pytest.raises(ChannelError, match="SKU-1") as refused:
        await world.other_client(listings=listings).set_many([("SKU-1", 3), ("SKU-2", 4)], reference="r")
    assert (refused.value.status, refused.value.retryable) == (207, False)
    assert world.simulator.available[world.variant("SKU-2")] == 4  # the rest of the batch still applied


def test_the_quota_reset_header_stands_in_for_retry_after() -> None:
    assert api.retry_after({"Retry-After": "2", api.RESET_HEADER: "9000"}) == "2"
    assert api.retry_after({api.RESET_HEADER: "1500"}) == "1.500"
    assert api.retry_after({api.RESET_HEADER: "soon"}) is None
    assert api.retry_after({}) is None


async def test_a_burst_beyond_the_budget_is_throttled_and_retryable(world: World) -> None:
    # a connection configured above the channel's real limit: its client sends the burst, the channel refuses
    eager = world.other_client(rate_limit_per_s=1000.0, rate_burst=1000.0)
    await assert_burst_is_throttled(eager, world.simulator, int(RATE_BURST) + 10)


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (500, True), (400, False), (422, False)])
async def test_failures_are_classified(world: World, status: int, retryable: bool) -> None:
    world.simulator.fail_next(status)
    with pytest.raises(ChannelError) as failed:
        await world.client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert (failed.value.status, failed.value.retryable) == (status, retryable)
    await world.client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert world.simulator.available[world.variant("SKU-1")] == 1


async def test_a_wrong_token_or_store_is_not_retryable(world: World) -> None:
    for changes in ({"access_token": SecretStr("wrong")}, {"options": {"store_hash": "other"}}):
        with pytest.raises(ChannelError) as refused:
            await world.other_client(**changes).get_available(["SKU-1"])
        assert refused.value.status in (401, 404)
        assert not refused.value.retryable


async def test_a_missing_store_hash_is_a_configuration_error(world: World) -> None:
    with pytest.raises(ChannelError, match="store_hash") as refused:
        await world.other_client(options={}).set_available("SKU-1", 1, change_from=None, reference="r")
    assert not refused.value.retryable


async def test_webhooks_are_expanded_then_normalised_and_cancellations_restock(world: World) -> None:
    body, headers = world.simulator.place_order(world.connection, 250, [("SKU-1", 2), ("SKU-7", 1)], AT)
    assert webhooks.verify(world.connection.webhook_secret.get_secret_value(), body, headers)
    assert world.simulator.available[world.variant("SKU-1")] == 3
    expanded = await webhooks.expand(world.session, world.connection, body, headers)
    placed = webhooks.normalise(world.connection, expanded, headers, AT)
    assert [(type(e), e.sku, e.quantity) for e in placed] == [
        (OrderPlaced, "SKU-1", 2),
        (OrderPlaced, "SKU-7", 1),
    ]
    assert await webhooks.expand(world.session, world.connection, expanded, headers) == expanded

    body, headers = world.simulator.cancel_order(world.connection, 250, AT)
    cancelled = webhooks.normalise(
        world.connection, await webhooks.expand(world.session, world.connection, body, headers), headers, AT
    )
    assert all(isinstance(e, OrderCancelled) for e in cancelled)
    assert [e.sale_event_id for e in cancelled if isinstance(e, OrderCancelled)] == [
        e.event_id for e in placed
    ]
    assert world.simulator.available[world.variant("SKU-1")] == 5


async def test_expansion_pages_through_large_orders(world: World) -> None:
    lines = [(sku, 1) for sku in SKUS] * 5  # 275 lines: two pages of 250
    body, headers = world.simulator.place_order(world.connection, 900, lines, AT)
    events = webhooks.normalise(
        world.connection, await webhooks.expand(world.session, world.connection, body, headers), headers, AT
    )
    assert len(events) == len(lines)


async def test_expanding_an_unknown_order_is_not_retryable(world: World) -> None:
    body, headers = world.simulator.place_order(world.connection, 1, [("SKU-1", 1)], AT)
    world.simulator.orders.clear()
    with pytest.raises(ChannelError) as missing:
        await webhooks.expand(world.session, world.connection, body, headers)
    assert (missing.value.status, missing.value.retryable) == (404, False)


async def test_expand_leaves_what_it_cannot_read_for_normalise_to_refuse(world: World) -> None:
    for raw in (b"{nope", b'{"scope": "store/cart/created", "data": {"type": "cart", "id": 1}}'):
        assert await webhooks.expand(world.session, world.connection, raw, {}) == raw
        with pytest.raises(PayloadError, match="not handled" if raw != b"{nope" else "not JSON"):
            webhooks.normalise(world.connection, raw, {}, datetime.now(UTC))
