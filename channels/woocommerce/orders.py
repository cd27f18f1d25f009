"""WooCommerce's order list for the reconciler's backfill: REST v3 ``GET /wp-json/wc/v3/orders``.

Filtered on ``modified_after`` (UTC, ``dates_are_gmt=true``; WordPress keeps what is strictly after it and
dates have whole seconds, so one second before `since` is asked for: at or after `since`, a few duplicates at
most), ``status=any``, sorted ``orderby=modified&order=asc``, paged with ``page``/``per_page`` (at most 100)
until ``X-WP-TotalPages``. Each order goes through ``webhooks.order_events``, the webhooks' own code: a
cancelled or refunded order yields its OrderCancelled events, exactly as its ``order.updated`` webhook does.

Page numbers over a live list can shift: an order modified while the list is read moves to its end, and the
order that slid onto an already-read page is missed by this run. The reconciler's checkpoint only moves to
the pages' high water, so the next run, starting there, may not see it either; a store busy enough for this
to matter should use a `since` with some overlap.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, PayloadError
from channels.orderlist import fetch, high_water, one_order, page_size, require_aware
from channels.payload import parse_iso
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from channels.woocommerce import API_NAMESPACE, webhooks

MAX_PAGE = 100  # WordPress's largest per_page


def _modified(order: object) -> datetime | None:
    value = order.get("date_modified_gmt") if isinstance(order, dict) else None
    try:
        return parse_iso(value, "date_modified_gmt", assume_utc=True) if isinstance(value, str) else None
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
    per_page = page_size(connection, default=MAX_PAGE, maximum=MAX_PAGE)
    bound = require_aware(since).astimezone(UTC).replace(tzinfo=None, microsecond=0) - timedelta(seconds=1)
    url = f"{connection.api_base_url.rstrip('/')}/wp-json/{API_NAMESPACE}/orders"
    credentials = base64.b64encode(connection.access_token.get_secret_value().encode()).decode()
    headers = {"Authorization": f"Basic {credentials}"}  # "ck_...:cs_...", as the stock client sends it
    page = 1
    while True:
        params = {
            "modified_after": bound.isoformat(),
            "dates_are_gmt": "true",
            "status": "any",
            "orderby": "modified",
            "order": "asc",
            "per_page": str(per_page),
            "page": str(page),
        }
        answer = await fetch(session, connection, "GET", url, budget=budget, headers=headers, params=params)
        if not isinstance(answer.body, list):
            raise ChannelError(
                f"woocommerce order list for connection {connection.id!r}: page {page} is not a JSON list "
                f"but {str(answer.body)[:200]}; check that api_base_url points at the store's root",
                status=200,
                retryable=False,
            )
        batch = OrderBatch()
        for order in answer.body:
            with one_order(batch, order) as events:
                events += webhooks.order_events(connection, order, received_at)
        batch.high_water = high_water(at for o in answer.body if (at := _modified(o)) is not None)
        yield batch
        total_pages = answer.headers.get("X-WP-TotalPages", "")
        last = page >= int(total_pages) if total_pages.isdigit() else len(answer.body) < per_page
        if last or not answer.body:
            return
        page += 1
