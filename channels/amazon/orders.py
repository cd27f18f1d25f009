"""Amazon's order list for the reconciler's backfill: SP-API Orders v0 ``getOrders`` + ``getOrderItems``.

``GET /orders/v0/orders?MarketplaceIds=…&LastUpdatedAfter=…&MaxResultsPerPage=…`` (LastUpdatedAfter rather
than CreatedAfter, so an order cancelled after `since` comes back), then ``NextToken`` (with MarketplaceIds)
until the answer has none; for each MFN order that moves stock, ``GET /orders/v0/orders/{id}/orderItems``
(following its own NextToken). Every call is charged to the connection's budget and also paced to the
operation's published limit (getOrders 0.0167/s burst 20, getOrderItems 0.5/s burst 30, per connection and
endpoint in this process), so a generous budget cannot earn 429s.

Ids: the ORDER_CHANGE path's event ids are ``<conn>:order:<AmazonOrderId>:line:<OrderItemId>``;
getOrderItems returns the same ``OrderItemId`` for each item (SP-API's order item id is one identifier
across the notification and the Orders API), and ``QuantityOrdered`` is the notification's ``Quantity``.
Each order goes through ``webhooks.order_events``, the function the notification path uses: Pending and
Unshipped orders give a sale per item, dated ``PurchaseDate``. A Canceled order gives, like the ``Canceled``
notification, a cancellation per item dated ``LastUpdateDate``, preceded by the sale that its Pending or
Unshipped notification would have given (same id: a duplicate if it was applied; if it was lost, the sale and
its cancellation cancel out instead of a later, late sale taking stock for good). Shipped and other statuses
and AFN orders give no events, so their items are not fetched.

Not verified against live Amazon: whether getOrderItems still reports the ordered quantity of a Canceled
order (an order whose items come back with ``QuantityOrdered`` 0 is rejected with that reason, not guessed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from channels.amazon import webhooks
from channels.connection import Connection
from channels.errors import ChannelError, PayloadError
from channels.orderlist import fetch, high_water, one_order, page_size, require_aware
from channels.payload import Lines, iso_time
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch
from schemas.inventory_events import OrderCancelled, OrderPlaced

DEFAULT_MARKETPLACE = "ATVPDKIKX0DER"
MAX_RESULTS_PER_PAGE = 100  # getOrders' largest MaxResultsPerPage
# The published usage plans (requests per second, burst) of the two operations.
GET_ORDERS_RATE, GET_ORDERS_BURST = 0.0167, 20.0
GET_ORDER_ITEMS_RATE, GET_ORDER_ITEMS_BURST = 0.5, 30.0
_PACERS: dict[tuple[str, str, str], TokenBucket] = {}


def _pacer(connection: Connection, operation: str) -> TokenBucket:
    """The process-wide pace of one SP-API operation for one connection (and endpoint)."""
    key = (connection.id, connection.api_base_url, operation)
    if key not in _PACERS:
        rate, burst = (
            (GET_ORDERS_RATE, GET_ORDERS_BURST)
            if operation == "getOrders"
            else (GET_ORDER_ITEMS_RATE, GET_ORDER_ITEMS_BURST)
        )
        _PACERS[key] = TokenBucket(rate, burst)
    return _PACERS[key]


def _payload(connection: Connection, body: Any, what: str) -> dict[str, Any]:
    payload = body.get("payload") if isinstance(body, dict) else None
    if not isinstance(payload, dict):
        raise ChannelError(
            f"amazon order list for connection {connection.id!r}: the {what} answer has no payload object: "
            f"{str(body)[:200]!r}; the next run retries, report it if it persists",
            status=200,
            retryable=True,
        )
    return payload


def _updated(order: Any) -> datetime | None:
    value = order.get("LastUpdateDate") if isinstance(order, dict) else None
    try:
        return iso_time(value, "LastUpdateDate")
    except PayloadError:
        return None


def listed_order_events(
    connection: Connection, order: Any, items: list[Any], received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """Events for a getOrders order and its getOrderItems items (see the module docstring)."""
    if not isinstance(order, dict):
        raise PayloadError("an order of the list is not a JSON object")
    order_id, status = order.get("AmazonOrderId"), order.get("OrderStatus")
    as_notified = []
    for item in items:
        if not isinstance(item, dict):
            raise PayloadError(f"order {order_id}: an order item is not a JSON object")
        if status in webhooks.CANCELLED_STATUSES and item.get("QuantityOrdered") == 0:
            raise PayloadError(
                f"order {order_id} item {item.get('OrderItemId')}: Amazon lists the Canceled item with "
                "QuantityOrdered 0, so the units to restock are unknown; check the order in Seller Central"
            )
        as_notified.append(
            {
                "OrderItemId": item.get("OrderItemId"),
                "SellerSKU": item.get("SellerSKU"),
                "Quantity": item.get("QuantityOrdered"),
            }
        )
    common: dict[str, Any] = {
        "order_id": order_id,
        "fulfillment_type": order.get("FulfillmentChannel"),
        "purchased_at": order.get("PurchaseDate"),
        "changed_at": order.get("LastUpdateDate"),
        "items": as_notified,
        "received_at": received_at,
    }
    lines = Lines()  # a refused item refuses only itself (as a sale and as its cancellation)
    if status in webhooks.CANCELLED_STATUSES:
        with lines.collect():
            lines.events += webhooks.order_events(connection, status="Unshipped", **common)
    with lines.collect():
        lines.events += webhooks.order_events(connection, status=status, **common)
    return lines.result()


def _moves_stock(order: Any) -> bool:
    """Whether the notification path makes events of this order (so its items are worth fetching)."""
    if not isinstance(order, dict) or order.get("FulfillmentChannel") == "AFN":
        return False
    return order.get("OrderStatus") not in webhooks.NO_STOCK_CHANGE_STATUSES


async def list_orders(
    session: aiohttp.ClientSession,
    connection: Connection,
    since: datetime,
    *,
    budget: TokenBucket,
    received_at: datetime,
) -> AsyncIterator[OrderBatch]:
    """Pages of the orders updated at or after `since`, oldest first (see the module docstring)."""
    size = page_size(connection, default=MAX_RESULTS_PER_PAGE, maximum=MAX_RESULTS_PER_PAGE)
    after = require_aware(since).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    base = f"{connection.api_base_url.rstrip('/')}/orders/v0/orders"
    headers = {"x-amz-access-token": connection.access_token.get_secret_value()}
    marketplace = connection.options.get("marketplace_id", DEFAULT_MARKETPLACE)
    params = {"MarketplaceIds": marketplace, "LastUpdatedAfter": after, "MaxResultsPerPage": str(size)}
    while True:
        await _pacer(connection, "getOrders").acquire()
        answer = await fetch(session, connection, "GET", base, budget=budget, headers=headers, params=params)
        payload = _payload(connection, answer.body, "getOrders")
        orders = payload.get("Orders")
        if not isinstance(orders, list):
            raise ChannelError(
                f"amazon order list for connection {connection.id!r}: getOrders payload has no Orders list; "
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
                items = (
                    await _items(session, connection, order, budget, headers) if _moves_stock(order) else []
                )
                events += listed_order_events(connection, order, items, received_at)
        batch.high_water = high_water(times)
        yield batch
        token = payload.get("NextToken")
        if not isinstance(token, str) or not token:
            return
        params = {"MarketplaceIds": marketplace, "NextToken": token}


async def _items(
    session: aiohttp.ClientSession,
    connection: Connection,
    order: dict[str, Any],
    budget: TokenBucket,
    headers: dict[str, str],
) -> list[Any]:
    """Every item of `order` (getOrderItems, following its NextToken); PayloadError for an unusable id."""
    order_id = order.get("AmazonOrderId")
    if not isinstance(order_id, str) or not order_id or "/" in order_id:
        raise PayloadError(f"AmazonOrderId {order_id!r} is missing or not an order id")
    url = f"{connection.api_base_url.rstrip('/')}/orders/v0/orders/{quote(order_id)}/orderItems"
    items: list[Any] = []
    params: dict[str, str] | None = None
    while True:
        await _pacer(connection, "getOrderItems").acquire()
        answer = await fetch(session, connection, "GET", url, budget=budget, headers=headers, params=params)
        payload = _payload(connection, answer.body, "getOrderItems")
        page = payload.get("OrderItems")
        if not isinstance(page, list):
            raise PayloadError(f"order {order_id}: getOrderItems has no OrderItems list")
        items += page
        token = payload.get("NextToken")
        if not isinstance(token, str) or not token:
            return items
        params = {"NextToken": token}
