"""Which client writes inventory to each channel, and within which budget: the fan-out's view of channels."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import ModuleType
from typing import Protocol

import aiohttp

from channels import amazon, bigcommerce, ebay, etsy, flipkart, shopify, tiktok, walmart, woocommerce
from channels.amazon.client import AmazonInventoryClient
from channels.bigcommerce.client import BigCommerceInventoryClient
from channels.connection import Connection
from channels.ebay.client import EbayInventoryClient
from channels.etsy.client import EtsyInventoryClient
from channels.flipkart.client import FlipkartInventoryClient
from channels.ratelimit import TokenBucket, connection_budget
from channels.shopify.client import ShopifyInventoryClient
from channels.tiktok.client import TikTokInventoryClient
from channels.walmart.client import WalmartInventoryClient
from channels.woocommerce.client import WooCommerceInventoryClient


class InventoryClient(Protocol):
    """A channel's inventory API for one connection. Every HTTP request it makes is charged to the budget it
    was built with (``InventoryClientFactory``), so callers never pace it themselves."""

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Make the channel show `quantity` for `sku`; raise ChannelError on failure."""

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        """Set several counts, using the channel's bulk endpoint where it has one."""

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        """The channel's current counts of `skus` (those it knows)."""


class InventoryClientFactory(Protocol):
    def __call__(
        self, session: aiohttp.ClientSession, connection: Connection, *, budget: TokenBucket | None = None
    ) -> InventoryClient:
        """A client for `connection`; `budget` None: a fresh one at the connection's (or channel's) rate."""


@dataclass(frozen=True)
class OutboundChannel:
    name: str
    client: InventoryClientFactory
    rate_limit_per_s: float
    rate_burst: float
    max_batch: int

    def budget(self, connection: Connection) -> TokenBucket:
        """The connection's token bucket: its own limit if configured, else the channel's, with headroom."""
        return connection_budget(connection, self.rate_limit_per_s, self.rate_burst)


def _spec(module: ModuleType, client: InventoryClientFactory) -> OutboundChannel:
    return OutboundChannel(
        module.CHANNEL, client, module.RATE_LIMIT_PER_S, module.RATE_BURST, module.MAX_BATCH
    )


CHANNELS: dict[str, OutboundChannel] = {
    spec.name: spec
    for spec in (
        _spec(shopify, ShopifyInventoryClient),
        _spec(amazon, AmazonInventoryClient),
        _spec(ebay, EbayInventoryClient),
        _spec(etsy, EtsyInventoryClient),
        _spec(woocommerce, WooCommerceInventoryClient),
        # One PUT per SKU, each charged to the budget: Walmart's bulk feed (10 an hour, ~30 min to apply)
        # suits the reconciler's full pushes, not fan-out's latency.
        replace(_spec(walmart, WalmartInventoryClient), max_batch=1),
        _spec(tiktok, TikTokInventoryClient),
        _spec(bigcommerce, BigCommerceInventoryClient),
        _spec(flipkart, FlipkartInventoryClient),
    )
}


def outbound(channel: str) -> OutboundChannel:
    try:
        return CHANNELS[channel]
    except KeyError:
        raise ValueError(
            f"no outbound inventory client for channel {channel!r}; known: {', '.join(sorted(CHANNELS))}"
        ) from None


def client_for(
    session: aiohttp.ClientSession, connection: Connection, *, budget: TokenBucket | None = None
) -> InventoryClient:
    """The connection's client, charging `budget` (default: a fresh bucket at the connection's rate)."""
    return outbound(connection.channel).client(session, connection, budget=budget)
