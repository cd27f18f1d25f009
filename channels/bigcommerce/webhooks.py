"""BigCommerce order webhooks: header-secret check, line expansion, one event per order product line.

Authentication is the custom header set at subscription (SECRET_HEADER, see channels.bigcommerce), compared
in constant time with the connection's webhook secret. BigCommerce signs nothing and sends no timestamp
header, so there is no replay window; ``now`` is accepted only so every channel's verify has one shape.

Payloads are thin: ``expand`` fetches the order's product lines (v2 order products) and returns the
webhook with them under ``"products"``; ``normalise`` needs that for ``store/order/created`` (OrderPlaced
per line) and for ``store/order/statusUpdated`` to Refunded or Cancelled (OrderCancelled per line). Other
order scopes and status changes do not move stock and yield no events. Ids come from the order and line ids,
so BigCommerce's duplicate deliveries (same ``hash``) repeat the same ids and are absorbed downstream.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import aiohttp

from channels.bigcommerce import CANCELLED_STATUS_IDS, CHANNEL, api
from channels.connection import Connection
from channels.errors import ChannelError, PayloadError
from channels.payload import (
    Lines,
    epoch_seconds,
    line_event,
    load_object,
    master_sku,
    positive_quantity,
    token_id,
)
from schemas.inventory_events import OrderCancelled, OrderPlaced

SECRET_HEADER = "X-Webhook-Secret"  # noqa: S105 - a header name; set it on the subscription
AUTH_HEADERS: tuple[str, ...] = (
    SECRET_HEADER,
)  # what verify reads: the gateway refuses a request with two of one
CREATED = "store/order/created"
STATUS_UPDATED = "store/order/statusUpdated"
# order scopes that never change stock by themselves: accepted, no events
NO_STOCK_EFFECT = frozenset(
    {
        "store/order/updated",
        "store/order/archived",
        "store/order/message/created",
        "store/order/refund/created",
        "store/order/transaction/created",
    }
)
PAGE_SIZE = 250  # v2 order products: largest page


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, now: datetime | None = None) -> bool:
    """True only if the subscription's secret header is present and equals the secret; never raises."""
    given = headers.get(SECRET_HEADER)
    if not secret or not given:
        return False
    return hmac.compare_digest(given.encode(), secret.encode())


def _object(body: bytes) -> dict[str, Any]:
    return load_object(body, "a BigCommerce webhook")


def _effect(hook: dict[str, Any]) -> tuple[str, str | None]:
    """(order id, "placed" | "cancelled" | None for no stock effect); PayloadError for what is not handled."""
    scope = hook.get("scope")
    data = hook.get("data")
    if not isinstance(scope, str) or (
        scope not in (CREATED, STATUS_UPDATED) and scope not in NO_STOCK_EFFECT
    ):
        raise PayloadError(
            f"webhook scope {scope!r} is not handled (order scopes only); remove it from the subscription "
            "or extend channels.bigcommerce.webhooks"
        )
    if not isinstance(data, dict) or data.get("type") != "order":
        raise PayloadError(f"{scope}: 'data' is not an order reference ({{'type': 'order', 'id': ...}})")
    order_id = token_id(data.get("id"), "data.id")
    if scope == CREATED:
        return order_id, "placed"
    if scope == STATUS_UPDATED:
        status = data.get("status")
        new = status.get("new_status_id") if isinstance(status, dict) else None
        if isinstance(new, bool) or not isinstance(new, int):
            raise PayloadError(
                f"{scope} for order {order_id}: data.status.new_status_id {new!r} is not a number"
            )
        return order_id, "cancelled" if new in CANCELLED_STATUS_IDS else None
    return order_id, None


def _master_sku(connection: Connection, line: dict[str, Any], line_id: str) -> str:
    variant = line.get("variant_id")
    return master_sku(
        connection,
        str(variant) if variant is not None else None,
        line.get("sku"),
        what=f"line {line_id}: variant {variant!r} / sku {line.get('sku')!r}",
        hint="add it to that connection's listings (listing_id = variant id)",
    )


def normalise(
    connection: Connection, body: bytes, headers: Mapping[str, str], received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """Canonical events for one verified, expanded webhook; PayloadError if it cannot be understood."""
    hook = _object(body)
    order_id, effect = _effect(hook)
    if effect is None:
        return []
    occurred_at = epoch_seconds(hook.get("created_at"), "created_at")
    lines = hook.get("products")
    if lines is None:
        raise PayloadError(
            f"thin webhook for order {order_id}: run channels.bigcommerce.webhooks.expand first"
        )
    return line_events(
        connection,
        order_id,
        lines,
        cancelled=effect == "cancelled",
        occurred_at=occurred_at,
        received_at=received_at,
    )


def line_events(
    connection: Connection,
    order_id: str,
    lines: Any,
    *,
    cancelled: bool,
    occurred_at: datetime,
    received_at: datetime,
) -> list[OrderPlaced | OrderCancelled]:
    """One OrderPlaced (or, if `cancelled`, OrderCancelled) per v2 order product line of order `order_id`:
    the webhooks and the order-list backfill both come through here, so their event ids are the same."""
    if not isinstance(lines, list) or not lines:
        raise PayloadError(f"order {order_id} has no product lines")
    collected = Lines()
    seen: set[str] = set()
    for line in lines:
        if not isinstance(line, dict):
            raise PayloadError(f"order {order_id}: a product line is not an object")
        line_id = token_id(line.get("id"), "product line id")
        if line_id in seen:
            raise PayloadError(f"order {order_id}: product line {line_id} appears twice")
        seen.add(line_id)
        if "order_id" in line and str(line["order_id"]) != order_id:
            raise PayloadError(f"line {line_id} belongs to order {line['order_id']!r}, not {order_id}")
        with collected.collect():
            quantity = positive_quantity(line.get("quantity"), f"order {order_id} line {line_id}")
            sku = _master_sku(connection, line, line_id)
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


async def expand(
    session: aiohttp.ClientSession, connection: Connection, body: bytes, headers: Mapping[str, str]
) -> bytes:
    """The webhook with the order's product lines attached when they matter; unchanged otherwise.

    A body it cannot read is returned unchanged, for normalise to refuse with the reason (so the gateway
    quarantines it). Raises ChannelError if BigCommerce fails.
    """
    try:
        hook = _object(body)
        order_id, effect = _effect(hook)
    except PayloadError:
        return body
    if effect is None or "products" in hook:
        return body
    lines = await fetch_products(session, connection, order_id)
    return json.dumps({**hook, "products": lines}).encode()


async def fetch_products(
    session: aiohttp.ClientSession,
    connection: Connection,
    order_id: str,
    *,
    before_call: Callable[[], Awaitable[object]] | None = None,
) -> list[Any]:
    """Every v2 product line of order `order_id`, PAGE_SIZE a call; `before_call` is awaited before each
    call (the backfill charges its budget there). Raises ChannelError if BigCommerce fails."""
    lines: list[Any] = []
    page = 1
    while True:
        if before_call is not None:
            await before_call()
        _, reply = await api.call(
            session,
            connection,
            "GET",
            f"/v2/orders/{order_id}/products",
            params={"page": str(page), "limit": str(PAGE_SIZE)},
        )
        if reply is None:  # v2 answers an empty page with 204
            break
        if not isinstance(reply, list):
            raise ChannelError(
                f"bigcommerce answered the products of order {order_id} with a "
                f"{type(reply).__name__}, not a list",
                status=200,
                retryable=False,
            )
        lines += reply
        if len(reply) < PAGE_SIZE:
            break
        page += 1
    return lines
