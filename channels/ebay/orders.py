"""eBay's order list for the reconciler's backfill: the Fulfillment API's getOrders,
``GET /sell/fulfillment/v1/order?filter=lastmodifieddate:[<since>..<now>]``.

eBay pages by ``limit`` (at most 200) and ``offset`` and follows each page's ``next`` link, but sorts newest
created first and offers no other order; the backfill needs oldest first, so the whole window is read (every
call charged to the budget) and then yielded oldest page first. The window's upper end is fixed at the first
call, so orders changed while it is read fall outside it rather than shifting the offsets under it. A failure
therefore yields nothing and the checkpoint stays put. A Fulfillment Order has the fields the
``ORDER_CONFIRMATION`` notification's data has (``orderId``, ``lineItems`` with ``lineItemId``,
``legacyItemId``, ``sku``, ``quantity``), so ``webhooks.order_events`` makes the same event ids from it, at
the order's ``creationDate``. eBay's notifications carry no cancellation, so neither does this list: a
cancelled order yields its OrderPlaced events, as its notification did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
from yarl import URL

from channels.connection import Connection
from channels.ebay import webhooks
from channels.errors import ChannelError, PayloadError
from channels.orderlist import fetch, high_water, one_order, page_size, require_aware
from channels.payload import iso_time
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from schemas.inventory_events import OrderCancelled, OrderPlaced

FULFILLMENT_API_PATH = "/sell/fulfillment/v1"
MAX_PAGE = 200  # getOrders' largest limit


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def events_of(
    connection: Connection, order: Any, received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """The events of one Fulfillment API Order (its notification's ids); PayloadError if it is unusable."""
    created = order.get("creationDate") if isinstance(order, dict) else None
    occurred_at = iso_time(created, "creationDate")
    return webhooks.order_events(connection, order, occurred_at=occurred_at, received_at=received_at)


def _modified(order: Any) -> datetime | None:
    try:
        return (
            iso_time(order.get("lastModifiedDate"), "lastModifiedDate") if isinstance(order, dict) else None
        )
    except PayloadError:
        return None


async def list_orders(
    session: aiohttp.ClientSession,
    connection: Connection,
    since: datetime,
    *,
    budget: TokenBucket,
    received_at: datetime,
) -> AsyncIterator[OrderBatch]:
    """Pages of the orders modified at or after `since`, oldest first (see the module docstring)."""
    limit = page_size(connection, default=MAX_PAGE, maximum=MAX_PAGE)
    window = f"lastmodifieddate:[{_stamp(require_aware(since))}..{_stamp(datetime.now(UTC))}]"
    headers = {
        "Authorization": f"Bearer {connection.access_token.get_secret_value()}",
        "Accept": "application/json",
    }
    url: str | None = f"{connection.api_base_url.rstrip('/')}{FULFILLMENT_API_PATH}/order"
    params: dict[str, str] | None = {"filter": window, "limit": str(limit), "offset": "0"}
    pages: list[list[Any]] = []
    while url is not None:
        answer = await fetch(session, connection, "GET", url, budget=budget, headers=headers, params=params)
        body = answer.body if isinstance(answer.body, dict) else {}
        orders = body.get("orders", [])  # eBay leaves "orders" out of an empty page
        if not isinstance(orders, list):
            raise ChannelError(
                f"ebay order list for connection {connection.id!r}: 'orders' is not a list in "
                f"{str(answer.body)[:200]}; check api_base_url",
                status=200,
                retryable=False,
            )
        pages.append(orders)
        following = body.get("next")
        if not orders or not isinstance(following, str) or not following:
            break
        if URL(following).origin() != URL(url).origin():
            raise ChannelError(
                f"ebay order list for connection {connection.id!r}: the next page {following!r} is on "
                "another host than api_base_url; not following it with the seller's token",
                status=200,
                retryable=False,
            )
        url, params = following, None  # `next` carries the filter, limit and offset
    for orders in reversed(pages):
        batch = OrderBatch()
        for order in reversed(orders):
            with one_order(batch, order) as events:
                events += events_of(connection, order, received_at)
        batch.high_water = high_water(at for o in orders if (at := _modified(o)) is not None)
        yield batch
