"""Walmart's order list for the reconciler's backfill: the Orders API ``GET /v3/orders``.

Filtered by ``lastModifiedStartDate`` (so a purchase order whose lines were cancelled after `since` comes back
too), ``limit`` orders a page (at most 200), and paged by ``list.meta.nextCursor``: a query string (``?limit=
…&hasMoreElements=true&soIndex=…&poIndex=…``) to send as the next page's query, null on the last page. The
call goes through the inventory client, so it shares its token handling (``POST /v3/token``, charged to the
budget too). Walmart's date filter takes whole seconds: `since` is rounded down, so the first page may repeat
an order from the second before, which is a duplicate and harmless.

Walmart does not document the order of the list; the simulator serves oldest change first, and each page's
high water is its newest ``orderDate``/``statusDate``. Each order goes through
``webhooks.listed_order_events``, the same ``order_events`` the notification path uses: a sale per line with
``PO_CREATED``'s ids, and for each cancelled line (``orderLineStatuses``) the cancellation
``PO_LINE_AUTOCANCELLED`` makes, with its id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError
from channels.orderlist import high_water, one_order, page_size, require_aware
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from channels.walmart import webhooks
from channels.walmart.client import WalmartInventoryClient

MAX_PAGE = 200  # the Orders API's largest `limit`
DEFAULT_PAGE = 100  # its default `limit`


def _hint(status: int | None, retryable: bool) -> str:
    if status is None and not retryable:
        return "fix the connection's settings"
    if status in (401, 403):
        return "check the connection's access_token ('<client id>:<client secret>') and its Orders API access"
    if status == 429:
        return "over Walmart's rate limit; lower the connection's rate_limit_per_s or retry later"
    if status is None or status >= 500:
        return "Walmart is failing or unreachable; the next run retries from the same checkpoint"
    return "the request was refused; check the connection's api_base_url and options"


def _failure(connection: Connection, exc: Exception) -> ChannelError:
    where = f"walmart order list for connection {connection.id!r}"
    if isinstance(exc, ChannelError):
        return ChannelError(
            f"{where}: {exc}; {_hint(exc.status, exc.retryable)}",
            status=exc.status,
            retryable=exc.retryable,
            retry_after_s=exc.retry_after_s,
        )
    return ChannelError(f"{where}: {exc!r}; {_hint(None, True)}", status=None, retryable=True)


def _page(connection: Connection, body: Any) -> tuple[list[Any], str | None]:
    """The orders of one answer and its next cursor; ChannelError if the answer has no order list."""
    listing = body.get("list") if isinstance(body, dict) else None
    meta = listing.get("meta") if isinstance(listing, dict) else None
    elements = listing.get("elements") if isinstance(listing, dict) else None
    orders = elements.get("order") if isinstance(elements, dict) else None
    if not isinstance(orders, list) or not isinstance(meta, dict):
        raise ChannelError(
            f"walmart order list for connection {connection.id!r}: the answer has no list.elements.order "
            f"and list.meta: {str(body)[:200]!r}; the next run retries, report it if it persists",
            status=200,
            retryable=True,
        )
    cursor = meta.get("nextCursor")
    return orders, cursor if isinstance(cursor, str) and cursor.strip("?") else None


async def list_orders(
    session: aiohttp.ClientSession,
    connection: Connection,
    since: datetime,
    *,
    budget: TokenBucket,
    received_at: datetime,
) -> AsyncIterator[OrderBatch]:
    """Pages of the purchase orders modified at or after `since`, oldest first (see the module docstring)."""
    limit = page_size(connection, default=DEFAULT_PAGE, maximum=MAX_PAGE)
    start = require_aware(since).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    client = WalmartInventoryClient(session, connection, budget=budget)
    params: dict[str, str] = {"lastModifiedStartDate": start, "limit": str(limit)}
    while True:
        try:
            body = await client.orders_page(params)
        except ChannelError as exc:
            if exc.status == 404 and "CONTENT_NOT_FOUND" in str(exc):
                return  # Walmart's answer when no purchase order matches
            raise _failure(connection, exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(connection, exc) from exc
        orders, cursor = _page(connection, body)
        batch = OrderBatch()
        times: list[datetime] = []
        for order in orders:
            if isinstance(order, dict) and (at := webhooks.order_time(order)) is not None:
                times.append(at)
            with one_order(batch, order) as events:
                events += webhooks.listed_order_events(connection, order, received_at)
        batch.high_water = high_water(times)
        yield batch
        if cursor is None:
            return
        params = dict(parse_qsl(cursor.lstrip("?"), keep_blank_values=True))
