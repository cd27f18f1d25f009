"""The TikTok Shop inventory client and order expansion against the simulator, over HTTP on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import pytest
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.errors import ChannelError, PayloadError
from channels.tiktok import RATE_BURST, webhooks
from channels.tiktok.client import TikTokInventoryClient
from lab.marketplaces.tiktok import TikTokSimulator, sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import assert_burst_is_throttled, serving_sample

pytestmark = pytest.mark.integration

SKUS = ("SKU-1", "SKU-2", "SKU-3", "SKU-4")
AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@dataclass
class World:
    simulator: TikTokSimulator
    connection: Connection
    session: aiohttp.ClientSession
    client: TikTokInventoryClient

    def sku_id(self, sku: str) -> str:
        ref = self.connection.listings[sku].inventory_ref
        assert ref is not None
        return ref

    def other_client(self, **changes: object) -> TikTokInventoryClient:
        return TikTokInventoryClient(self.session, self.connection.model_copy(update=changes))


@pytest.fixture
async def world() -> AsyncIterator[World]:
    simulator = TikTokSimulator()
    async with serving_sample(simulator, sample_connection, SKUS, initial=5) as (connection, session):
        yield World(simulator, connection, session, TikTokInventoryClient(session, connection))


async def test_set_available_changes_the_count_and_is_recorded(world: World) -> None:
    await world.client.set_available("SKU-2", 17, change_from=None, reference="stocksync://acme/SKU-2")
    assert world.simulator.available[world.sku_id("SKU-2")] == 17
    [call] = world.simulator.calls
    assert (call.sku_id, call.quantity, call.status, call.error) == (world.sku_id("SKU-2"), 17, 200, None)
    assert call.warehouse_id == world.connection.options["warehouse_id"]


async def test_set_many_sends_one_call_per_product(world: World) -> None:
    await world.client.set_many([(sku, n) for n, sku in enumerate(SKUS)], reference="batch-1")
    assert [world.simulator.available[world.sku_id(sku)] for sku in SKUS] == [0, 1, 2, 3]
    assert world.simulator.writes == 2  # two products of two SKUs each
    assert len(world.simulator.calls) == 4


async def test_get_available_reads_the_channel_counts(world: World) -> None:
    world.simulator.available[world.sku_id("SKU-3")] = 42
    assert await world.client.get_available(list(SKUS)) == {"SKU-1": 5, "SKU-2": 5, "SKU-3": 42, "SKU-4": 5}


async def test_counts_above_the_channel_cap_are_sent_as_the_cap(world: World) -> None:
    await world.client.set_available("SKU-1", 250_000, change_from=None, reference="r")
    assert world.simulator.available[world.sku_id("SKU-1")] == 99_999


async def test_a_sku_tiktok_refuses_is_named_and_not_retryable(world: World) -> None:
    listings = dict(world.connection.listings)
    listings["SKU-1"] = Listing(listing_id=listings["SKU-1"].listing_id, inventory_ref="1729999999999999999")
    client = world.other_client(listings=listings)
    with pytest.raises(ChannelError, match="SKU-1") as refused:
        await client.set_many([("SKU-1", 3), ("SKU-2", 4)], reference="r")
    assert not refused.value.retryable
    assert world.simulator.available[world.sku_id("SKU-2")] == 4  # the rest of the call still applied


async def test_a_burst_beyond_the_budget_is_throttled_and_retryable(world: World) -> None:
    # a connection configured above the channel's real limit: its client sends the burst, the channel refuses
    eager = world.other_client(rate_limit_per_s=1000.0, rate_burst=1000.0)
    await assert_burst_is_throttled(eager, world.simulator, int(RATE_BURST) + 10)


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (500, True), (400, False), (403, False)])
async def test_failures_are_classified(world: World, status: int, retryable: bool) -> None:
    world.simulator.fail_next(status)
    with pytest.raises(ChannelError) as failed:
        await world.client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert (failed.value.status, failed.value.retryable) == (status, retryable)
    await world.client.set_available("SKU-1", 1, change_from=None, reference="r")  # the next one passes
    assert world.simulator.available[world.sku_id("SKU-1")] == 1


async def test_a_wrong_token_or_secret_is_not_retryable(world: World) -> None:
    for changes in ({"access_token": SecretStr("TTP_wrong")}, {"webhook_secret": SecretStr("wrong")}):
        with pytest.raises(ChannelError) as refused:
            await world.other_client(**changes).get_available(["SKU-1"])
        assert (refused.value.status, refused.value.retryable) == (401, False)


async def test_a_missing_app_key_is_a_configuration_error(world: World) -> None:
    with pytest.raises(ChannelError, match="app_key") as refused:
        await world.other_client(options={}).get_available(["SKU-1"])
    assert not refused.value.retryable


async def test_orders_are_expanded_then_normalised_and_cancellations_restock(world: World) -> None:
    body, headers = world.simulator.place_order(world.connection, 576859029223086481, [("SKU-1", 2)], AT)
    assert webhooks.verifier(world.connection)(
        world.connection.webhook_secret.get_secret_value(), body, headers
    )
    assert world.simulator.available[world.sku_id("SKU-1")] == 3
    expanded = await webhooks.expand(world.session, world.connection, body, headers)
    placed = webhooks.normalise(world.connection, expanded, headers, AT)
    assert [(type(e), e.sku, e.quantity) for e in placed] == [(OrderPlaced, "SKU-1", 1)] * 2
    assert await webhooks.expand(world.session, world.connection, expanded, headers) == expanded

    body, headers = world.simulator.cancel_order(world.connection, 576859029223086481, AT)
    cancelled = webhooks.normalise(
        world.connection, await webhooks.expand(world.session, world.connection, body, headers), headers, AT
    )
    assert all(isinstance(e, OrderCancelled) for e in cancelled)
    assert [e.sale_event_id for e in cancelled if isinstance(e, OrderCancelled)] == [
        e.event_id for e in placed
    ]
    assert world.simulator.available[world.sku_id("SKU-1")] == 5


async def test_expanding_an_order_tiktok_does_not_know_yet_is_retryable(world: World) -> None:
    body, headers = world.simulator.place_order(world.connection, 1, [("SKU-1", 1)], AT)
    world.simulator.orders.clear()
    with pytest.raises(ChannelError, match="no order 1") as missing:
        await webhooks.expand(world.session, world.connection, body, headers)
    assert missing.value.retryable


async def test_expand_leaves_what_it_cannot_read_for_normalise_to_refuse(world: World) -> None:
    for raw in (b"{nope", b'{"type": 2, "data": {"order_id": "1"}}'):
        assert await webhooks.expand(world.session, world.connection, raw, {}) == raw
        with pytest.raises(PayloadError, match="not handled" if raw != b"{nope" else "not JSON"):
            webhooks.normalise(world.connection, raw, {}, datetime.now(UTC))
