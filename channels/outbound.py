"""Which client writes inventory to each channel: the fan-out's only view of channels."""

from __future__ import annotations

from typing import Protocol

import aiohttp

from channels.connection import Connection
from channels.shopify.client import ShopifyInventoryClient


class InventoryClient(Protocol):
    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Make the channel show `quantity` for `sku`; raise ChannelError on failure."""


def client_for(session: aiohttp.ClientSession, connection: Connection) -> InventoryClient:
    if connection.channel == "shopify":
        return ShopifyInventoryClient(session, connection)
    raise NotImplementedError(f"no outbound inventory client for channel {connection.channel!r} yet")
