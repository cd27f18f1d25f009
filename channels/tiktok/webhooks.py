"""TikTok Shop order notifications: signature check, order expansion, one event per order line.

Signature: ``Authorization`` is lowercase hex HMAC-SHA256 keyed with the app secret over ``app_key`` + the
raw body. TikTok signs no timestamp, so there is no replay window (see channels.tiktok); verify() still
takes ``now`` so every channel's verify has the same shape. The app key is per connection
(``options["app_key"]``): use ``verifier(connection)`` where a plain ``(secret, body, headers)`` check is
wanted.

ORDER_STATUS_CHANGE (``type`` 1) is thin: ``expand`` fetches the order with Get Order Detail and returns the
notification with the order attached under ``"order"``; ``normalise`` needs that expanded body. Any status
but CANCELLED yields OrderPlaced per line, CANCELLED (of the order or of one line) yields OrderCancelled;
ids depend only on the order and line ids, so every notification of one order repeats the same ids and
duplicates are absorbed downstream. Lines without ``quantity`` are one unit each (202309 lists one line
per unit).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, PayloadError
from channels.payload import (
    Lines,
    epoch_seconds,
    line_event,
    load_object,
    positive_quantity,
    token_id,
    unmapped,
)
from channels.tiktok import CHANNEL, api
from schemas.inventory_events import OrderCancelled, OrderPlaced

SIGNATURE_HEADER = "Authorization"
AUTH_HEADERS: tuple[str, ...] = (
    SIGNATURE_HEADER,
)  # what verify reads: the gateway refuses a request with two of one
ORDER_STATUS_CHANGE = 1
CANCELLED = "CANCELLED"


def sign(secret: str, app_key: str, body: bytes) -> str:
    """The ``Authorization`` value TikTok sends: hex HMAC-SHA256(app secret, app_key + body)."""
    return hmac.new(secret.encode(), app_key.encode() + body, hashlib.sha256).hexdigest()


def verify(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: datetime | None = None,
    app_key: str | None = None,
) -> bool:
    """True only if ``Authorization`` matches the body for this app key and secret; never raises.

    Without an app key nothing can be checked, so the answer is False. `now` is unused: nothing is timed.
    """
    given = headers.get(SIGNATURE_HEADER)
    if not app_key or not secret or not given:
        return False
    return hmac.compare_digest(sign(secret, app_key, body).encode(), given.strip().lower().encode())


def verifier(connection: Connection) -> Callable[[str, bytes, Mapping[str, str]], bool]:
    """verify() bound to the connection's app key, in the gateway's ``(secret, body, headers)`` shape."""
    app_key = connection.options.get("app_key")

    def check(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
        return verify(secret, body, headers, app_key=app_key)

    return check


def _object(body: bytes) -> dict[str, Any]:
    return load_object(body, "a TikTok notification")


def _order_id(note: dict[str, Any]) -> str:
    kind = note.get("type")
    if kind != ORDER_STATUS_CHANGE or isinstance(kind, bool):
        raise PayloadError(
            f"notification type {kind!r} is not handled (only 1, ORDER_STATUS_CHANGE); "
            "unsubscribe it for this app or extend channels.tiktok.webhooks"
        )
    data = note.get("data")
    if not isinstance(data, dict):
        raise PayloadError("ORDER_STATUS_CHANGE has no 'data' object")
    return token_id(data.get("order_id"), "data.order_id")


def _master_sku(connection: Connection, line: dict[str, Any], line_id: str) -> str:
    # product_id is shared by a product's variants, so the SKU id (inventory_ref) is what identifies one.
    sku_id = line.get("sku_id")
    for sku, listing in connection.listings.items():
        if sku_id is not None and listing.inventory_ref == str(sku_id):
            return sku
    seller_sku = line.get("seller_sku")
    if isinstance(seller_sku, str) and seller_sku in connection.listings:
        return seller_sku
    raise unmapped(
        connection,
        f"line {line_id}: sku_id {sku_id!r} / seller_sku {seller_sku!r}",
        "add it to that connection's listings (inventory_ref = sku_id)",
    )


def normalise(
    connection: Connection, body: bytes, headers: Mapping[str, str], received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """Canonical events for one verified, expanded notification; PayloadError if it cannot be understood."""
    note = _object(body)
    order_id = _order_id(note)
    order = note.get("order")
    if order is None:
        raise PayloadError(
            f"thin ORDER_STATUS_CHANGE for order {order_id}: run channels.tiktok.webhooks.expand first"
        )
    if not isinstance(order, dict):
        raise PayloadError("'order' is not an object")
    if token_id(order.get("id"), "order.id") != order_id:
        raise PayloadError(f"attached order {order.get('id')!r} is not the notified order {order_id}")
    return order_events(connection, order, received_at)


def order_events(
    connection: Connection, order: Any, received_at: datetime, *, as_placed: bool = False
) -> list[OrderPlaced | OrderCancelled]:
    """The one place a TikTok order (Get Order Detail / Get Order List shape) becomes events: OrderPlaced per
    line, or OrderCancelled for lines of a CANCELLED order or with a CANCELLED ``display_status``; with
    `as_placed` every line's OrderPlaced (the sale a cancellation undoes). PayloadError if unusable;
    LinesRefused (with the other lines' events) if some lines make no valid event."""
    if not isinstance(order, dict):
        raise PayloadError("'order' is not an object")
    order_id = token_id(order.get("id"), "order.id")
    status = order.get("status")
    if not isinstance(status, str) or not status:
        raise PayloadError(f"order {order_id}: status {status!r} is not an order status")
    lines = order.get("line_items")
    if not isinstance(lines, list) or not lines:
        raise PayloadError(f"order {order_id} has no line items")
    placed_at = epoch_seconds(order.get("create_time"), "order.create_time")
    collected = Lines()
    seen: set[str] = set()
    for line in lines:
        if not isinstance(line, dict):
            raise PayloadError(f"order {order_id}: a line item is not an object")
        line_id = token_id(line.get("id"), "line item id")
        if line_id in seen:
            raise PayloadError(f"order {order_id}: line item {line_id} appears twice")
        seen.add(line_id)
        sku = _master_sku(connection, line, line_id)
        cancelled = not as_placed and (status == CANCELLED or line.get("display_status") == CANCELLED)
        if cancelled:
            when = order.get("cancel_time") or order.get("update_time")
            occurred_at = epoch_seconds(when, "order.cancel_time")
        else:
            occurred_at = placed_at
        with collected.collect():
            # 202309 order details list one line per unit, without quantity
            quantity = positive_quantity(line.get("quantity", 1), f"line {line_id}")
            collected.events.append(
                line_event(
                    connection,
                    channel=CHANNEL,
                    order_id=order_id,
                    line_id=line_id,
                    sku=sku,
                    quantity=quantity,
                    occurred_at=occurred_at,
                    received_at=received_at,
                    cancelled=cancelled,
                    where=f"order {order_id} line {line_id}",
                )
            )
    return collected.result()


def listed_order_events(
    connection: Connection, order: Any, received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """Events for an order of Get Order List: what its notification gives (``order_events``), each
    cancellation preceded by the sale it undoes (same id as the earlier notification's: a duplicate if that
    was applied; if it was lost, sale and cancellation cancel out instead of a late sale taking stock).
    LinesRefused, with the events of the other lines, if some lines make no valid event."""
    lines = Lines()
    with lines.collect():
        lines.events += order_events(connection, order, received_at)
    undone = {e.sale_event_id for e in lines.events if isinstance(e, OrderCancelled)}
    if undone:
        sales = Lines()
        with sales.collect():
            sales.events += order_events(connection, order, received_at, as_placed=True)
        # A line refused as a sale is refused as a cancellation too (same quantity): listed once.
        lines.events[:0] = [e for e in sales.events if e.event_id in undone]
    return lines.result()


async def expand(
    session: aiohttp.ClientSession, connection: Connection, body: bytes, headers: Mapping[str, str]
) -> bytes:
    """The notification with its order attached (Get Order Detail); unchanged if already expanded.

    A body it cannot read is returned unchanged, for normalise to refuse with the reason (so the gateway
    quarantines it). Raises ChannelError if TikTok fails.
    """
    try:
        note = _object(body)
        order_id = _order_id(note)
    except PayloadError:
        return body
    if "order" in note:
        return body
    data = await api.call(session, connection, "GET", api.ORDER_DETAIL_PATH, query={"ids": order_id})
    orders = data.get("orders")
    listed = orders if isinstance(orders, list) else []  # a reply of another shape lists nothing
    found = [o for o in listed if isinstance(o, dict) and str(o.get("id")) == order_id]
    if not found:
        # a notification can outrun the order read model for a moment: worth retrying
        raise ChannelError(
            f"tiktok has no order {order_id} yet (Get Order Detail returned none)", status=200, retryable=True
        )
    return json.dumps({**note, "order": found[0]}).encode()
