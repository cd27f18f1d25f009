"""The Flipkart inventory client and cancellation expansion against the simulator, over HTTP on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import pytest
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.errors import ChannelError, PayloadError
from channels.flipkart import MAX_BATCH, RATE_BURST, webhooks
from channels.flipkart.client import FlipkartInventoryClient
from lab.marketplaces.flipkart import FlipkartSimulator, sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import assert_burst_is_throttled, serving_sample

pytestmark = pytest.mark.integration

SKUS = tuple(f"SKU-{n}" for n in range(1, MAX_BATCH + 3))  # one more call than fits in one


@dataclass
class World:
    simulator: FlipkartSimulator
    connection: Connection
    session: aiohttp.ClientSession
    client: FlipkartInventoryClient

    def seller_sku(self, sku: str) -> str:
        return self.connection.listings[sku].listing_id

    def other_client(self, **changes: object) -> FlipkartInventoryClient:
        return FlipkartInventoryClient(self.session, self.connection.model_copy(update=changes))


@pytest.fixture
async def world() -> AsyncIterator[World]:
    simulator = FlipkartSimulator()
    async with serving_sample(simulator, sample_connection, SKUS, initial=5) as (connection, session):
        yield World(simulator, connection, session, FlipkartInventoryClient(session, connection))


async def test_set_available_changes_the_count_and_is_recorded(world: World) -> None:
    await world.client.set_available("SKU-2", 17, change_from=None, reference="stocksync://acme/SKU-2")
    assert world.simulator.available[world.seller_sku("SKU-2")] == 17
    [call] = world.simulator.calls
    assert (call.seller_sku, call.location_id, call.quantity, call.status) == (
        world.seller_sku("SKU-2"),
        world.connection.options["location_id"],
        17,
        "SUCCESS",
    )


async def test_set_many_sends_at_most_ten_skus_a_call(world: World) -> None:
    await world.client.set_many([(sku, n) for n, sku in enumerate(SKUS)], reference="batch-1")
    assert [world.simulator.available[world.seller_sku(sku)] for sku in SKUS] == list(range(len(SKUS)))
    assert world.simulator.writes == 2


async def test_get_available_reads_the_location_counts(world: World) -> None:
    world.simulator.available[world.seller_sku("SKU-3")] = 42
    counts = await world.client.get_available(list(SKUS))
    assert counts == {sku: 42 if sku == "SKU-3" else 5 for sku in SKUS}


async def test_unlisted_skus_are_left_out_of_reads(world: World) -> None:
    listings = {**world.connection.listings, "SKU-X": Listing(listing_id="fk-unknown", inventory_ref="FSN9")}
    assert await world.other_client(listings=listings).get_available(["SKU-1", "SKU-X"]) == {"SKU-1": 5}


async def test_a_sku_flipkart_refuses_is_named_and_not_retryable(world: World) -> None:
    listings = dict(world.connection.listings)
    listings["SKU-1"] = Listing(listing_id=listings["SKU-1"].listing_id, inventory_ref="FSNWRONG")
    with pytest.raises(ChannelError, match=r"SKU-1.*product_id") as refused:
        await world.other_client(listings=listings).set_many([("SKU-1", 3), ("SKU-2", 4)], reference="r")
    assert not refused.value.retryable
    assert world.simulator.available[world.seller_sku("SKU-2")] == 4  # the rest of the call still applied


async def test_a_burst_beyond_the_budget_is_throttled_and_retryable(world: World) -> None:
    # a connection configured above the channel's real limit: its client sends the burst, the channel refuses
    eager = world.other_client(rate_limit_per_s=1000.0, rate_burst=1000.0)
    await assert_burst_is_throttled(eager, world.simulator, int(RATE_BURST) + 10)


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (500, True), (400, False), (404, False)])
async def test_failures_are_classified(world: World, status: int, retryable: bool) -> None:
    world.simulator.fail_next(status)
    with pytest.raises(ChannelError) as failed:
        await world.client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert (failed.value.status, failed.value.retryable) == (status, retryable)
    await world.client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert world.simulator.available[world.seller_sku("SKU-1")] == 1


async def test_a_wrong_token_is_not_retryable(world: World) -> None:
    with pytest.raises(ChannelError) as refused:
        await world.other_client(access_token=SecretStr("expired")).get_available(["SKU-1"])
    assert (refused.value.status, refused.value.retryable) == (401, False)


async def test_a_missing_location_is_a_configuration_error(world: World) -> None:
    with pytest.raises(ChannelError, match="location_id") as refused:
        await world.other_client(options={}).set_available("SKU-1", 1, change_from=None, reference="r")
    assert not refused.value.retryable


async def test_orders_normalise_and_cancellations_are_expanded_and_restock(world: World) -> None:
    at = datetime.now(UTC)  # verify() checks the signature's time against the clock
    secret = world.connection.webhook_secret.get_secret_value()
    body, headers = world.simulator.place_order(world.connection, 108833803073636000, [("SKU-1", 2)], at)
    assert webhooks.verify(secret, body, headers)
    assert world.simulator.available[world.seller_sku("SKU-1")] == 3
    assert await webhooks.expand(world.session, world.connection, body, headers) == body  # already full
    placed = webhooks.normalise(world.connection, body, headers, at)
    assert [(type(e), e.sku, e.quantity) for e in placed] == [(OrderPlaced, "SKU-1", 2)]

    body, headers = world.simulator.cancel_order(world.connection, 108833803073636000, at)
    assert webhooks.verify(secret, body, headers)
    expanded = await webhooks.expand(world.session, world.connection, body, headers)
    cancelled = webhooks.normalise(world.connection, expanded, headers, at)
    assert [(type(e), e.sku, e.quantity) for e in cancelled] == [(OrderCancelled, "SKU-1", 2)]
    assert [e.sale_event_id for e in cancelled if isinstance(e, OrderCancelled)] == [
        e.event_id for e in placed
    ]
    assert world.simulator.available[world.seller_sku("SKU-1")] == 5


async def test_expanding_a_cancellation_of_an_unknown_shipment_is_not_retryable(world: World) -> None:
    at = datetime.now(UTC)
    world.simulator.place_order(world.connection, 7, [("SKU-1", 1)], at)
    body, headers = world.simulator.cancel_order(world.connection, 7, at)
    world.simulator.shipments.clear()
    with pytest.raises(ChannelError, match="no shipment") as missing:
        await webhooks.expand(world.session, world.connection, body, headers)
    assert not missing.value.retryable


async def test_expand_leaves_what_it_cannot_read_for_normalise_to_refuse(world: World) -> None:
    for raw in (b"{nope", b'{"eventType": "shipment_cancelled", "shipmentId": null}'):
        assert await webhooks.expand(world.session, world.connection, raw, {}) == raw
        with pytest.raises(PayloadError, match="shipmentId" if raw != b"{nope" else "not JSON"):
            webhooks.normalise(world.connection, raw, {}, datetime.now(UTC))
