"""TikTok Shop's order list for the reconciler's backfill: Get Order List (202309).

``POST /order/202309/orders/search?page_size=…&sort_field=update_time&sort_order=ASC[&page_token=…]`` with
``{"update_time_ge": <unix seconds>}`` as the body (update time rather than create time, so an order
cancelled after `since` comes back), signed like every Open API call (``api.call``), until
``data.next_page_token`` is empty. TikTok's times are whole seconds: `since` is rounded down, so an order of
the same second may come again, which is a duplicate and harmless.

The list returns full orders (the shape Get Order Detail gives the notification path's ``expand``), so each
goes straight into ``webhooks.listed_order_events``: the notification's events from the same
``order_events``, with each cancellation preceded by the sale it undoes (same ids as the notifications).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, PayloadError
from channels.orderlist import high_water, one_order, page_size, require_aware
from channels.payload import epoch_seconds
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from channels.tiktok import api, webhooks

MAX_PAGE = 100  # Get Order List's largest page_size
DEFAULT_PAGE = 50


def _hint(exc: ChannelError) -> str:
    if exc.status in (401, 403):
        return "check the connection's access_token, app key and app secret (webhook_secret)"
    if exc.status == 429:
        return "over TikTok's rate limit; lower the connection's rate_limit_per_s or retry later"
    if exc.status is None and not exc.retryable:
        return "fix the connection's settings"
    if exc.retryable:
        return "TikTok is failing or unreachable; the next run retries from the same checkpoint"
    return "TikTok refused the request; check the connection's settings and the app's order scope"


def _failure(connection: Connection, exc: Exception) -> ChannelError:
    where = f"tiktok order list for connection {connection.id!r}"
    if isinstance(exc, ChannelError):
        return ChannelError(
            f"{where}: {exc}; {_hint(exc)}",
            status=exc.status,
            retryable=exc.retryable,
            retry_after_s=exc.retry_after_s,
        )
    return ChannelError(f"{where}: {exc!r}; the next run retries", status=None, retryable=True)


def _updated(order: Any) -> datetime | None:
    if not isinstance(order, dict):
        return None
    try:
        return epoch_seconds(order.get("update_time", order.get("create_time")), "update_time")
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
    """Pages of the orders updated at or after `since`, oldest first (see the module docstring)."""
    size = page_size(connection, default=DEFAULT_PAGE, maximum=MAX_PAGE)
    body = {"update_time_ge": math.floor(require_aware(since).timestamp())}
    query = {"page_size": str(size), "sort_field": "update_time", "sort_order": "ASC"}
    while True:
        await budget.acquire()
        try:
            data = await api.call(
                session, connection, "POST", api.ORDER_SEARCH_PATH, query=query, payload=body
            )
        except (ChannelError, aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(connection, exc) from exc
        orders = data.get("orders", [])
        if not isinstance(orders, list):
            raise ChannelError(
                f"tiktok order list for connection {connection.id!r}: data.orders is not a list; "
                "the next run retries, report it if it persists",
                status=200,
                retryable=True,
            )
        batch = OrderBatch()
        times: list[datetime] = []
        for order in orders:
            if (at := _updated(order)) is not None:
                times.append(at)
            with one_order(batch, order) as events:
                events += webhooks.listed_order_events(connection, order, received_at)
        batch.high_water = high_water(times)
        yield batch
        token = data.get("next_page_token")
        if not isinstance(token, str) or not token:
            return
        query = {**query, "page_token": token}
