"""BigCommerce's order list for the reconciler's backfill: v2 ``GET /stores/{store_hash}/v2/orders``.

Filtered on ``min_date_modified`` (inclusive, ISO 8601), sorted ``date_modified:asc``, paged with ``page``
and ``limit`` (at most 250; an empty page is a 204). v2 orders carry no lines, only a link to them, so each
order's product lines are fetched as the webhook's ``expand`` does (``webhooks.fetch_products``, each call
charged to the budget) and turned into events by ``webhooks.line_events``, the webhooks' own code: ids equal
the ``store/order/created`` webhook's, and an order now Refunded or Cancelled yields the OrderCancelled
events its ``store/order/statusUpdated`` webhook makes. Incomplete orders (status 0, abandoned checkouts)
yield nothing, as they make no webhook. The same page-number caveat as WooCommerce's applies to a busy store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from channels.bigcommerce import CANCELLED_STATUS_IDS, api, webhooks
from channels.connection import Connection
from channels.errors import ChannelError, PayloadError
from channels.orderlist import fetch, high_water, one_order, page_size, require_aware
from channels.payload import token_id
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch

MAX_PAGE = 250  # v2's largest limit
INCOMPLETE = 0


def _time(order: dict[str, Any], name: str) -> datetime:
    """A v2 order date (RFC 2822, e.g. ``Tue, 03 Mar 2026 09:00:00 +0000``); PayloadError if it is not one."""
    value = order.get(name)
    try:
        at = parsedate_to_datetime(str(value))
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{name} {value!r} is not an RFC 2822 date") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _modified(order: Any) -> datetime | None:
    try:
        return _time(order, "date_modified") if isinstance(order, dict) else None
    except PayloadError:
        return None


async def _events(
    session: aiohttp.ClientSession,
    connection: Connection,
    order: Any,
    budget: TokenBucket,
    received_at: datetime,
) -> list[Any]:
    if not isinstance(order, dict):
        raise PayloadError("an order in the list is not a JSON object")
    order_id = token_id(order.get("id"), "order id")
    status_id = order.get("status_id")
    if status_id == INCOMPLETE:
        return []
    cancelled = status_id in CANCELLED_STATUS_IDS
    occurred_at = _time(order, "date_modified" if cancelled else "date_created")
    try:
        lines = await webhooks.fetch_products(session, connection, order_id, before_call=budget.acquire)
    except ChannelError as exc:
        if exc.status == 404:  # the order went away between the list and its lines
            raise PayloadError(f"order {order_id}: its product lines are gone ({exc})") from exc
        raise ChannelError(
            f"bigcommerce order list for connection {connection.id!r}: the lines of order {order_id} could "
            f"not be read: {exc}; the next run retries from the same checkpoint",
            status=exc.status,
            retryable=exc.retryable,
            retry_after_s=exc.retry_after_s,
        ) from exc
    return webhooks.line_events(
        connection,
        order_id,
        lines,
        cancelled=cancelled,
        occurred_at=occurred_at,
        received_at=received_at,
    )


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
    bound = require_aware(since).astimezone(UTC).isoformat()
    url = api.store_url(connection, "/v2/orders")
    headers = {api.AUTH_HEADER: connection.access_token.get_secret_value(), "Accept": "application/json"}
    page = 1
    while True:
        params = {
            "min_date_modified": bound,
            "sort": "date_modified:asc",
            "page": str(page),
            "limit": str(limit),
        }
        answer = await fetch(session, connection, "GET", url, budget=budget, headers=headers, params=params)
        if answer.body is None:  # 204: past the last order
            return
        if not isinstance(answer.body, list):
            raise ChannelError(
                f"bigcommerce order list for connection {connection.id!r}: page {page} is not a JSON list "
                f"but {str(answer.body)[:200]}; check api_base_url and options.store_hash",
                status=200,
                retryable=False,
            )
        batch = OrderBatch()
        for order in answer.body:
            with one_order(batch, order) as events:
                events += await _events(session, connection, order, budget, received_at)
        batch.high_water = high_water(at for o in answer.body if (at := _modified(o)) is not None)
        yield batch
        if len(answer.body) < limit:
            return
        page += 1
