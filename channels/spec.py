"""What a channel is to the rest of the system: one frozen ChannelSpec per channel (webhooks in, inventory
out within a budget, the order list for backfill). Each ``channels/<name>/__init__.py`` exports its ``SPEC``;
``channels.registry`` maps names to them. This module imports no channel package."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

import aiohttp

from channels.connection import Connection
from channels.ratelimit import TokenBucket, connection_budget
from schemas.inventory_events import ChannelEvent, OrderCancelled, OrderPlaced

# Whether a body's signature holds: (the connection's webhook secret, the raw body, the request headers).
Verify = Callable[[str, bytes, Mapping[str, str]], bool]
# The events of a verified body; PayloadError if the body is unusable, LinesRefused (channels.payload, a
# PayloadError) carrying the other lines' events if only some of its lines are.
Normalise = Callable[[Connection, bytes, Mapping[str, str], datetime], Sequence[ChannelEvent]]
Expand = Callable[[aiohttp.ClientSession, Connection, bytes, Mapping[str, str]], Awaitable[bytes]]


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


@dataclass
class OrderBatch:
    """One page of a channel's order list, normalised."""

    events: list[OrderPlaced | OrderCancelled] = field(default_factory=list)
    # Orders the normaliser refused: (the order as the channel returned it, JSON bytes; the reason). An
    # order with some lines refused is here too (the reason names each line and why), the events of its other
    # lines being in `events`. The reconciler sends them to ingest.quarantine, as the gateway does with bad
    # webhooks. channels.orderlist.one_order fills both.
    rejected: list[tuple[bytes, str]] = field(default_factory=list)
    # The newest order creation/update time on this page: once the page's events are durable, the
    # connection's checkpoint may move up to it. None: this page must not move the checkpoint (it was empty,
    # or, as with Flipkart's several searches, a later page may still hold older orders).
    high_water: datetime | None = None


class ListOrders(Protocol):
    def __call__(
        self,
        session: aiohttp.ClientSession,
        connection: Connection,
        since: datetime,
        *,
        budget: TokenBucket,
        received_at: datetime,
    ) -> AsyncIterator[OrderBatch]:
        """Pages of orders created or changed at or after `since`, oldest first; raises ChannelError
        (channels.errors) when the channel refuses or fails, after the pages already yielded."""


@dataclass(frozen=True)
class ChannelSpec:
    """One channel: how its webhooks are verified and normalised, which client writes its inventory within
    which budget and batch size, and how its order list is read (``channels.<name>.orders.list_orders``)."""

    name: str
    # Webhooks in (the gateway).
    verify: Verify
    normalise: Normalise
    # The headers verify reads (the signature, and what is signed with it or checked against the body). A
    # request carrying one of them twice is refused before verifying: which copy a check reads is an accident
    # of the code, so two copies are never accepted, whatever their order.
    auth_headers: tuple[str, ...]
    # Inventory out (fan-out, reconciler): the client, the channel's default budget and largest batch.
    client: InventoryClientFactory
    rate_limit_per_s: float
    rate_burst: float
    max_batch: int
    # Orders listed since a point in time (reconciler backfill).
    list_orders: ListOrders
    # How a write can raise what a connection shows without undoing a sale it took meanwhile
    # (allocation/rules.py): "cas" compare-and-set, "relative" an adjustment, "absolute" a plain set.
    write_mode: Literal["absolute", "cas", "relative"] = "absolute"
    # Daily caps (None: none published): writes per listing per day (eBay: 250 revisions), calls per day
    # per connection (Etsy, TikTok: about 10,000). The fan-out tracks both (fanout/budget.py).
    daily_writes_per_listing: int | None = None
    daily_calls: int | None = None
    expand: Expand | None = None  # thin payloads: fetch the full order from the channel before normalising
    ping: Callable[[bytes, Mapping[str, str]], bool] | None = None  # unsigned set-up pings that need a 200
    verifier: Callable[[Connection], Verify] | None = None  # a verify that needs more of the connection

    def verify_for(self, connection: Connection) -> Verify:
        """The verify for `connection`: `verifier(connection)` if the channel has one, else `verify`."""
        return self.verifier(connection) if self.verifier is not None else self.verify

    def budget(self, connection: Connection) -> TokenBucket:
        """The connection's token bucket: its own limit if configured, else the channel's, with headroom."""
        return connection_budget(connection, self.rate_limit_per_s, self.rate_burst)
