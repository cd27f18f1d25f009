"""Amazon SNS HTTPS deliveries of SP-API ``ORDER_CHANGE``: signature check and one event per order item.

Signature (AWS, "Verifying the signatures of Amazon SNS messages"): the string to sign is ``name\\nvalue\\n``
for, in byte order, ``Message, MessageId, Subject`` (if present)``, Timestamp, TopicArn, Type`` of a
``Notification``, or ``Message, MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type`` of a
``SubscriptionConfirmation``/``UnsubscribeConfirmation``; ``Signature`` is base64 of its PKCS#1 v1.5 RSA
signature with SHA1 (``SignatureVersion`` 1) or SHA256 (2). The header ``x-amz-sns-message-type`` must name
the body's ``Type``.

No network at verification time: the connection's ``webhook_secret`` is the PEM of the SNS signing
certificate, fetched once by the operator over HTTPS from a ``SigningCertURL`` they trust
(``https://sns.<region>.amazonaws.com/SimpleNotificationService-....pem``). When SNS rotates its certificate
the ``SigningCertURL`` changes: append the new PEM to the secret (several certificates may be concatenated;
any one verifying is enough) and remove the old one later. Because that certificate signs for every AWS
account, ``normalise`` also requires ``TopicArn`` to equal ``options.sns_topic_arn`` and ``SellerId`` to
equal ``options.seller_id``.

Payload: the SNS ``Message`` is the SP-API notification JSON exactly as SP-API writes it to SQS
(``NotificationType``, ``EventTime``, ``Payload.OrderChangeNotification`` with ``AmazonOrderId``,
``OrderChangeType``, ``OrderChangeTrigger``, ``Summary.{OrderStatus, FulfillmentType, PurchaseDate,
OrderItems[{OrderItemId, SellerSKU, Quantity}]}``), as published in amzn/selling-partner-api-models
``schemas/notifications/OrderChangeNotification.json``. Mapping:

- ``OrderStatus`` ``Pending`` or ``Unshipped`` → ``OrderPlaced`` per item (Amazon reserves stock from
  Pending on; both notifications of one order give the same event ids);
- ``Canceled`` → ``OrderCancelled`` per item (restocks that item's sale);
- the other published statuses move no stock and give no events; an unknown status is refused;
- ``FulfillmentType`` ``AFN`` (fulfilled by Amazon from FBA stock, not the seller's) gives no events.

A buyer's cancellation *request* (``OrderChangeType`` ``BuyerRequestedChange`` with the order still
Unshipped) is not a cancellation: it maps like any Unshipped notification, to the same sale ids.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from channels.amazon import CHANNEL, NOTIFICATION_TYPE, REPLAY_WINDOW_S
from channels.connection import Connection
from channels.errors import PayloadError
from channels.payload import (
    Lines,
    header,
    iso_time,
    line_event,
    load_object,
    master_sku,
    positive_quantity,
)
from schemas.inventory_events import OrderCancelled, OrderPlaced

MESSAGE_TYPE_HEADER = "x-amz-sns-message-type"
MESSAGE_ID_HEADER = "x-amz-sns-message-id"
TOPIC_ARN_HEADER = "x-amz-sns-topic-arn"
SUBSCRIPTION_ARN_HEADER = "x-amz-sns-subscription-arn"
# The signature is in the body; these are the headers verify reads (each must match the body): the gateway
# refuses a request with two of one.
AUTH_HEADERS: tuple[str, ...] = (MESSAGE_TYPE_HEADER, MESSAGE_ID_HEADER, TOPIC_ARN_HEADER)

NOTIFICATION = "Notification"
SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"

# Fields of the string to sign, in the byte order AWS documents; "Subject" only when the message has one.
_SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION_CONFIRMATION: (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    UNSUBSCRIBE_CONFIRMATION: (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_OPTIONAL_FIELDS = frozenset({"Subject"})
_HASHES: dict[str, type[hashes.SHA1] | type[hashes.SHA256]] = {"1": hashes.SHA1, "2": hashes.SHA256}

PLACED_STATUSES = frozenset({"Pending", "Unshipped"})
CANCELLED_STATUSES = frozenset({"Canceled"})
# Published OrderStatus values that neither take nor return stock.
NO_STOCK_CHANGE_STATUSES = frozenset(
    {"PartiallyShipped", "Shipped", "Unfulfillable", "InvoiceUnconfirmed", "PendingAvailability"}
)


def string_to_sign(message: Mapping[str, Any]) -> bytes | None:
    """The canonical bytes SNS signs for `message`, or None if its Type is unknown or a field is missing."""
    fields = _SIGNED_FIELDS.get(str(message.get("Type")))
    if fields is None:
        return None
    out: list[str] = []
    for name in fields:
        value = message.get(name)
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            return None
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode()


def sign(private_key: RSAPrivateKey, message: Mapping[str, Any]) -> str:
    """Base64 SNS signature of `message` (its ``SignatureVersion``, "1" or "2"); used by the simulator."""
    canonical = string_to_sign(message)
    algorithm = _HASHES.get(str(message.get("SignatureVersion")))
    if canonical is None or algorithm is None:
        raise ValueError("message lacks a field SNS signs, or its SignatureVersion is not '1' or '2'")
    return base64.b64encode(private_key.sign(canonical, padding.PKCS1v15(), algorithm())).decode()


@functools.lru_cache(maxsize=64)
def _public_keys(pem: str) -> tuple[RSAPublicKey, ...]:
    """The RSA keys of the certificates in `pem` (parsed once per secret)."""
    keys = []
    for cert in x509.load_pem_x509_certificates(pem.encode()):
        key = cert.public_key()
        if isinstance(key, RSAPublicKey):
            keys.append(key)
    return tuple(keys)


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, now: datetime | None = None) -> bool:
    """True only for an SNS message signed by a certificate in `secret` (PEM), sent within 5 minutes of `now`.

    Accepts ``Notification``, ``SubscriptionConfirmation`` and ``UnsubscribeConfirmation`` (``normalise``
    refuses the latter two with instructions). Never raises.
    """
    try:
        message = json.loads(body)
        if not isinstance(message, dict):
            return False
        kind = message.get("Type")
        if kind not in _SIGNED_FIELDS or header(headers, MESSAGE_TYPE_HEADER) != kind:
            return False
        # The optional headers repeat body fields; a mismatch means someone edited one of the two.
        for name, field in ((MESSAGE_ID_HEADER, "MessageId"), (TOPIC_ARN_HEADER, "TopicArn")):
            given = header(headers, name)
            if given is not None and given != message.get(field):
                return False
        algorithm = _HASHES.get(str(message.get("SignatureVersion")))
        canonical = string_to_sign(message)
        signature = message.get("Signature")
        if algorithm is None or canonical is None or not isinstance(signature, str):
            return False
        raw_signature = base64.b64decode(signature, validate=True)
        sent_at = iso_time(message.get("Timestamp"), "Timestamp")
        current = now if now is not None else datetime.now(UTC)
        if abs(current - sent_at) > timedelta(seconds=REPLAY_WINDOW_S):
            return False
        for key in _public_keys(secret):
            try:
                key.verify(raw_signature, canonical, padding.PKCS1v15(), algorithm())
            except InvalidSignature:
                continue
            return True
    except (
        ValueError,
        TypeError,
        PayloadError,
        UnsupportedAlgorithm,
        binascii.Error,
        OverflowError,
        RecursionError,
    ):
        # ValueError covers malformed JSON, UTF-8, base64 and PEM; PayloadError a malformed Timestamp;
        # RecursionError absurdly deep JSON.
        return False
    return False


def _order_change(connection: Connection, body: bytes) -> tuple[dict[str, Any], Any]:
    """The ``OrderChangeNotification`` inside a verified SNS body and the notification's ``EventTime``."""
    envelope = load_object(body, "an SNS message")
    kind, topic = envelope.get("Type"), envelope.get("TopicArn")
    pinned_topic = connection.options.get("sns_topic_arn")
    if pinned_topic and topic != pinned_topic:
        # Checked first: a confirmation from a stranger's topic must not be confirmed by mistake.
        raise PayloadError(
            f"SNS {kind} from topic {topic!r}, which is not this connection's topic {pinned_topic!r}: "
            "ignore it (do not confirm it) and check which topic the endpoint is subscribed to"
        )
    if kind == SUBSCRIPTION_CONFIRMATION:
        raise PayloadError(
            f"SNS asks to confirm the subscription of this endpoint to topic {topic!r}: if that topic is "
            f"the seller's, open SubscribeURL {envelope.get('SubscribeURL')!r} once (or call "
            "ConfirmSubscription with the Token) and make sure options.sns_topic_arn names it; "
            "no notification is delivered before that"
        )
    if kind == UNSUBSCRIBE_CONFIRMATION:
        raise PayloadError(
            f"SNS says this endpoint was unsubscribed from topic {topic!r}: ORDER_CHANGE notifications stop; "
            f"to subscribe again, open SubscribeURL {envelope.get('SubscribeURL')!r}"
        )
    if kind != NOTIFICATION:
        raise PayloadError(f"SNS message Type {kind!r} is not handled (only Notification)")
    if not pinned_topic:
        raise PayloadError(
            f"connection {connection.id!r} has no options.sns_topic_arn: SNS's certificate signs for every "
            "AWS account, so only a pinned topic proves the notification is the seller's; set it"
        )
    raw = envelope.get("Message")
    if not isinstance(raw, str):
        raise PayloadError("SNS Message is missing or not a string")
    try:
        notification = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(
            f"SNS Message is not JSON (the relay must publish the SQS body as is): {exc}"
        ) from exc
    if not isinstance(notification, dict):
        raise PayloadError("SNS Message is not an SP-API notification: expected a JSON object")
    if notification.get("NotificationType") != NOTIFICATION_TYPE:
        raise PayloadError(
            f"NotificationType {notification.get('NotificationType')!r} is not handled (only ORDER_CHANGE); "
            "subscribe the topic to ORDER_CHANGE only"
        )
    payload = notification.get("Payload")
    change = payload.get("OrderChangeNotification") if isinstance(payload, dict) else None
    if not isinstance(change, dict):
        raise PayloadError("ORDER_CHANGE notification has no Payload.OrderChangeNotification object")
    seller = connection.options.get("seller_id")
    if seller and change.get("SellerId") != seller:
        raise PayloadError(
            f"SellerId {change.get('SellerId')!r} is not this connection's seller {seller!r}; "
            "check options.seller_id and the topic's subscription"
        )
    return change, notification.get("EventTime")


def _item_id(item: Mapping[str, Any]) -> str:
    value = item.get("OrderItemId")
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise PayloadError(f"an order item has no usable OrderItemId ({value!r})")
    return str(value)


def _sku(connection: Connection, item_id: str, item: Mapping[str, Any]) -> str:
    seller_sku = item.get("SellerSKU")
    if not isinstance(seller_sku, str) or not seller_sku:
        raise PayloadError(f"order item {item_id}: SellerSKU {seller_sku!r} is missing or not a string")
    return master_sku(
        connection,
        seller_sku,
        seller_sku,
        what=f"order item {item_id}: seller SKU {seller_sku!r}",
        hint="add it as listings.<sku>.listing_id",
    )


def normalise(
    connection: Connection, body: bytes, headers: Mapping[str, str], received_at: datetime
) -> list[OrderPlaced | OrderCancelled]:
    """Canonical events for one verified SNS body; raises PayloadError if it cannot be understood."""
    change, event_time = _order_change(connection, body)
    order_id = change.get("AmazonOrderId")
    summary = change.get("Summary")
    if not isinstance(summary, dict):
        raise PayloadError(f"order {order_id!r}: Summary is missing or not an object")
    trigger = change.get("OrderChangeTrigger")
    changed_at = trigger.get("TimeOfOrderChange") if isinstance(trigger, dict) else None
    return order_events(
        connection,
        order_id=order_id,
        status=summary.get("OrderStatus"),
        fulfillment_type=summary.get("FulfillmentType"),
        purchased_at=summary.get("PurchaseDate"),
        changed_at=changed_at or event_time,
        items=summary.get("OrderItems"),
        received_at=received_at,
    )


def order_events(
    connection: Connection,
    *,
    order_id: Any,
    status: Any,
    fulfillment_type: Any,
    purchased_at: Any,
    changed_at: Any,
    items: Any,
    received_at: datetime,
) -> list[OrderPlaced | OrderCancelled]:
    """The one place an Amazon order becomes events, from an ORDER_CHANGE summary or from the Orders API
    (``getOrders`` + ``getOrderItems``): `items` as ``[{OrderItemId, SellerSKU, Quantity}]``, times as
    ISO-8601 strings. Pending/Unshipped give a sale per item dated `purchased_at` (else `changed_at`),
    Canceled a cancellation per item dated `changed_at`; see the module docstring for the rest."""
    if not isinstance(order_id, str) or not order_id:
        raise PayloadError(f"AmazonOrderId {order_id!r} is missing or not a string")
    if not isinstance(status, str) or status not in (
        PLACED_STATUSES | CANCELLED_STATUSES | NO_STOCK_CHANGE_STATUSES
    ):
        raise PayloadError(f"order {order_id}: OrderStatus {status!r} is not a known Amazon order status")
    if status in NO_STOCK_CHANGE_STATUSES or fulfillment_type == "AFN":
        return []
    cancelled = status in CANCELLED_STATUSES
    # A sale happened at purchase; a cancellation when the order changed.
    when = changed_at if cancelled else (purchased_at or changed_at)
    occurred_at = iso_time(when, "order time")
    if not isinstance(items, list) or not items:
        raise PayloadError(f"order {order_id}: OrderItems is missing or empty")
    lines = Lines()
    for item in items:
        if not isinstance(item, dict):
            raise PayloadError(f"order {order_id}: an order item is not an object")
        item_id = _item_id(item)
        with lines.collect():
            where = f"order {order_id} item {item_id}"
            quantity = positive_quantity(item.get("Quantity"), where, "Quantity")
            sku = _sku(connection, item_id, item)
            lines.events.append(
                line_event(
                    connection,
                    channel=CHANNEL,
                    order_id=order_id,
                    line_id=item_id,
                    sku=sku,
                    quantity=quantity,
                    occurred_at=occurred_at,
                    received_at=received_at,
                    cancelled=cancelled,
                    where=where,
                )
            )
    return lines.result()
