"""eBay Notification API webhooks: ECDSA signature check and normalisation of ``ORDER_CONFIRMATION``.

Signature (eBay's event-notification SDKs and Notification API docs): ``X-EBAY-SIGNATURE`` is base64 of
``{"alg": "ecdsa", "kid": <key id>, "signature": <base64 DER ECDSA>, "digest": "SHA1"}``; the signature is
over the notification body, checked here against the exact raw bytes received (never re-serialised JSON).
``webhook_secret`` holds the PEM public key that ``getPublicKey(kid)`` returns; eBay serves it with or without
line breaks, both are accepted. There is no signed timestamp, hence no replay window: ids are stable.

Payload: the envelope ``{"metadata": {"topic", "schemaVersion", "deprecated"}, "notification":
{"notificationId", "eventDate", "publishDate", "publishAttemptCount", "data"}}`` is documented. eBay documents
``ORDER_CONFIRMATION`` (sent per line item when checkout completes) but the fields of its ``data`` are not
published in full, so this module expects an invented, documented-looking shape named after the Fulfillment
API's Order type: ``data = {"orderId": str, "lineItems": [{"lineItemId", "legacyItemId", "sku",
"quantity"}]}`` (one or more lines). ``occurred_at`` is ``notification.eventDate``. eBay has no cancellation
topic in this API, so only sales are normalised.
Event ids: ``<connection>:order:<orderId>:line:<lineItemId>``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from channels.connection import Connection
from channels.ebay import CHANNEL
from channels.errors import PayloadError
from channels.payload import (
    Lines,
    header,
    iso_time,
    line_event,
    load_json,
    master_sku,
    positive_quantity,
    require_object,
)
from schemas.inventory_events import OrderCancelled, OrderPlaced

SIGNATURE_HEADER = "X-EBAY-SIGNATURE"
AUTH_HEADERS: tuple[str, ...] = (
    SIGNATURE_HEADER,
)  # what verify reads: the gateway refuses a request with two of one
ORDER_TOPIC = "ORDER_CONFIRMATION"
_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
_PEM_END = "-----END PUBLIC KEY-----"
_MAX_ID_LENGTH = 100


def _digest() -> hashes.HashAlgorithm:
    # eBay signs notifications with ECDSA over SHA-1 ("digest": "SHA1"); the choice is eBay's, not ours.
    return hashes.SHA1()  # noqa: S303


def sign(private_key: ec.EllipticCurvePrivateKey, body: bytes, *, kid: str) -> str:
    """The ``X-EBAY-SIGNATURE`` value eBay would send for `body` signed with `private_key` (key id `kid`)."""
    signature = private_key.sign(body, ec.ECDSA(_digest()))
    header = {
        "alg": "ecdsa",
        "kid": kid,
        "signature": base64.b64encode(signature).decode(),
        "digest": "SHA1",
    }
    return base64.b64encode(json.dumps(header).encode()).decode()


def public_key_pem(private_key: ec.EllipticCurvePrivateKey) -> str:
    """The PEM (SubjectPublicKeyInfo) of `private_key`'s public half, as stored in ``webhook_secret``."""
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@functools.lru_cache(maxsize=64)
def _public_key(pem: str) -> ec.EllipticCurvePublicKey | None:
    """The EC public key in `pem` (line breaks optional), or None if it is not one."""
    text = pem.strip()
    if not (text.startswith(_PEM_BEGIN) and text.endswith(_PEM_END)):
        return None
    body = "".join(text[len(_PEM_BEGIN) : -len(_PEM_END)].split())
    try:
        key = serialization.load_der_public_key(base64.b64decode(body, validate=True))
    except (ValueError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, now: datetime | None = None) -> bool:
    """True only if ``X-EBAY-SIGNATURE`` is well formed and its ECDSA/SHA-1 signature over `body` verifies
    with the PEM public key in `secret`. Never raises. `now` is unused: eBay signs no timestamp."""
    raw = header(headers, SIGNATURE_HEADER, strings_only=True)
    key = _public_key(secret) if isinstance(secret, str) else None
    if not raw or key is None or not isinstance(body, bytes):
        return False
    try:
        info = json.loads(base64.b64decode(raw.strip(), validate=True))
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(info, dict):
        return False
    alg, digest, kid, signature = (info.get(k) for k in ("alg", "digest", "kid", "signature"))
    if not (isinstance(alg, str) and alg.lower() == "ecdsa" and isinstance(digest, str)):
        return False
    if digest.upper() != "SHA1" or not isinstance(kid, str) or not isinstance(signature, str):
        return False
    try:
        key.verify(base64.b64decode(signature, validate=True), body, ec.ECDSA(_digest()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _id(value: Any, what: str) -> str:
    """An eBay id as text: a non-empty string or a whole number, short enough to sit in an event id."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip() and len(value) <= _MAX_ID_LENGTH:
        return value
    raise PayloadError(f"{what} {value!r} is not an eBay id (a non-empty string or a whole number)")


def _sku_for(connection: Connection, line: dict[str, Any], line_id: str) -> str:
    item = line.get("legacyItemId")
    listing = str(item) if isinstance(item, (str, int)) and not isinstance(item, bool) else None
    seller_sku = line.get("sku")
    return master_sku(
        connection, listing, seller_sku, what=f"line {line_id}: listing {item!r} / sku {seller_sku!r}"
    )


def normalise(
    connection: Connection, body: bytes, headers: Mapping[str, str], received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """One OrderPlaced per line of a verified ``ORDER_CONFIRMATION``; PayloadError if it cannot be used."""
    envelope = require_object(load_json(body), "the notification body")
    topic = require_object(envelope.get("metadata"), "'metadata'").get("topic")
    if topic != ORDER_TOPIC:
        raise PayloadError(f"notification topic {topic!r} is not handled (only {ORDER_TOPIC})")
    notification = require_object(envelope.get("notification"), "'notification'")
    occurred_at = iso_time(notification.get("eventDate"), "notification.eventDate")
    return order_events(
        connection, notification.get("data"), occurred_at=occurred_at, received_at=received_at
    )


def order_events(
    connection: Connection, order: Any, *, occurred_at: datetime, received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """One OrderPlaced per line of an order (``orderId``, ``lineItems`` with ``lineItemId``, ``legacyItemId``,
    ``sku``, ``quantity``: a notification's ``data`` or a Fulfillment API Order): the webhooks and the
    order-list backfill both come through here, so their event ids are the same."""
    data = require_object(order, "'notification.data'")
    order_id = _id(data.get("orderId"), "orderId")
    lines = data.get("lineItems")
    if not isinstance(lines, list):
        raise PayloadError("'notification.data.lineItems' is missing or not a list")
    if not lines:
        raise PayloadError(f"order {order_id} has no line items")
    collected = Lines()
    for line in lines:
        if not isinstance(line, dict):
            raise PayloadError(f"order {order_id}: a line item is not a JSON object")
        line_id = _id(line.get("lineItemId"), "lineItemId")
        with collected.collect():
            quantity = positive_quantity(line.get("quantity"), f"line {line_id}")
            sku = _sku_for(connection, line, line_id)
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
                    where=f"line {line_id}",
                )
            )
    return collected.result()
