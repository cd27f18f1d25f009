"""Which client writes inventory to each channel, and within which budget: the fan-out's view of channels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from channels import amazon, shopify
from channels.amazon.client import AmazonInventoryClient
from channels.connection import Connection
from channels.ratelimit import TokenBucket
from channels.shopify.client import ShopifyInventoryClient

HEADROOM = 0.9  # stay a little under the published rate: network jitter must not turn into 429s


class InventoryClient(Protocol):
    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Make the channel show `quantity` for `sku`; raise ChannelError on failure."""

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        """Set several counts, using the channel's bulk endpoint where it has one."""

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        """The channel's current counts of `skus` (those it knows)."""


@dataclass(frozen=True)
class OutboundChannel:
    name: str
    client: Callable[[aiohttp.ClientSession, Connection], InventoryClient]
    rate_limit_per_s: float
    rate_burst: float
    max_batch: int

    def budget(self, connection: Connection) -> TokenBucket:
        """The connection's token bucket: its own limit if configured, else the channel's, with headroom."""
        rate = (connection.rate_limit_per_s or self.rate_limit_per_s) * HEADROOM
        return TokenBucket(rate, max(1.0, connection.rate_burst or self.rate_burst))


CHANNELS: dict[str, OutboundChannel] = {
    "shopify": OutboundChannel(
        "shopify", ShopifyInventoryClient, shopify.RATE_LIMIT_PER_S, shopify.RATE_BURST, shopify.MAX_BATCH
    ),
    "amazon": OutboundChannel(
        "amazon", AmazonInventoryClient, amazon.RATE_LIMIT_PER_S, amazon.RATE_BURST, amazon.MAX_BATCH
    ),
}


def outbound(channel: str) -> OutboundChannel:
    try:
        return CHANNELS[channel]
    except KeyError:
        raise ValueError(
            f"no outbound inventory client for channel {channel!r}; known: {', '.join(sorted(CHANNELS))}"
        ) from None


def client_for(session: aiohttp.ClientSession, connection: Connection) -> InventoryClient:
    return outbound(connection.channel).client(session, connection)
