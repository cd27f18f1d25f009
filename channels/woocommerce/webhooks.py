"""WooCommerce webhooks: signature check and normalisation of ``order.created`` / ``order.updated``.

Both topics carry the whole REST v3 order. One event per line item:

- status ``cancelled`` or ``refunded``: OrderCancelled (restock), ``occurred_at`` = ``date_modified_gmt``;
- status ``checkout-draft``: nothing (a cart, not an order);
- any other status (pending, processing, on-hold, completed, failed, a plugin's own): OrderPlaced,
  ``occurred_at`` = ``date_created_gmt``. ``order.updated`` re-asserts the sale under the same ids:
  WooCommerce never retries, so a later update backfills a lost ``order.created`` and is a no-op otherwise.
  A failed order keeps its units (the buyer may pay again) until it is cancelled or a stock count corrects it.

Ids: sale ``<connection>:order:<order id>:line:<line item id>``, restock ``<connection>:cancel:...``. A later
edit of a line's quantity keeps the line id and is therefore not seen here (the reconciler's job). Partial
refunds leave the order status alone and are not restocked from webhooks either.

Dates: WooCommerce's ``*_gmt`` fields are UTC written without an offset (documented); they are read as UTC.
The site-local ``date_created`` is never used. An offset, if present, is honoured.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from channels.connection import Connection
from channels.errors import PayloadError
from channels.payload import (
    Lines,
    header,
    line_event,
    load_object,
    master_sku,
    parse_iso,
    positive_int,
    positive_quantity,
)
from schemas.inventory_events import OrderCancelled, OrderPlaced

SIGNATURE_HEADER = "X-WC-Webhook-Signature"
TOPIC_HEADER = "X-WC-Webhook-Topic"
RESOURCE_HEADER = "X-WC-Webhook-Resource"
EVENT_HEADER = "X-WC-Webhook-Event"
WEBHOOK_ID_HEADER = "X-WC-Webhook-ID"
DELIVERY_ID_HEADER = "X-WC-Webhook-Delivery-ID"
SOURCE_HEADER = "X-WC-Webhook-Source"
AUTH_HEADERS: tuple[str, ...] = (
    SIGNATURE_HEADER,
)  # what verify reads: the gateway refuses a request with two of one

HANDLED_TOPICS = ("order.created", "order.updated")
RESTOCK_STATUSES = frozenset({"cancelled", "refunded"})
NOT_AN_ORDER_STATUSES = frozenset({"checkout-draft"})

_ID = re.compile(r"[0-9]{1,20}")


def sign(secret: str, body: bytes) -> str:
    """``X-WC-Webhook-Signature`` for `body`: base64(HMAC-SHA256(secret, body))."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, now: datetime | None = None) -> bool:
    """True only if ``X-WC-Webhook-Signature`` matches `body` under `secret`. Never raises.

    `now` is unused: WooCommerce signs no timestamp, so there is no replay window to check.
    """
    try:
        given = header(headers, SIGNATURE_HEADER)
        if not given or not secret:
            return False
        return hmac.compare_digest(sign(secret, body).encode(), given.strip().encode())
    except Exception:  # noqa: BLE001 - a malformed header is a failed check, never a crash
        return False


def _order_id(value: Any, what: str) -> str:
    if positive_int(value) is not None:
        return str(value)
    if isinstance(value, str) and _ID.fullmatch(value) and int(value) > 0:
        return value
    raise PayloadError(f"{what} {value!r} is not a positive whole number")


def _gmt(order: Mapping[str, Any], name: str) -> datetime:
    value = order.get(name)
    if not isinstance(value, str):
        raise PayloadError(f"order has no {name} (UTC timestamp); got {value!r}")
    # *_gmt is UTC by definition; WooCommerce just leaves the offset out.
    return parse_iso(value, name, assume_utc=True)


def _master_sku(connection: Connection, line: Mapping[str, Any], line_id: str) -> str:
    variation = positive_int(line.get("variation_id"))
    product = positive_int(line.get("product_id"))
    listing = variation if variation is not None else product
    seller_sku = line.get("sku")
    return master_sku(
        connection,
        str(listing) if listing is not None else None,
        seller_sku,
        what=f"line {line_id}: product {line.get('product_id')!r} / variation {line.get('variation_id')!r} / "
        f"sku {seller_sku!r}",
    )


def normalise(
    connection: Connection, body: bytes, headers: Mapping[str, str], received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """Canonical events for one verified webhook; raises PayloadError (only) if it cannot be understood."""
    topic = header(headers, TOPIC_HEADER)
    if topic not in HANDLED_TOPICS:
        raise PayloadError(
            f"webhook topic {topic!r} is not handled (only {', '.join(HANDLED_TOPICS)}); "
            "remove that webhook from the store or point it elsewhere"
        )
    return order_events(connection, load_object(body, "a WooCommerce order"), received_at)


def order_events(
    connection: Connection, order: Any, received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """The events of one REST v3 order, by its status (see the module docstring): the webhooks and the
    order-list backfill both come through here, so their event ids are the same. PayloadError if unusable."""
    if not isinstance(order, dict):
        raise PayloadError(f"not a WooCommerce order object but {type(order).__name__}")
    order_id = _order_id(order.get("id"), "order id")
    status = order.get("status")
    if not isinstance(status, str) or not status:
        raise PayloadError(f"order {order_id}: status {status!r} is not a WooCommerce order status")
    lines = order.get("line_items")
    if not isinstance(lines, list):
        raise PayloadError(f"order {order_id} has no 'line_items' list")
    if status in NOT_AN_ORDER_STATUSES:
        return []
    restock = status in RESTOCK_STATUSES
    occurred_at = _gmt(order, "date_modified_gmt" if restock else "date_created_gmt")
    collected = Lines()
    for line in lines:
        if not isinstance(line, dict):
            raise PayloadError(f"order {order_id}: a line item is not an object")
        line_id = _order_id(line.get("id"), "line item id")
        with collected.collect():
            quantity = positive_quantity(line.get("quantity"), f"order {order_id} line {line_id}")
            sku = _master_sku(connection, line, line_id)
            collected.events.append(
                line_event(
                    connection,
                    channel="woocommerce",
                    order_id=order_id,
                    line_id=line_id,
                    sku=sku,
                    quantity=quantity,
                    occurred_at=occurred_at,
                    received_at=received_at,
                    cancelled=restock,
                    where=f"order {order_id} line {line_id}",
                )
            )
    if not collected:
        raise PayloadError(f"order {order_id} has no line items")
    return collected.result()


_PING = re.compile(rb"webhook_id=\d{1,20}")


def is_ping(body: bytes, headers: Mapping[str, str]) -> bool:
    """WooCommerce's unsigned creation ping (form body ``webhook_id=N``, no topic header): it must get a 200,
    or the seller cannot save the webhook. It carries nothing, so nothing is published for it."""
    return header(headers, "X-WC-Webhook-Topic") is None and _PING.fullmatch(body.strip()) is not None
