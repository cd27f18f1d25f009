"""A view of channels.registry kept for the fan-out's and reconciler's call sites: ``outbound(channel)`` is
the channel's ChannelSpec (client, budget(), max_batch); ``client_for`` builds the connection's client."""

from __future__ import annotations

import aiohttp

from channels.connection import Connection
from channels.ratelimit import TokenBucket
from channels.registry import SPECS, spec
from channels.spec import ChannelSpec, InventoryClient, InventoryClientFactory

OutboundChannel = ChannelSpec
CHANNELS = SPECS
outbound = spec


def client_for(
    session: aiohttp.ClientSession, connection: Connection, *, budget: TokenBucket | None = None
) -> InventoryClient:
    """The connection's client, charging `budget` (default: a fresh bucket at the connection's rate)."""
    return spec(connection.channel).client(session, connection, budget=budget)


__all__ = [
    "CHANNELS",
    "InventoryClient",
    "InventoryClientFactory",
    "OutboundChannel",
    "client_for",
    "outbound",
]
