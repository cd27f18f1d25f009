"""Shopify webhooks: signature check and normalisation of orders and refunds into one event per line.

Signature: ``X-Shopify-Hmac-SHA256`` is base64(HMAC-SHA256(app secret, raw body)), compared in constant
time; Shopify sends no timestamp in it, so there is no replay window (retries, up to 8 over 4 h, carry the
same body). Topics (``X-Shopify-Topic``):

- ``orders/create``: one OrderPlaced per line item, id ``<connection>:order:<order id>:line:<line item id>``:
  stable across retries and equal to what the reconciler derives from the order-list API (``order_events``
  serves both).
- ``refunds/create``: the REST Refund resource; each ``refund_line_items`` entry whose ``restock_type`` puts
  units back (``cancel`` for unfulfilled items, ``return`` for fulfilled ones, the deprecated
  ``legacy_restock``) is an OrderCancelled of its ``quantity`` undoing the sale of ``line_item_id``, id
  ``<connection>:refund:<refund id>:line:<refund line item id>``. ``no_restock`` refunds money only: no event.
- ``orders/cancelled``: the whole order with ``cancelled_at`` and the ``refunds`` that cancelling created; the
  same refund line items give the same events (same ids), so subscribing to both topics restocks once.
  A cancellation without restock has no refund line items that restock: accepted, no events.
- ``inventory_levels/update``: the store's count of an inventory item at a location changed (an edit in the
  Shopify admin, or the echo of a write of ours): a StockObserved drift signal for the connection's location,
  id ``<connection>:level:<inventory item>:<location>:<updated_at>``. Levels of other locations, and of
  inventory items the connection does not list (products not synced), are accepted with no events.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from channels.connection import Connection
from channels.errors import PayloadError
from channels.payload import (
    Lines,
    iso_time,
    line_event,
    load_json,
    load_object,
    master_sku,
    positive_quantity,
    require_object,
    token_id,
    unmapped,
)
from schemas.base import MAX_QUANTITY
from schemas.inventory_events import ChannelEvent, OrderCancelled, OrderPlaced, StockObserved

SIGNATURE_HEADER = "X-Shopify-Hmac-SHA256"
AUTH_HEADERS: tuple[str, ...] = (
    SIGNATURE_HEADER,
)  # what verify reads: the gateway refuses a request with two of one
TOPIC_HEADER = "X-Shopify-Topic"
HANDLED_TOPICS = ("orders/create", "orders/cancelled", "refunds/create", "inventory_levels/update")
RESTOCKING = frozenset({"cancel", "return", "legacy_restock"})  # refund line items that put units back
NOT_RESTOCKING = frozenset({"no_restock"})


def sign(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """True only if the signature header is present and matches the body."""
    given = headers.get(SIGNATURE_HEADER)
    if not given:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), given.strip().encode())


def normalise(
    connection: Connection, body: bytes, headers: Mapping[str, str], received_at: datetime
) -> list[ChannelEvent]:
    """Canonical events for one verified webhook; raises PayloadError if it cannot be understood."""
    topic = headers.get(TOPIC_HEADER, "")
    if topic == "orders/create":
        return [*order_events(connection, load_json(body), received_at)]
    if topic == "refunds/create":
        return [*refund_events(connection, load_object(body, "a Shopify refund"), received_at)]
    if topic == "orders/cancelled":
        order = load_object(body, "a Shopify order")
        order_id = token_id(order.get("id"), "order id")
        refunds = order.get("refunds", [])
        if not isinstance(refunds, list):
            raise PayloadError(f"order {order_id}: 'refunds' is not a list")
        lines = Lines()
        for r in refunds:
            with lines.collect():
                lines.events += refund_events(connection, r, received_at, order_id=order_id)
        return [*lines.result()]
    if topic == "inventory_levels/update":
        return level_events(connection, load_object(body, "a Shopify inventory level"), received_at)
    raise PayloadError(
        f"webhook topic {topic!r} is not handled (only {', '.join(HANDLED_TOPICS)}); "
        "remove it from the app's subscriptions"
    )


def _gid_tail(value: str) -> str:
    """The numeric id at the end of a GraphQL id (``gid://shopify/InventoryItem/9001`` -> ``9001``)."""
    return value.rsplit("/", 1)[-1]


def level_events(connection: Connection, level: dict[str, Any], received_at: datetime) -> list[ChannelEvent]:
    """A StockObserved for the connection's location and a listed item (see the module), else none."""
    item = token_id(level.get("inventory_item_id"), "inventory_item_id")
    location = token_id(level.get("location_id"), "location_id")
    available = level.get("available")
    if isinstance(available, bool) or not isinstance(available, int) or not 0 <= available <= MAX_QUANTITY:
        raise PayloadError(
            f"inventory item {item}: available {available!r} is not a whole number from 0 to {MAX_QUANTITY}"
        )
    occurred_at = iso_time(level.get("updated_at"), f"inventory item {item}: updated_at")
    synced_location = _gid_tail(str(connection.options.get("location_id", "gid://shopify/Location/1")))
    sku = next(
        (s for s, listing in connection.listings.items() if _gid_tail(listing.inventory_ref or "") == item),
        None,
    )
    if location != synced_location or sku is None:
        return []
    try:
        observed = StockObserved(
            event_id=f"{connection.id}:level:{item}:{location}:{level['updated_at']}",
            tenant=connection.tenant,
            sku=sku,
            quantity=available,
            connection_id=connection.id,
            channel="shopify",
            occurred_at=occurred_at,
            received_at=received_at,
        )
    except ValidationError as exc:
        raise PayloadError(
            f"inventory item {item} does not make a valid event: {exc.errors()[0]['msg']}"
        ) from exc
    return [observed]


def refund_events(
    connection: Connection, refund: Any, received_at: datetime, *, order_id: str | None = None
) -> list[OrderPlaced | OrderCancelled]:
    """One OrderCancelled per refund line item that restocks (see the module). PayloadError if unusable;
    LinesRefused (with the other lines' events) if some lines make no valid event."""
    refund = require_object(refund, "refund")
    refund_id = token_id(refund.get("id"), "refund id")
    order = order_id or token_id(refund.get("order_id"), f"refund {refund_id}: order_id")
    occurred_at = iso_time(refund.get("created_at"), f"refund {refund_id}: created_at")
    items = refund.get("refund_line_items")
    if not isinstance(items, list):
        raise PayloadError(f"refund {refund_id}: 'refund_line_items' is missing or not a list")
    lines = Lines()
    for item in items:
        where = f"refund {refund_id}"
        item = require_object(item, f"{where}: a refund line item")
        item_id = token_id(item.get("id"), f"{where}: refund line item id")
        where = f"refund {refund_id} line {item_id}"
        restock = item.get("restock_type")
        if not isinstance(restock, str):
            raise PayloadError(f"{where}: restock_type {restock!r} is not one Shopify documents")
        if restock not in RESTOCKING:
            if restock not in NOT_RESTOCKING:
                raise PayloadError(f"{where}: restock_type {restock!r} is not one Shopify documents")
            continue
        line_id = token_id(item.get("line_item_id"), f"{where}: line_item_id")
        embedded = item.get("line_item")
        line: dict[str, Any] = embedded if isinstance(embedded, dict) else {}
        variant = line.get("variant_id")
        sku = master_sku(
            connection,
            str(variant) if variant is not None else None,
            line.get("sku"),
            what=f"{where}: variant {variant!r} / sku {line.get('sku')!r}",
        )
        with lines.collect():
            lines.events.append(
                line_event(
                    connection,
                    channel="shopify",
                    order_id=order,
                    line_id=line_id,
                    sku=sku,
                    quantity=positive_quantity(item.get("quantity"), where),
                    occurred_at=occurred_at,
                    received_at=received_at,
                    where=where,
                    cancelled=True,
                    cancel_id=f"{connection.id}:refund:{refund_id}:line:{item_id}",
                )
            )
    return lines.result()


def order_events(
    connection: Connection, order: Any, received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """One OrderPlaced per line of a Shopify order in the REST/webhook shape (numeric ``id``, ``created_at``,
    ``line_items`` with ``id``, ``variant_id``, ``sku``, ``quantity``): the webhook and the order-list
    backfill both come through here, so their event ids are the same. PayloadError if it is unusable;
    LinesRefused (with the other lines' events) if some lines make no valid event."""
    if not isinstance(order, dict) or "id" not in order or not isinstance(order.get("line_items"), list):
        raise PayloadError("body is not a Shopify order: it needs an 'id' and a 'line_items' list")
    occurred_at = iso_time(order.get("created_at"), "created_at")
    lines = Lines()
    for line in order["line_items"]:
        if not isinstance(line, dict) or "id" not in line:
            raise PayloadError("a line item has no 'id'")
        with lines.collect():
            quantity = positive_quantity(line.get("quantity"), f"line {line['id']}")
            variant = line.get("variant_id")
            sku = connection.sku_for_listing(str(variant)) if variant is not None else None
            seller_sku = line.get("sku")
            if sku is None and isinstance(seller_sku, str) and seller_sku in connection.listings:
                sku = seller_sku
            if sku is None:
                raise unmapped(connection, f"line {line['id']}: variant {variant!r} / sku {seller_sku!r}")
            lines.events.append(
                line_event(
                    connection,
                    channel="shopify",
                    order_id=str(order["id"]),
                    line_id=str(line["id"]),
                    sku=sku,
                    quantity=quantity,
                    occurred_at=occurred_at,
                    received_at=received_at,
                    where=f"line {line['id']}",
                )
            )
    if not lines:
        raise PayloadError("order has no line items")
    return lines.result()
