"""Etsy webhooks: Standard Webhooks signature check, receipt expansion and normalisation.

Signature (Standard Webhooks spec; Etsy's webhook portal): ``webhook-signature`` holds space-separated
``v1,<base64(HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.{raw body}"))>`` entries (several during
a secret rotation; any one valid entry suffices), ``key`` being the base64-decoded part of the ``whsec_``
secret.
``webhook-timestamp`` is the attempt time: more than REPLAY_WINDOW_S away from now is refused.

Etsy's payload is thin (``event_type``, ``resource_url`` of the receipt, ``shop_id``). ``expand`` fetches the
receipt (getShopReceipt) and returns the same object with the receipt under ``"receipt"`` (that key is ours);
``normalise`` needs that expanded body. One event per receipt transaction: ``order.paid`` gives OrderPlaced
(``<connection>:order:<receipt_id>:line:<transaction_id>``, at the receipt's ``create_timestamp``);
``order.canceled`` gives OrderCancelled for every transaction (``<connection>:cancel:...``, at the receipt's
``update_timestamp``), as Etsy's cancelation covers the whole receipt. ``ORDER_PAID``/``ORDER_CANCELED``, the
spelling of Etsy's event list, are accepted too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, PayloadError, error_for_status
from channels.etsy import API_PATH, CHANNEL, REPLAY_WINDOW_S
from channels.etsy.client import api_headers
from channels.payload import (
    Lines,
    epoch_seconds,
    header,
    line_event,
    load_json,
    positive_int,
    positive_quantity,
    require_object,
    unmapped,
)
from schemas.inventory_events import OrderCancelled, OrderPlaced

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
# what verify reads (all three are signed or the signature): the gateway refuses a request with two of one
AUTH_HEADERS: tuple[str, ...] = (SIGNATURE_HEADER, ID_HEADER, TIMESTAMP_HEADER)
SECRET_PREFIX = "whsec_"  # noqa: S105 - the documented prefix, not a secret
PAID = frozenset({"order.paid", "ORDER_PAID"})
CANCELED = frozenset({"order.canceled", "ORDER_CANCELED"})
_RECEIPT_PATH = re.compile(rf"^{re.escape(API_PATH)}/shops/(\d+)/receipts/(\d+)/?$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_MAX_ID_LENGTH = 100


def signing_key(secret: str) -> bytes | None:
    """The HMAC key of a ``whsec_<base64>`` secret (prefix optional), or None if it is not one."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (one ``v1`` entry) Etsy sends for this delivery."""
    key = signing_key(secret)
    if key is None:
        raise ValueError("the Etsy signing secret must be 'whsec_' followed by base64")
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, now: datetime | None = None) -> bool:
    """True only if a ``v1`` signature matches and ``webhook-timestamp`` is within REPLAY_WINDOW_S of `now`
    (default: the current time). Never raises."""
    msg_id = header(headers, ID_HEADER, strings_only=True)
    stamp = header(headers, TIMESTAMP_HEADER, strings_only=True)
    signatures = header(headers, SIGNATURE_HEADER, strings_only=True)
    if not msg_id or not msg_id.isascii() or not stamp or not signatures or not isinstance(body, bytes):
        return False
    if not _TIMESTAMP.match(stamp):
        return False
    current = (now or datetime.now(UTC)).timestamp()
    if abs(current - int(stamp)) > REPLAY_WINDOW_S:
        return False
    key = signing_key(secret) if isinstance(secret, str) else None
    if key is None:
        return False
    expected = sign(secret, msg_id, int(stamp), body).encode()
    # Compare every entry (no early exit on a match's position) so timing reveals nothing useful.
    matched = False
    for entry in signatures.split():
        if entry.isascii() and entry.startswith("v1,"):
            matched |= hmac.compare_digest(entry.encode(), expected)
    return matched


def _parse(body: bytes) -> dict[str, Any]:
    return require_object(load_json(body), "the webhook body")


def _id(value: Any, what: str) -> str:
    """An Etsy numeric id as text (Etsy sends integers; digit strings are accepted)."""
    if positive_int(value) is not None:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= _MAX_ID_LENGTH:
        return value
    raise PayloadError(f"{what} {value!r} is not an Etsy id (a positive whole number)")


def _check_shop(connection: Connection, shop_id: Any) -> None:
    expected = connection.options.get("shop_id")
    if expected is not None and str(shop_id) != expected:
        raise PayloadError(
            f"webhook is for Etsy shop {shop_id!r} but connection {connection.id!r} is shop {expected!r}; "
            "check the endpoint's connection id or options.shop_id"
        )


async def expand(
    session: aiohttp.ClientSession, connection: Connection, body: bytes, headers: Mapping[str, str]
) -> bytes:
    """The webhook body with its receipt fetched from Etsy under ``"receipt"`` (unchanged if already there,
    or if its event type is not one normalise handles).

    The receipt URL is rebuilt from ``connection.api_base_url`` and the ids in ``resource_url``, never
    fetched from the payload's host. PayloadError if the body names no receipt of this shop; ChannelError
    if Etsy does not answer 2xx with a JSON object."""
    payload = _parse(body)
    if "receipt" in payload or not isinstance(payload.get("event_type"), str):
        return body
    if payload["event_type"] not in PAID | CANCELED:
        return body  # nothing to fetch for it: normalise says why it is not handled
    resource = payload.get("resource_url")
    try:
        match = _RECEIPT_PATH.match(urlparse(resource).path) if isinstance(resource, str) else None
    except ValueError:  # not a URL at all (e.g. an unclosed IPv6 bracket)
        match = None
    if match is None:
        raise PayloadError(
            f"resource_url {resource!r} is not an Etsy receipt URL ({API_PATH}/shops/<id>/receipts/<id>)"
        )
    shop_id, receipt_id = match.groups()
    _check_shop(connection, shop_id)
    url = f"{connection.api_base_url.rstrip('/')}{API_PATH}/shops/{shop_id}/receipts/{receipt_id}"
    async with session.get(url, headers=api_headers(connection)) as resp:
        text = await resp.text()
        status, retry_after = resp.status, resp.headers.get("retry-after")
    if not 200 <= status < 300:
        raise error_for_status(CHANNEL, status, text, retry_after)
    try:
        receipt = json.loads(text)
    except ValueError:
        receipt = None
    if not isinstance(receipt, dict):
        raise ChannelError(
            f"etsy answered HTTP {status} for receipt {receipt_id} with a body that is not a JSON object: "
            f"{text[:300]}",
            status=status,
            retryable=False,
        )
    return json.dumps({**payload, "receipt": receipt}).encode()


def _sku_for(connection: Connection, transaction: dict[str, Any], line_id: str) -> str:
    """Master SKU of a transaction: by listing id, told apart by the Etsy SKU when a listing has several
    mapped products; else the Etsy SKU itself if it is a master SKU of the connection."""
    listing_id, etsy_sku = transaction.get("listing_id"), transaction.get("sku")
    candidates: list[str] = []
    if isinstance(listing_id, (int, str)) and not isinstance(listing_id, bool):
        candidates = [sku for sku, lst in connection.listings.items() if lst.listing_id == str(listing_id)]
    if len(candidates) > 1:
        candidates = [
            sku for sku in candidates if (connection.listings[sku].inventory_ref or sku) == etsy_sku
        ]
    if len(candidates) == 1:
        return candidates[0]
    if isinstance(etsy_sku, str) and etsy_sku in connection.listings:
        return etsy_sku
    raise unmapped(
        connection,
        f"transaction {line_id}: listing {listing_id!r} / sku {etsy_sku!r}",
        "add it to that connection's listings (inventory_ref tells the products of one listing apart)",
    )


def normalise(
    connection: Connection, body: bytes, headers: Mapping[str, str], received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """Canonical events for one verified and expanded webhook; PayloadError if it cannot be used."""
    payload = _parse(body)
    event_type = payload.get("event_type")
    if not isinstance(event_type, str) or event_type not in PAID | CANCELED:
        raise PayloadError(f"event type {event_type!r} is not handled (only order.paid and order.canceled)")
    _check_shop(connection, payload.get("shop_id"))
    if "receipt" not in payload:
        raise PayloadError("the webhook carries no receipt: expand it first (channels.etsy.webhooks.expand)")
    return receipt_events(
        connection, payload["receipt"], cancel=event_type in CANCELED, received_at=received_at
    )


def receipt_events(
    connection: Connection, receipt: Any, *, cancel: bool, received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """One OrderPlaced (or, if `cancel`, OrderCancelled) per transaction of a ShopReceipt: the webhooks and
    the order-list backfill both come through here, so their event ids are the same."""
    receipt = require_object(receipt, "'receipt'")
    receipt_id = _id(receipt.get("receipt_id"), "receipt_id")
    stamp = "update_timestamp" if cancel else "create_timestamp"
    occurred_at = epoch_seconds(receipt.get(stamp), f"receipt {receipt_id} {stamp}")
    transactions = receipt.get("transactions")
    if not isinstance(transactions, list):
        raise PayloadError(f"receipt {receipt_id}: 'transactions' is missing or not a list")
    if not transactions:
        raise PayloadError(f"receipt {receipt_id} has no transactions")
    lines = Lines()
    for transaction in transactions:
        if not isinstance(transaction, dict):
            raise PayloadError(f"receipt {receipt_id}: a transaction is not a JSON object")
        line_id = _id(transaction.get("transaction_id"), "transaction_id")
        with lines.collect():
            quantity = positive_quantity(transaction.get("quantity"), f"transaction {line_id}")
            sku = _sku_for(connection, transaction, line_id)
            lines.events.append(
                line_event(
                    connection,
                    channel=CHANNEL,
                    order_id=receipt_id,
                    line_id=line_id,
                    sku=sku,
                    quantity=quantity,
                    occurred_at=occurred_at,
                    received_at=received_at,
                    cancelled=cancel,
                    where=f"transaction {line_id}",
                )
            )
    return lines.result()
