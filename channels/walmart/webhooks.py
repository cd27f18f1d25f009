"""Walmart event notifications: HMAC check and normalisation of order events into per-line events.

Signature: the ``Authorization`` header (our subscription's ``authHeaderName``) carries HMAC-SHA256(client
secret, raw body). Walmart documents what is signed and with which key, not the text encoding: we sign base64
and accept base64 or lowercase hex, each compared in constant time. No timestamp is signed, so there is no
replay window (``source.eventTime`` is when the event happened, kept on all 3 attempts, not a send time).

Events (envelope ``{"source": {eventType, eventTime, eventId}, "payload": {...}}``):

- ``PO_CREATED``: OrderPlaced per order line, ``occurred_at`` = ``payload.orderDate`` (else ``eventTime``);
- ``PO_LINE_AUTOCANCELLED``: OrderCancelled per cancelled line, ``occurred_at`` = ``eventTime``;
- ``INTENT_TO_CANCEL``: nothing: the buyer only asked, and the seller decides;
- ``ORDER_UPDATES`` (the newer envelope): routed by ``payload.subEventType`` (or
  ``payload.meta.subEventType``) with the order in ``payload.order``; ``FRAUD_CANCEL`` is a cancellation.
  This shape is read from Walmart's prose, without a published sample: treat it as our best reading.

Lines: ``lineNumber``, seller ``sku`` and ``quantity.measurementValue`` (a numeric string) as the events
document them; the Orders API shape (``item.sku``, ``orderLineQuantity.amount``) is accepted too. In a
cancellation event, lines whose ``status`` is not Cancelled are other lines of the same PO and are skipped.
If the connection's ``options.partner_id`` is set, ``payload.partnerId`` must match it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime
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
    require_object,
)
from schemas.inventory_events import OrderCancelled, OrderPlaced

AUTH_HEADER = "Authorization"
AUTH_HEADERS: tuple[str, ...] = (
    AUTH_HEADER,
)  # what verify reads: the gateway refuses a request with two of one

SALE_EVENTS = frozenset({"PO_CREATED"})
CANCEL_EVENTS = frozenset({"PO_LINE_AUTOCANCELLED", "FRAUD_CANCEL"})
IGNORED_EVENTS = frozenset({"INTENT_TO_CANCEL"})
ENVELOPE_EVENT = "ORDER_UPDATES"

_CANCELLED = frozenset({"CANCELLED", "CANCELED"})
_ORDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_COUNT = re.compile(r"[0-9]{1,19}")


def sign(secret: str, body: bytes) -> str:
    """The ``Authorization`` value Walmart sends: base64(HMAC-SHA256(client secret, body))."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, now: datetime | None = None) -> bool:
    """True only if the ``Authorization`` header is the body's HMAC under `secret`. Never raises.

    `now` is unused: Walmart signs no timestamp, so there is no replay window to check.
    """
    try:
        given = header(headers, AUTH_HEADER)
        if not given or not secret:
            return False
        digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        presented = given.strip().encode()
        as_base64 = hmac.compare_digest(base64.b64encode(digest), presented)
        as_hex = hmac.compare_digest(digest.hex().encode(), presented.lower())
    except Exception:  # noqa: BLE001 - a malformed header is a failed check, never a crash
        return False
    return as_base64 or as_hex


def _text_id(value: Any, what: str) -> str:
    if positive_int(value) is not None:
        return str(value)
    if isinstance(value, str) and _ORDER_ID.fullmatch(value):
        return value
    raise PayloadError(f"{what} {value!r} is not a Walmart id")


def _count(value: Any) -> int | None:
    """A positive whole number, given as a JSON integer or a numeric string ("2")."""
    if isinstance(value, str) and _COUNT.fullmatch(value.strip()):
        return positive_int(int(value.strip()))
    return positive_int(value)


def _time(value: Any, what: str) -> datetime:
    if isinstance(value, int) and not isinstance(value, bool):
        try:  # the Orders API writes epoch milliseconds
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise PayloadError(f"{what} {value!r} is not a usable epoch-milliseconds time") from exc
    if not isinstance(value, str):
        raise PayloadError(f"{what} is missing or not a timestamp: {value!r}")
    return parse_iso(value, what)


def _line_sku(line: Mapping[str, Any]) -> Any:
    item = line.get("item")
    return line.get("sku", item.get("sku") if isinstance(item, dict) else None)


def _line_quantity(line: Mapping[str, Any]) -> Any:
    for holder, key in (("quantity", "measurementValue"), ("orderLineQuantity", "amount")):
        box = line.get(holder)
        if isinstance(box, dict) and key in box:
            return box[key]
    return line.get("quantity")


def _is_cancelled(line: Mapping[str, Any]) -> bool:
    """Whether a line of a cancellation is cancelled: by its Orders API statuses if it has them, else by
    its ``status``; without either the event itself says the line is cancelled."""
    if _statuses(line) is not None:
        return _line_cancelled(line)
    status = line.get("status")
    return not isinstance(status, str) or status.strip().upper() in _CANCELLED


def _route(event: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(concrete event type, payload, order object) of a notification."""
    source = require_object(event.get("source"), "'source'")
    kind = source.get("eventType")
    payload = require_object(event.get("payload"), "'payload'")
    if kind != ENVELOPE_EVENT:
        return str(kind), payload, payload
    meta = payload.get("meta")
    sub = payload.get("subEventType")
    if sub is None and isinstance(meta, dict):
        sub = meta.get("subEventType")
    order = payload.get("order", payload)
    return str(sub), payload, require_object(order, "'payload.order'")


def normalise(
    connection: Connection, body: bytes, headers: Mapping[str, str], received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """Canonical events for one verified notification; raises PayloadError (only) if it is not usable."""
    event = load_object(body, "a Walmart notification")
    kind, payload, order = _route(event)
    if kind in IGNORED_EVENTS:
        return []
    if kind not in SALE_EVENTS | CANCEL_EVENTS:
        raise PayloadError(
            f"event type {kind!r} is not handled (only PO_CREATED, PO_LINE_AUTOCANCELLED, INTENT_TO_CANCEL, "
            "ORDER_UPDATES); remove it from the Walmart subscription"
        )
    return order_events(
        connection,
        order,
        cancelled=kind in CANCEL_EVENTS,
        event_time=event["source"].get("eventTime"),
        received_at=received_at,
        partner=payload.get("partnerId"),
    )


def listed_order_events(
    connection: Connection, order: Any, received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """Events for one purchase order as the Orders API (``GET /v3/orders``) lists it: a sale per line, as
    ``PO_CREATED`` makes them, then a cancellation per cancelled line, as ``PO_LINE_AUTOCANCELLED`` makes
    them (same event ids), dated by the latest cancelled line's ``statusDate``. PayloadError if unusable;
    LinesRefused (with the other lines' events) if some lines make no valid event."""
    order = require_object(order, "the purchase order")
    # The Orders API answers for the connection's own seller account: its partner is the connection's.
    partner = connection.options.get("partner_id")
    lines = Lines()
    with lines.collect():
        lines.events += order_events(
            connection, order, cancelled=False, event_time=None, received_at=received_at, partner=partner
        )
    cancelled = [line for line in _lines(order, str(order.get("purchaseOrderId"))) if _line_cancelled(line)]
    if cancelled:
        dates = [_time(line["statusDate"], "statusDate") for line in cancelled if "statusDate" in line]
        when = max(dates) if dates else _time(order.get("orderDate"), "orderDate")
        with lines.collect():
            lines.events += order_events(
                connection, order, cancelled=True, event_time=when, received_at=received_at, partner=partner
            )
    return lines.result()


def order_time(order: Mapping[str, Any]) -> datetime | None:
    """When a listed purchase order last changed as far as its JSON shows: the latest of ``orderDate`` and
    its lines' ``statusDate``; None if none of them is readable."""
    candidates: list[Any] = [order.get("orderDate")]
    with contextlib.suppress(PayloadError):
        candidates += [line.get("statusDate") for line in _lines(order, "") if isinstance(line, dict)]
    stamps: list[datetime] = []
    for value in candidates:
        try:
            stamps.append(_time(value, "time"))
        except PayloadError:
            continue
    return max(stamps) if stamps else None


def _lines(order: Mapping[str, Any], order_id: str) -> list[Any]:
    lines = order.get("orderLines")
    if isinstance(lines, dict):  # the Orders API nests them: orderLines.orderLine
        lines = lines.get("orderLine")
    if not isinstance(lines, list):
        raise PayloadError(f"purchase order {order_id} has no 'orderLines' list")
    return lines


def _statuses(line: Mapping[str, Any]) -> list[Any] | None:
    """A listed line's ``orderLineStatuses.orderLineStatus`` entries, None if it has none."""
    statuses = line.get("orderLineStatuses")
    if isinstance(statuses, dict):
        statuses = statuses.get("orderLineStatus")
    return statuses if isinstance(statuses, list) else None


def _line_cancelled(line: Any) -> bool:
    """True if a listed line (Orders API ``orderLineStatuses``, or an event's ``status``) is cancelled."""
    if not isinstance(line, dict):
        return False
    statuses = _statuses(line)
    if statuses is not None:
        return any(
            isinstance(s, dict) and str(s.get("status", "")).strip().upper() in _CANCELLED for s in statuses
        )
    status = line.get("status")
    return isinstance(status, str) and status.strip().upper() in _CANCELLED


def _cancelled_quantity(line: Mapping[str, Any]) -> Any:
    """The cancelled units of a listed line (its Cancelled ``statusQuantity``), else the line's quantity."""
    for s in _statuses(line) or []:
        if isinstance(s, dict) and str(s.get("status", "")).strip().upper() in _CANCELLED:
            amount = s.get("statusQuantity")
            if isinstance(amount, dict) and "amount" in amount:
                return amount["amount"]
    return _line_quantity(line)


def order_events(
    connection: Connection,
    order: dict[str, Any],
    *,
    cancelled: bool,
    event_time: Any,
    received_at: datetime,
    partner: Any = None,
) -> list[OrderPlaced | OrderCancelled]:
    """The one place a purchase order (event payload or Orders API element) becomes events: a sale per line,
    or with `cancelled` a cancellation per cancelled line. `event_time` dates cancellations and sales
    without an ``orderDate``; `partner` is the envelope's ``partnerId`` when the order has none."""
    expected_partner = connection.options.get("partner_id")
    partner = order.get("partnerId", partner)
    if expected_partner is not None and str(partner) != expected_partner:
        raise PayloadError(
            f"partnerId {partner!r} is not connection {connection.id!r}'s partner "
            f"{expected_partner!r}: the subscription's secret is shared with another seller account"
        )
    order_id = _text_id(order.get("purchaseOrderId"), "purchaseOrderId")
    lines = _lines(order, order_id)
    restock = cancelled
    if restock:
        occurred_at = (
            event_time if isinstance(event_time, datetime) else _time(event_time, "source.eventTime")
        )
    else:
        order_date = order.get("orderDate")
        occurred_at = _time(order_date if order_date is not None else event_time, "orderDate")
    collected = Lines()
    for line in lines:
        if not isinstance(line, dict):
            raise PayloadError(f"purchase order {order_id}: an order line is not an object")
        line_id = _text_id(line.get("lineNumber"), "lineNumber")
        if restock and not _is_cancelled(line):
            continue
        where = f"purchase order {order_id} line {line_id}"
        with collected.collect():
            raw_quantity = _cancelled_quantity(line) if restock else _line_quantity(line)
            counted = _count(raw_quantity)
            quantity = positive_quantity(raw_quantity if counted is None else counted, where)
            seller_sku = _line_sku(line)
            sku = master_sku(
                connection,
                seller_sku if isinstance(seller_sku, str) else None,
                seller_sku,
                what=f"{where}: Walmart sku {seller_sku!r}",
            )
            collected.events.append(
                line_event(
                    connection,
                    channel="walmart",
                    order_id=order_id,
                    line_id=line_id,
                    sku=sku,
                    quantity=quantity,
                    occurred_at=occurred_at,
                    received_at=received_at,
                    cancelled=restock,
                    where=where,
                )
            )
    if not collected:
        what = "cancelled lines" if restock else "order lines"
        raise PayloadError(f"purchase order {order_id} has no {what}")
    return collected.result()
