"""Shopify webhooks: signature check and normalisation of ``orders/create`` into one event per line.

Signature: ``X-Shopify-Hmac-SHA256`` is base64(HMAC-SHA256(app secret, raw body)), compared in constant
time. Event ids are ``<connection>:order:<order id>:line:<line item id>``: stable across Shopify's retries
(up to 8 over 4 h) and equal to what the reconciler derives from the order-list API (``order_events`` serves
both).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from channels.connection import Connection
from channels.errors import PayloadError
from channels.payload import line_event, load_json, positive_quantity, unmapped
from schemas.inventory_events import OrderCancelled, OrderPlaced

SIGNATURE_HEADER = "X-Shopify-Hmac-SHA256"
TOPIC_HEADER = "X-Shopify-Topic"


def sign(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """True only if the signature header is present and matches the body."""
    given = headers.get(SIGNATURE_HEADER)
    if not given:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), given.strip().encode())


def _parse_time(value: Any, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise PayloadError(f"{what} {value!r} is not an ISO-8601 timestamp") from exc
    if parsed.tzinfo is None:
        raise PayloadError(f"{what} {value!r} has no UTC offset")
    return parsed


def normalise(
    connection: Connection, body: bytes, headers: Mapping[str, str], received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """Canonical events for one verified webhook; raises PayloadError if it cannot be understood."""
    topic = headers.get(TOPIC_HEADER, "")
    if topic != "orders/create":
        raise PayloadError(f"webhook topic {topic!r} is not handled yet (only orders/create)")
    return order_events(connection, load_json(body), received_at)


def order_events(
    connection: Connection, order: Any, received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """One OrderPlaced per line of a Shopify order in the REST/webhook shape (numeric ``id``, ``created_at``,
    ``line_items`` with ``id``, ``variant_id``, ``sku``, ``quantity``): the webhook and the order-list
    backfill both come through here, so their event ids are the same. PayloadError if it is unusable."""
    if not isinstance(order, dict) or "id" not in order or not isinstance(order.get("line_items"), list):
        raise PayloadError("body is not a Shopify order: it needs an 'id' and a 'line_items' list")
    occurred_at = _parse_time(order.get("created_at"), "created_at")
    events: list[OrderPlaced | OrderCancelled] = []
    for line in order["line_items"]:
        if not isinstance(line, dict) or "id" not in line:
            raise PayloadError("a line item has no 'id'")
        quantity = positive_quantity(line.get("quantity"), f"line {line['id']}")
        variant = line.get("variant_id")
        sku = connection.sku_for_listing(str(variant)) if variant is not None else None
        seller_sku = line.get("sku")
        if sku is None and isinstance(seller_sku, str) and seller_sku in connection.listings:
            sku = seller_sku
        if sku is None:
            raise unmapped(connection, f"line {line['id']}: variant {variant!r} / sku {line.get('sku')!r}")
        events.append(
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
    if not events:
        raise PayloadError("order has no line items")
    return events
