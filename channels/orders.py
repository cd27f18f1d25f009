"""Order lists for the reconciler's backfill: what each channel says was ordered since a point in time.

Each channel package has an ``orders`` module with ``list_orders``: it pages through the channel's order-list
API (as the real channel paginates and filters it), charges every call to the connection's budget, and
normalises each order with the same code the gateway uses for that channel's webhooks, so each line's
``event_id`` equals the webhook's and an order the pipeline already applied is a duplicate.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import aiohttp

from channels.connection import Connection
from channels.ratelimit import TokenBucket
from schemas.inventory_events import OrderCancelled, OrderPlaced


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


def order_source(channel: str) -> ListOrders:
    """The channel's ``list_orders`` (``channels.<channel>.orders``)."""
    try:
        module = importlib.import_module(f"channels.{channel}.orders")
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"channel {channel!r} has no order-list backfill (channels/{channel}/orders.py)"
        ) from exc
    source: ListOrders = module.list_orders
    return source
