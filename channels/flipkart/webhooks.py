"""Flipkart order notifications: signature check, cancellation expansion, one event per order item.

INVENTED: the signature verify() checks. Flipkart's published scheme (``X_Date`` + ``X_Authorization:
FKLOGIN base64(app_id:SHA-1(X_Date + receiver URL + method + app secret))``, see verify_fklogin) covers
neither the body nor anything verify() is given besides headers: it needs the receiver URL and app id, and
a captured header authenticates any body for as long as the date is accepted. verify() therefore checks a
documented-looking body signature instead, which Flipkart does NOT send today:

    X-Flipkart-Timestamp: <Unix seconds>
    X-Flipkart-Signature: lowercase hex HMAC-SHA256(webhook secret, "<timestamp>." + raw body)

with a 5-minute replay window. To accept real Flipkart deliveries, the gateway must call verify_fklogin
with the connection's app id, the public receiver URL and the method (a change outside this package).
Note that ``X_Date``/``X_Authorization`` contain underscores, which nginx drops unless
``underscores_in_headers on``.

REAL (Order Management Notification reference): ``shipment_created`` lists full ``attributes.orderItems``
-> OrderPlaced per item; ``shipment_cancelled`` lists only ``orderItemId``/``quantity`` -> ``expand``
attaches the shipment (``GET /v3/shipments?shipmentIds=``) under ``"shipment"`` and normalise yields
OrderCancelled per item for the cancelled quantity. ``shipment_events`` turns a shipment into events for
both the ``shipment_created`` path and the order list (channels.flipkart.orders), so their ids agree. Other
shipment and return notifications are accepted with no events (their exact type names are our reading of the
docs, not verified). A second partial cancellation of the same order item repeats the first one's id and
is absorbed as a duplicate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, PayloadError
from channels.flipkart import CHANNEL, api
from channels.payload import (
    Lines,
    iso_time,
    line_event,
    load_object,
    master_sku,
    positive_quantity,
    token_id,
)
from schemas.inventory_events import OrderCancelled, OrderPlaced

TIMESTAMP_HEADER = "X-Flipkart-Timestamp"  # invented, see the module docstring
SIGNATURE_HEADER = "X-Flipkart-Signature"  # invented
FK_DATE_HEADER = "X_Date"  # published
FK_AUTH_HEADER = "X_Authorization"  # published
# what verify reads: the gateway refuses a request with two of one (verify_fklogin is not wired, see above)
AUTH_HEADERS: tuple[str, ...] = (SIGNATURE_HEADER, TIMESTAMP_HEADER)
TOLERANCE = timedelta(minutes=5)
SHIPMENT_CREATED = "shipment_created"
SHIPMENT_CANCELLED = "shipment_cancelled"
CANCELLED = "CANCELLED"  # an order item's status once cancelled
NO_STOCK_EFFECT = frozenset(
    {
        "shipment_hold",
        "shipment_unhold",
        "shipment_packed",
        "shipment_ready_to_dispatch",
        "shipment_pickup_complete",
        "shipment_shipped",
        "shipment_delivered",
        "shipment_dispatch_dates_changed",
        "shipment_form_failed",
        "return_created",
        "return_tracking_id_update",
        "return_expected_date_changed",
        "return_picked_up",
        "return_completed",
        "return_cancelled",
    }
)
_SECONDS = re.compile(r"[0-9]{1,12}", re.ASCII)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The (invented) X-Flipkart-Signature: hex HMAC-SHA256(secret, timestamp + "." + body)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, now: datetime | None = None) -> bool:
    """True only if the body signature matches, timestamped within 5 minutes of `now`; never raises."""
    stamp = headers.get(TIMESTAMP_HEADER) or ""
    given = headers.get(SIGNATURE_HEADER)
    if not secret or not given or not _SECONDS.fullmatch(stamp):
        return False
    now = now or datetime.now(UTC)
    if abs(now.timestamp() - int(stamp)) > TOLERANCE.total_seconds():
        return False
    return hmac.compare_digest(sign(secret, stamp, body).encode(), given.strip().lower().encode())


def fklogin_signature(app_secret: str, date: str, url: str, method: str) -> str:
    """Flipkart's published notification signature: hex SHA-1 of X_Date + receiver URL + method + secret."""
    digest = hashlib.sha1((date + url + method + app_secret).encode())  # noqa: S324 - Flipkart's choice, not ours
    return digest.hexdigest()


def fklogin_header(app_id: str, app_secret: str, date: str, url: str, method: str) -> str:
    """The ``X_Authorization`` value Flipkart sends for one notification."""
    credentials = f"{app_id}:{fklogin_signature(app_secret, date, url, method)}"
    return "FKLOGIN " + base64.b64encode(credentials.encode()).decode()


def verify_fklogin(
    app_id: str,
    app_secret: str,
    url: str,
    method: str,
    headers: Mapping[str, str],
    *,
    now: datetime | None = None,
) -> bool:
    """Flipkart's published check (X_Date within 5 minutes, X_Authorization matching); never raises.

    It authenticates the sender and the date, not the body: pair it with idempotent processing.
    """
    date, auth = headers.get(FK_DATE_HEADER), headers.get(FK_AUTH_HEADER)
    if not app_id or not app_secret or not date or not auth or not auth.startswith("FKLOGIN "):
        return False
    try:
        sent = parsedate_to_datetime(date)
        decoded = base64.b64decode(auth.removeprefix("FKLOGIN ").strip(), validate=True)
    except (TypeError, ValueError, IndexError, OverflowError, binascii.Error):
        return False
    current = now or datetime.now(UTC)
    if sent.tzinfo is None or current.tzinfo is None or abs(current - sent) > TOLERANCE:
        return False
    expected = f"{app_id}:{fklogin_signature(app_secret, date, url, method)}"
    return hmac.compare_digest(decoded, expected.encode())


def _object(body: bytes) -> dict[str, Any]:
    return load_object(body, "a Flipkart notification")


def _master_sku(connection: Connection, item: dict[str, Any], line_id: str) -> str:
    seller_sku = item.get("sku")
    return master_sku(
        connection,
        seller_sku if isinstance(seller_sku, str) else None,
        seller_sku,
        what=f"order item {line_id}: sku {seller_sku!r} (listing {item.get('listingId')!r})",
        hint="add it to that connection's listings (listing_id = seller SKU id)",
    )


def _items(container: Any, what: str) -> list[dict[str, Any]]:
    items = container.get("orderItems") if isinstance(container, dict) else None
    if not isinstance(items, list) or not items:
        raise PayloadError(f"{what} has no orderItems")
    if not all(isinstance(item, dict) for item in items):
        raise PayloadError(f"{what}: an order item is not an object")
    return items


def _event_type(note: dict[str, Any]) -> str:
    event = note.get("eventType")
    if not isinstance(event, str) or (
        event not in (SHIPMENT_CREATED, SHIPMENT_CANCELLED) and event not in NO_STOCK_EFFECT
    ):
        raise PayloadError(
            f"eventType {event!r} is not handled; ask Flipkart to stop sending it or extend "
            "channels.flipkart.webhooks"
        )
    return event


def _item_event(
    connection: Connection,
    item: dict[str, Any],
    received_at: datetime,
    *,
    quantity: Any,
    when: Any,
    what_time: str,
    cancelled: bool,
) -> OrderPlaced | OrderCancelled:
    """The OrderPlaced (or OrderCancelled) of one full order item, for `quantity` units at `when`."""
    line_id = token_id(item.get("orderItemId"), "orderItemId")
    order_id = token_id(item.get("orderId"), f"order item {line_id}: orderId")
    sku = _master_sku(connection, item, line_id)
    units = positive_quantity(quantity, f"order item {line_id}")
    return line_event(
        connection,
        channel=CHANNEL,
        order_id=order_id,
        line_id=line_id,
        sku=sku,
        quantity=units,
        occurred_at=iso_time(when, what_time),
        received_at=received_at,
        cancelled=cancelled,
        where=f"order item {line_id}",
    )


def shipment_events(
    connection: Connection,
    shipment: Any,
    received_at: datetime,
    *,
    placed_at: Any = None,
    cancellations: bool = True,
    what: str = "shipment",
) -> list[OrderPlaced | OrderCancelled]:
    """The one place a Flipkart shipment becomes events: the shape of Search Shipments, Get Shipments and a
    ``shipment_created`` notification's attributes.

    OrderPlaced per order item, at its ``orderDate`` (else `placed_at`); then, with `cancellations`, for each
    item whose ``status`` is CANCELLED the OrderCancelled of its whole quantity at its ``cancellationDate``
    (else the shipment's ``updatedAt``), with the id ``shipment_cancelled`` gives it. Every other status
    (packed, shipped, delivered, returned, ...) leaves the sale alone, as those notifications do.
    PayloadError if the shipment cannot be used; LinesRefused (with the other items' events) if some items
    make no valid event.
    """
    items = _items(shipment, what)
    lines = Lines()
    seen: set[str] = set()
    for item in items:
        line_id = token_id(item.get("orderItemId"), "orderItemId")
        if line_id in seen:
            raise PayloadError(f"order item {line_id} appears twice")
        seen.add(line_id)
        with lines.collect():
            lines.events.append(
                _item_event(
                    connection,
                    item,
                    received_at,
                    quantity=item.get("quantity"),
                    when=item.get("orderDate") or placed_at,
                    what_time=f"order item {line_id}: orderDate",
                    cancelled=False,
                )
            )
    if not cancellations:
        return lines.result()
    for item in items:
        if item.get("status") != CANCELLED:
            continue
        line_id = token_id(item.get("orderItemId"), "orderItemId")
        updated = shipment.get("updatedAt") if isinstance(shipment, dict) else None
        with lines.collect():
            lines.events.append(
                _item_event(
                    connection,
                    item,
                    received_at,
                    quantity=item.get("quantity"),
                    when=item.get("cancellationDate") or updated,
                    what_time=f"order item {line_id}: cancellationDate",
                    cancelled=True,
                )
            )
    return lines.result()


def normalise(
    connection: Connection, body: bytes, headers: Mapping[str, str], received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """Canonical events for one verified (and, for cancellations, expanded) notification."""
    note = _object(body)
    event = _event_type(note)
    if event in NO_STOCK_EFFECT:
        return []
    if event == SHIPMENT_CREATED:
        return shipment_events(
            connection,
            note.get("attributes"),
            received_at,
            placed_at=note.get("timestamp"),
            cancellations=False,
            what=f"{event} attributes",
        )
    shipment_id = token_id(note.get("shipmentId"), "shipmentId")
    shipment = note.get("shipment")
    if shipment is None:
        raise PayloadError(
            f"thin shipment_cancelled for shipment {shipment_id}: run channels.flipkart.webhooks.expand first"
        )
    if isinstance(shipment, dict) and shipment.get("shipmentId") != shipment_id:
        raise PayloadError(f"attached shipment {shipment.get('shipmentId')!r} is not the notified one")
    known: dict[str, dict[str, Any]] = {}
    for item in _items(shipment, "attached shipment"):
        known[token_id(item.get("orderItemId"), "shipment orderItemId")] = item
    lines = Lines()
    seen: set[str] = set()
    for item in _items(note.get("attributes"), f"{event} attributes"):
        line_id = token_id(item.get("orderItemId"), "orderItemId")
        if line_id in seen:
            raise PayloadError(f"order item {line_id} appears twice")
        seen.add(line_id)
        full = known.get(line_id)
        if full is None:
            raise PayloadError(f"cancelled order item {line_id} is not in the attached shipment")
        with lines.collect():
            lines.events.append(
                _item_event(
                    connection,
                    full,
                    received_at,
                    quantity=item.get("quantity"),
                    when=note.get("timestamp"),
                    what_time="timestamp",
                    cancelled=True,
                )
            )
    return lines.result()


async def expand(
    session: aiohttp.ClientSession, connection: Connection, body: bytes, headers: Mapping[str, str]
) -> bytes:
    """A shipment_cancelled notification with its shipment attached; anything else unchanged.

    A body it cannot read is returned unchanged, for normalise to refuse with the reason (so the gateway
    quarantines it). Raises ChannelError if Flipkart fails.
    """
    try:
        note = _object(body)
        if _event_type(note) != SHIPMENT_CANCELLED or "shipment" in note:
            return body
        shipment_id = token_id(note.get("shipmentId"), "shipmentId")
    except PayloadError:
        return body
    reply = await api.call(
        session, connection, "GET", api.SHIPMENTS_PATH, params={"shipmentIds": shipment_id}
    )
    shipments = reply.get("shipments") if isinstance(reply, dict) else None
    candidates = shipments if isinstance(shipments, list) else []
    found = [s for s in candidates if isinstance(s, dict) and s.get("shipmentId") == shipment_id]
    if not found:
        raise ChannelError(
            f"flipkart returned no shipment {shipment_id} for a cancellation notification",
            status=200,
            retryable=False,
        )
    return json.dumps({**note, "shipment": found[0]}).encode()
