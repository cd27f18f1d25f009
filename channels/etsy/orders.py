"""Etsy's order list for the reconciler's backfill: getShopReceipts, ``GET /v3/application/shops/{shop_id}/
receipts``.

Filtered on ``min_last_modified`` (unix seconds: `since` rounded down, so at or after it), sorted
``sort_on=updated&sort_order=asc``, paged by ``limit`` (at most 100) and ``offset`` until ``count``. Receipts
come with their transactions, so each goes straight into ``webhooks.receipt_events``, the webhooks' own
code: a paid receipt yields the ``order.paid`` webhook's OrderPlaced ids, a canceled one the OrderCancelled
ids of its ``order.canceled`` webhook, and an unpaid one nothing (Etsy sends no webhook for it). Offsets over
a live list shift as WooCommerce's pages do (see channels.woocommerce.orders).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, PayloadError
from channels.etsy import API_PATH, webhooks
from channels.etsy.client import api_headers
from channels.orderlist import fetch, high_water, one_order, page_size, require_aware
from channels.payload import epoch_seconds, require_object
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from schemas.inventory_events import OrderCancelled, OrderPlaced

MAX_PAGE = 100  # getShopReceipts' largest limit
CANCELED = "canceled"


def events_of(
    connection: Connection, receipt: Any, received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """The events a receipt's webhooks would have made, by its state now; PayloadError if it is unusable."""
    receipt = require_object(receipt, "a receipt in the list")
    status = receipt.get("status")
    if isinstance(status, str) and status.lower() == CANCELED:
        return webhooks.receipt_events(connection, receipt, cancel=True, received_at=received_at)
    if receipt.get("is_paid") is True:
        return webhooks.receipt_events(connection, receipt, cancel=False, received_at=received_at)
    return []


def _updated(receipt: Any) -> datetime | None:
    if not isinstance(receipt, dict):
        return None
    try:
        return epoch_seconds(receipt.get("update_timestamp"), "update_timestamp")
    except PayloadError:  # no usable stamp: this receipt does not move the page's high water
        return None


async def list_orders(
    session: aiohttp.ClientSession,
    connection: Connection,
    since: datetime,
    *,
    budget: TokenBucket,
    received_at: datetime,
) -> AsyncIterator[OrderBatch]:
    """Pages of the receipts changed at or after `since`, oldest first (see the module docstring)."""
    limit = page_size(connection, default=MAX_PAGE, maximum=MAX_PAGE)
    shop_id = connection.options.get("shop_id")
    if not shop_id:
        raise ChannelError(
            f"connection {connection.id!r} has no options.shop_id; set it to the Etsy shop's id",
            status=None,
            retryable=False,
        )
    url = f"{connection.api_base_url.rstrip('/')}{API_PATH}/shops/{shop_id}/receipts"
    headers = api_headers(connection)
    lowest = int(require_aware(since).timestamp())  # rounded down: at or after `since`
    offset = 0
    while True:
        params = {
            "min_last_modified": str(lowest),
            "sort_on": "updated",
            "sort_order": "asc",
            "limit": str(limit),
            "offset": str(offset),
        }
        answer = await fetch(session, connection, "GET", url, budget=budget, headers=headers, params=params)
        body = answer.body if isinstance(answer.body, dict) else {}
        results, count = body.get("results"), body.get("count")
        if not isinstance(results, list) or not isinstance(count, int):
            raise ChannelError(
                f"etsy receipt list for connection {connection.id!r} has no 'results' list and 'count': "
                f"{str(answer.body)[:200]}; check api_base_url",
                status=200,
                retryable=False,
            )
        batch = OrderBatch()
        for receipt in results:
            with one_order(batch, receipt) as events:
                events += events_of(connection, receipt, received_at)
        batch.high_water = high_water(at for r in results if (at := _updated(r)) is not None)
        yield batch
        offset += len(results)
        if not results or offset >= count:
            return
