"""The Amazon listings client against the simulator served on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from channels.amazon import RATE_BURST, RATE_LIMIT_PER_S, webhooks
from channels.amazon.client import AmazonInventoryClient
from channels.connection import Connection, Listing
from channels.errors import ChannelError
from channels.ratelimit import TokenBucket
from lab.marketplaces.amazon import AmazonSimulator, sample_connection
from lab.marketplaces.serve import serve
from tests.channel_kit import serving_sample

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SKUS = ("SKU-1", "SKU-2", "SKU-3")


@dataclass
class World:
    simulator: AmazonSimulator
    connection: Connection
    client: AmazonInventoryClient
    session: aiohttp.ClientSession

    def client_for(self, connection: Connection) -> AmazonInventoryClient:
        return AmazonInventoryClient(self.session, connection)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    simulator = AmazonSimulator(access_token="")
    # A clock that never moves: the budget is exactly RATE_BURST calls, whatever the machine's speed.
    simulator.patch_budget = TokenBucket(RATE_LIMIT_PER_S, RATE_BURST, clock=lambda: 0.0)
    async with serving_sample(simulator, sample_connection, SKUS, initial=10) as (connection, session):
        yield World(simulator, connection, AmazonInventoryClient(session, connection), session)


async def test_set_available_patches_the_listing_and_is_recorded(world: World) -> None:
    await world.client.set_available("SKU-1", 7, change_from=10, reference="ref-1")
    await world.client.set_available("SKU-2", -3, change_from=None, reference="ref-2")
    assert world.simulator.available == {"AZ-SKU-1": 7, "AZ-SKU-2": 0, "AZ-SKU-3": 10}
    assert [(c.seller_sku, c.quantity, c.status, c.submission_status) for c in world.simulator.calls] == [
        ("AZ-SKU-1", 7, 200, "ACCEPTED"),
        ("AZ-SKU-2", 0, 200, "ACCEPTED"),
    ]


async def test_set_many_is_one_patch_per_sku(world: World) -> None:
    await world.client.set_many([("SKU-1", 1), ("SKU-2", 2), ("SKU-3", 3)], reference="batch-1")
    assert world.simulator.available == {"AZ-SKU-1": 1, "AZ-SKU-2": 2, "AZ-SKU-3": 3}
    assert [c.seller_sku for c in world.simulator.calls] == ["AZ-SKU-1", "AZ-SKU-2", "AZ-SKU-3"]


async def test_get_available_reads_what_amazon_shows(world: World) -> None:
    body, headers = world.simulator.place_order(world.connection, 9, [("SKU-2", 4)], NOW)
    secret = world.connection.webhook_secret.get_secret_value()
    assert webhooks.verify(secret, body, headers, now=NOW)
    await world.client.set_available("SKU-3", 1, change_from=None, reference="r")
    assert await world.client.get_available(list(SKUS)) == {"SKU-1": 10, "SKU-2": 6, "SKU-3": 1}
    world.simulator.cancel_order(world.connection, 9, NOW)
    assert await world.client.get_available(["SKU-2"]) == {"SKU-2": 10}


async def test_a_burst_beyond_the_budget_is_throttled_and_retryable(world: World) -> None:
    for n in range(RATE_BURST):
        await world.client.set_available("SKU-1", n, change_from=None, reference="burst")
    with pytest.raises(ChannelError) as info:
        await world.client.set_available("SKU-1", 99, change_from=None, reference="burst")
    assert info.value.status == 429
    assert info.value.retryable
    assert info.value.retry_after_s == 1.0
    assert world.simulator.rate_limited == 1
    assert world.simulator.available["AZ-SKU-1"] == RATE_BURST - 1
    assert len(world.simulator.calls) == RATE_BURST


async def test_a_throttle_without_retry_after_reports_the_rate_limit_interval(world: World) -> None:
    async def throttled(_request: web.Request) -> web.Response:
        return web.json_response(
            {"errors": [{"code": "QuotaExceeded", "message": "You exceeded your quota."}]},
            status=429,
            headers={"x-amzn-RateLimit-Limit": "5.0"},
        )

    app = web.Application()
    app.router.add_patch("/listings/2021-08-01/items/{seller}/{sku}", throttled)
    async with serve(app) as base_url:
        client = world.client_for(world.connection.model_copy(update={"api_base_url": base_url}))
        with pytest.raises(ChannelError) as info:
            await client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert (info.value.status, info.value.retryable, info.value.retry_after_s) == (429, True, 0.2)


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (500, True), (400, False), (404, False)])
async def test_injected_failures_are_classified(world: World, status: int, retryable: bool) -> None:
    world.simulator.fail_next(status)
    with pytest.raises(ChannelError) as info:
        await world.client.set_available("SKU-1", 3, change_from=None, reference="r")
    assert (info.value.status, info.value.retryable) == (status, retryable)
    assert world.simulator.available["AZ-SKU-1"] == 10
    await world.client.set_available("SKU-1", 3, change_from=None, reference="r")
    assert world.simulator.available["AZ-SKU-1"] == 3


async def test_a_wrong_token_is_not_retryable(world: World) -> None:
    client = world.client_for(world.connection.model_copy(update={"access_token": SecretStr("Atza|expired")}))
    for call in (
        client.set_available("SKU-1", 1, change_from=None, reference="r"),
        client.get_available(["SKU-1"]),
    ):
        with pytest.raises(ChannelError) as info:
            await call
        assert (info.value.status, info.value.retryable) == (403, False)
    assert world.simulator.calls == []


async def test_a_refused_submission_names_the_sku_and_amazons_message(world: World) -> None:
    del world.simulator.available["AZ-SKU-2"]
    with pytest.raises(ChannelError, match=r"SKU-2.*INVALID.*has no listing") as info:
        await world.client.set_available("SKU-2", 5, change_from=None, reference="r")
    assert (info.value.status, info.value.retryable) == (200, False)


async def test_set_many_goes_on_past_a_refused_sku_and_names_it(world: World) -> None:
    del world.simulator.available["AZ-SKU-2"]
    with pytest.raises(ChannelError, match="SKU-2") as info:
        await world.client.set_many([("SKU-1", 1), ("SKU-2", 2), ("SKU-3", 3)], reference="b")
    assert not info.value.retryable
    assert world.simulator.available == {"AZ-SKU-1": 1, "AZ-SKU-3": 3}


async def test_set_many_stops_at_a_retryable_failure(world: World) -> None:
    world.simulator.fail_next(503)
    with pytest.raises(ChannelError) as info:
        await world.client.set_many([("SKU-1", 1), ("SKU-2", 2)], reference="b")
    assert info.value.retryable
    assert world.simulator.calls == []
    assert world.simulator.available["AZ-SKU-2"] == 10


async def test_unknown_listing_on_read_and_unmapped_sku_are_not_retryable(world: World) -> None:
    del world.simulator.available["AZ-SKU-3"]
    with pytest.raises(ChannelError) as info:
        await world.client.get_available(["SKU-3"])
    assert (info.value.status, info.value.retryable) == (404, False)
    with pytest.raises(ChannelError, match="no Amazon listing") as unmapped:
        await world.client.set_available("SKU-404", 1, change_from=None, reference="r")
    assert (unmapped.value.status, unmapped.value.retryable) == (None, False)


async def test_seller_skus_with_reserved_characters_are_percent_encoded(world: World) -> None:
    listings = {**world.connection.listings, "KIT": Listing(listing_id="KIT/2 PACK#blue")}
    client = world.client_for(world.connection.model_copy(update={"listings": listings}))
    world.simulator.available["KIT/2 PACK#blue"] = 4
    await client.set_available("KIT", 2, change_from=None, reference="r")
    assert world.simulator.available["KIT/2 PACK#blue"] == 2
    assert await client.get_available(["KIT"]) == {"KIT": 2}


async def test_a_connection_without_seller_id_is_refused_before_any_call(world: World) -> None:
    options = {k: v for k, v in world.connection.options.items() if k != "seller_id"}
    client = world.client_for(world.connection.model_copy(update={"options": options}))
    with pytest.raises(ChannelError, match="seller_id") as info:
        await client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert not info.value.retryable
    assert world.simulator.calls == []
