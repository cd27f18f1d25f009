"""Every channel client keeps its connection's budget itself, per HTTP request, against the real simulators.

A bulk write can take many requests (TikTok: one per product; Etsy: a read and a write per listing; Walmart,
Amazon: one per SKU). Charging the budget once per ``set_many`` let such a batch burst past the channel's
limit and meet 429s on every retry; charged per request, the same batch paces itself and none is refused.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from channels.ratelimit import TokenBucket
from channels.registry import SPECS
from lab.marketplaces import BUILDERS, Marketplace, marketplaces
from lab.marketplaces.tiktok import TikTokSimulator

pytestmark = pytest.mark.integration

# More SKUs than any channel's burst, each its own product or listing where the channel has them.
SKUS = tuple(f"BUDGET-{n:02d}" for n in range(24))


async def write_and_read_back(session: aiohttp.ClientSession, market: Marketplace) -> dict[str, int]:
    client = SPECS[market.channel].client(session, market.connection)
    await client.set_many([(sku, 7) for sku in SKUS], reference="budget-test")
    await client.set_many([(sku, 3) for sku in SKUS[::2]], reference="budget-test")
    return await client.get_available(list(SKUS))


async def test_every_channel_client_paces_a_batch_of_many_requests_without_a_429() -> None:
    async with marketplaces(SKUS, tenant="budget") as markets, aiohttp.ClientSession() as session:
        shown = await asyncio.gather(*(write_and_read_back(session, m) for m in markets.values()))
        expected = {sku: 3 if n % 2 == 0 else 7 for n, sku in enumerate(SKUS)}
        for market, counts in zip(markets.values(), shown, strict=True):
            assert counts == expected, market.channel
            assert market.simulator.rate_limited == 0, f"{market.channel} answered 429"


async def test_a_shared_budget_is_charged_for_every_request_of_a_batch() -> None:
    """TikTok writes one product per request: a batch over 12 products costs 12 tokens of the bucket given."""
    async with marketplaces(SKUS, tenant="budget", channels=("tiktok",)) as markets:
        market = markets["tiktok"]
        assert isinstance(market.simulator, TikTokSimulator)
        market.simulator.buckets["update_inventory"] = TokenBucket(1000.0, 1000.0)  # the channel allows it
        budget = TokenBucket(1000.0, 1000.0, clock=lambda: 0.0)  # never refills: what is left was spent
        async with aiohttp.ClientSession() as session:
            client = SPECS[market.channel].client(session, market.connection, budget=budget)
            await client.set_many([(sku, 1) for sku in SKUS], reference="budget-test")
        products = {listing.listing_id for listing in market.connection.listings.values()}
        assert len(products) == len(SKUS) // 2  # the sample lists two SKUs per product
        assert budget.take(1000.0 - len(products)) == 0.0
        assert budget.take(1.0) > 0.0


def test_every_registered_channel_is_covered() -> None:
    assert set(BUILDERS) == set(SPECS)
