"""An Amazon simulator: the Listings Items endpoints and SNS-signed ``ORDER_CHANGE`` notifications.

It keeps a quantity per seller SKU, applies ``patchListingsItem`` at once (Amazon queues it and shows the
quantity minutes later), answers ``getListingsItem`` with ``fulfillmentAvailability``, records every patch,
enforces the 5 requests/s budget per operation (429 with ``Retry-After`` and ``x-amzn-RateLimit-Limit``) and
can be told to fail the next calls. Every order placed stays in the order book, served by the Orders API
(``getOrders`` ``GET /orders/v0/orders`` filtered by ``CreatedAfter`` or ``LastUpdatedAfter``, paged by
``NextToken``; ``getOrderItems`` ``GET /orders/v0/orders/{id}/orderItems``) whether or not its notification
was delivered, each operation with its published budget (getOrders 0.0167/s burst 20, getOrderItems 0.5/s
burst 30). Notifications are signed with an RSA key and self-signed certificate
made here; ``sample_connection`` stores that certificate's PEM as the connection's webhook secret, the way
an operator stores the certificate from SNS's ``SigningCertURL``.

Invented where Amazon publishes nothing: the ``issues`` codes of an INVALID patch, the ``ChangeReason``
texts, the ``Retry-After`` header on 429 (Amazon documents only ``x-amzn-RateLimit-Limit``), the order of
``getOrders`` results (oldest first by the filtered time here; Amazon documents none) and the content of
``NextToken`` (opaque; here the filter and where the page ended).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from channels.amazon import LISTINGS_API_VERSION, NOTIFICATION_TYPE, RATE_BURST, RATE_LIMIT_PER_S, webhooks
from channels.amazon.orders import (
    GET_ORDER_ITEMS_BURST,
    GET_ORDER_ITEMS_RATE,
    GET_ORDERS_BURST,
    GET_ORDERS_RATE,
    MAX_RESULTS_PER_PAGE,
)
from channels.connection import Connection, Listing
from channels.errors import PayloadError
from channels.payload import iso_time
from channels.ratelimit import TokenBucket
from lab.marketplaces.base import MarketplaceSimulator, retry_after

DEFAULT_MARKETPLACE = "ATVPDKIKX0DER"
REGION = "us-east-1"


@dataclass(frozen=True)
class SnsSigner:
    """An SNS signing identity: the private key and the PEM certificate an operator would pin."""

    private_key: rsa.RSAPrivateKey
    certificate_pem: str
    signing_cert_url: str

    @classmethod
    def generate(cls) -> SnsSigner:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sns.{REGION}.amazonaws.com")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365))
            .sign(key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        url = f"https://sns.{REGION}.amazonaws.com/SimpleNotificationService-{secrets.token_hex(16)}.pem"
        return cls(key, pem, url)


@functools.cache
def default_signer() -> SnsSigner:
    """One signing identity per process (key generation takes tens of milliseconds)."""
    return SnsSigner.generate()


def amazon_order_id(order_id: int) -> str:
    """Amazon's 3-7-7 order id for the simulator's integer order id (distinct below 10**14)."""
    return f"114-{order_id // 10**7 % 10**7:07d}-{order_id % 10**7:07d}"


def order_item_id(order_id: int, line: int) -> str:
    """A 14-digit order item id, like Amazon's."""
    return f"{order_id % 10**8:08d}{line:06d}"


def order_change_notification(
    *,
    seller_id: str,
    marketplace_id: str,
    amazon_order: str,
    status: str,
    items: list[dict[str, Any]],
    purchased_at: datetime,
    changed_at: datetime,
    change_type: str = "OrderStatusChange",
    change_reason: str | None = None,
    fulfillment_type: str = "MFN",
) -> dict[str, Any]:
    """An SP-API ``ORDER_CHANGE`` notification (OrderChangeNotification.json, payload version 1.0)."""
    quantities = [i.get("Quantity") for i in items if isinstance(i, dict)]
    open_units = sum(q for q in quantities if isinstance(q, int))
    unshipped = open_units if status in ("Pending", "Unshipped") else 0
    return {
        "NotificationVersion": "1.0",
        "NotificationType": NOTIFICATION_TYPE,
        "PayloadVersion": "1.0",
        "EventTime": _iso(changed_at),
        "Payload": {
            "OrderChangeNotification": {
                "NotificationLevel": "OrderLevel",
                "SellerId": seller_id,
                "AmazonOrderId": amazon_order,
                "OrderChangeType": change_type,
                "OrderChangeTrigger": {
                    "TimeOfOrderChange": _iso(changed_at),
                    "ChangeReason": change_reason or f"Order status changed to {status}",
                },
                "Summary": {
                    "MarketplaceId": marketplace_id,
                    "OrderStatus": status,
                    "PurchaseDate": _iso(purchased_at),
                    "DestinationPostalCode": "98109",
                    "FulfillmentType": fulfillment_type,
                    "OrderType": "StandardOrder",
                    "NumberOfItemsShipped": 0,
                    "NumberOfItemsUnshipped": unshipped,
                    "OrderItems": items,
                },
            }
        },
        "NotificationMetadata": {
            "ApplicationId": "amzn1.sellerapps.app.00000000-0000-0000-0000-000000000000",
            "SubscriptionId": str(uuid.uuid4()),
            "PublishTime": _iso(changed_at),
            "NotificationId": str(uuid.uuid4()),
        },
    }


def sns_notification(
    signer: SnsSigner,
    topic_arn: str,
    message: str,
    sent_at: datetime,
    *,
    signature_version: str = "2",
    subject: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A signed SNS ``Notification`` as POSTed to an HTTPS subscriber (body bytes and headers)."""
    message_id = str(uuid.uuid4())
    envelope: dict[str, Any] = {
        "Type": webhooks.NOTIFICATION,
        "MessageId": message_id,
        "TopicArn": topic_arn,
        **({"Subject": subject} if subject is not None else {}),
        "Message": message,
        "Timestamp": _iso(sent_at),
        "SignatureVersion": signature_version,
        "SigningCertURL": signer.signing_cert_url,
        "UnsubscribeURL": f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}:"
        f"{uuid.uuid4()}",
    }
    envelope["Signature"] = webhooks.sign(signer.private_key, envelope)
    return json.dumps(envelope).encode(), _sns_headers(webhooks.NOTIFICATION, message_id, topic_arn)


def sns_subscription_confirmation(
    signer: SnsSigner, topic_arn: str, sent_at: datetime, *, signature_version: str = "2"
) -> tuple[bytes, dict[str, str]]:
    """The signed ``SubscriptionConfirmation`` SNS sends once when an endpoint is subscribed."""
    message_id, token = str(uuid.uuid4()), secrets.token_hex(64)
    envelope: dict[str, Any] = {
        "Type": webhooks.SUBSCRIPTION_CONFIRMATION,
        "MessageId": message_id,
        "Token": token,
        "TopicArn": topic_arn,
        "Message": f"You have chosen to subscribe to the topic {topic_arn}.\n"
        "To confirm the subscription, visit the SubscribeURL included in this message.",
        "SubscribeURL": f"https://sns.{REGION}.amazonaws.com/?Action=ConfirmSubscription&TopicArn={topic_arn}"
        f"&Token={token}",
        "Timestamp": _iso(sent_at),
        "SignatureVersion": signature_version,
        "SigningCertURL": signer.signing_cert_url,
    }
    envelope["Signature"] = webhooks.sign(signer.private_key, envelope)
    return json.dumps(envelope).encode(), _sns_headers(
        webhooks.SUBSCRIPTION_CONFIRMATION, message_id, topic_arn
    )


def _sns_headers(kind: str, message_id: str, topic_arn: str) -> dict[str, str]:
    return {
        "Content-Type": "text/plain; charset=UTF-8",
        webhooks.MESSAGE_TYPE_HEADER: kind,
        webhooks.MESSAGE_ID_HEADER: message_id,
        webhooks.TOPIC_ARN_HEADER: topic_arn,
        webhooks.SUBSCRIPTION_ARN_HEADER: f"{topic_arn}:{uuid.uuid4()}",
        "User-Agent": "Amazon Simple Notification Service Agent",
    }


def _epoch_ms(moment: datetime) -> int:
    return math.floor(moment.timestamp() * 1000)


def _write_token(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def _read_token(token: str) -> dict[str, Any] | None:
    """The position a NextToken names, or None if it is not one this simulator wrote."""
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError):
        return None
    valid = (
        isinstance(position, dict)
        and position.get("by") in ("CreatedAfter", "LastUpdatedAfter")
        and isinstance(position.get("since"), str)
        and _parses(position["since"])
        and isinstance(position.get("after"), list)
        and len(position["after"]) == 2
        and isinstance(position["after"][0], int)
        and isinstance(position["after"][1], str)
        and isinstance(position.get("size"), int)
    )
    return position if valid else None


def _parses(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def _iso(moment: datetime) -> str:
    """Amazon's timestamp style: UTC with milliseconds and a Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PatchCall:
    """One patchListingsItem call as the simulator saw it (quantity None if the body had none)."""

    at: float
    seller_sku: str
    quantity: int | None
    status: int
    submission_status: str | None = None
    issue: str | None = None


@dataclass
class AmazonSimulator(MarketplaceSimulator):
    FAILURES_BEFORE_BUDGET = True  # Amazon: token, injected failures, then the operation's budget

    access_token: str
    seller_id: str = ""
    marketplace_id: str = DEFAULT_MARKETPLACE
    signer: SnsSigner = field(default_factory=default_signer)
    available: dict[str, int] = field(default_factory=dict)
    calls: list[PatchCall] = field(default_factory=list)
    orders: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    # The order book getOrders serves: order id -> {status, purchased, updated, marketplace}.
    order_book: dict[int, dict[str, Any]] = field(default_factory=dict)
    orders_budget: TokenBucket = field(default_factory=lambda: TokenBucket(GET_ORDERS_RATE, GET_ORDERS_BURST))
    order_items_budget: TokenBucket = field(
        default_factory=lambda: TokenBucket(GET_ORDER_ITEMS_RATE, GET_ORDER_ITEMS_BURST)
    )
    patch_budget: TokenBucket = field(default_factory=lambda: TokenBucket(RATE_LIMIT_PER_S, RATE_BURST))
    get_budget: TokenBucket = field(default_factory=lambda: TokenBucket(RATE_LIMIT_PER_S, RATE_BURST))

    def app(self) -> web.Application:
        app = web.Application()
        path = f"/listings/{LISTINGS_API_VERSION}/items/{{seller_id}}/{{sku}}"
        app.router.add_patch(path, self._patch)
        app.router.add_get(path, self._get)
        app.router.add_get("/orders/v0/orders", self._get_orders)
        app.router.add_get("/orders/v0/orders/{order_id}/orderItems", self._get_order_items)
        return app

    def adopt(self, connection: Connection, *, initial: int | None = None) -> None:
        """Serve `connection`: its token, seller and marketplace; with `initial`, stock every listing."""
        self.access_token = connection.access_token.get_secret_value()
        self.seller_id = connection.options.get("seller_id", self.seller_id)
        self.marketplace_id = connection.options.get("marketplace_id", self.marketplace_id)
        if initial is not None:
            for listing in connection.listings.values():
                self.available[listing.listing_id] = initial

    def _error(self, status: int, code: str, message: str) -> web.Response:
        headers = {"x-amzn-RequestId": str(uuid.uuid4())}
        if status == 429:
            headers["x-amzn-RateLimit-Limit"] = str(RATE_LIMIT_PER_S)
        return web.json_response(
            {"errors": [{"code": code, "message": message}]}, status=status, headers=headers
        )

    def refuse_credentials(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-amz-access-token") != self.access_token:
            return self._error(403, "Unauthorized", "Access to requested resource is denied.")
        return None

    def throttled(self, wait: float) -> web.Response:
        response = self._error(429, "QuotaExceeded", "You exceeded your quota for the requested resource.")
        response.headers["Retry-After"] = retry_after(wait)
        return response

    def injected(self, status: int, *, outage: bool) -> web.Response:
        return self._error(
            status,
            "InternalFailure" if status >= 500 else "InvalidInput",
            "injected outage" if outage else "injected failure",
        )

    def _gate(self, request: web.Request, budget: TokenBucket) -> web.Response | None:
        """Auth, injected failures, the operation's budget, then seller and marketplace: an error or None."""
        refused = self.gate(request, budget)
        if refused is not None:
            return refused
        if request.match_info["seller_id"] != self.seller_id:
            return self._error(403, "Unauthorized", "Access to requested resource is denied.")
        marketplaces = request.query.get("marketplaceIds", "").split(",")
        if self.marketplace_id not in marketplaces:
            return self._error(400, "InvalidInput", f"marketplaceIds must include {self.marketplace_id}")
        return None

    async def _get_orders(self, request: web.Request) -> web.Response:
        """getOrders: orders of the marketplace created (``CreatedAfter``) or last updated
        (``LastUpdatedAfter``) at or after a time, oldest first by that time, ``MaxResultsPerPage`` a page
        (default and most 100); ``NextToken`` continues (with ``MarketplaceIds``, other filters ignored)."""
        refused = self.gate(request, self.orders_budget)
        if refused is not None:
            return refused
        query = request.query
        if self.marketplace_id not in query.get("MarketplaceIds", "").split(","):
            return self._error(400, "InvalidInput", f"MarketplaceIds must include {self.marketplace_id}")
        size_text = query.get("MaxResultsPerPage", str(MAX_RESULTS_PER_PAGE))
        size = int(size_text) if size_text.isdigit() else 0
        if not 1 <= size <= MAX_RESULTS_PER_PAGE:
            return self._error(400, "InvalidInput", f"MaxResultsPerPage must be 1..{MAX_RESULTS_PER_PAGE}")
        if "NextToken" in query:
            position = _read_token(query["NextToken"])
            if position is None:
                return self._error(400, "InvalidInput", "Invalid NextToken.")
            by, since, after = position["by"], position["since"], tuple(position["after"])
            size = position["size"]
        else:
            filters = [f for f in ("CreatedAfter", "LastUpdatedAfter") if f in query]
            if len(filters) != 1:
                return self._error(
                    400, "InvalidInput", "Exactly one of CreatedAfter and LastUpdatedAfter is required."
                )
            by, after = filters[0], None
            try:
                since = iso_time(query[by], by).isoformat()
            except PayloadError:
                return self._error(400, "InvalidInput", f"{by} is not an ISO 8601 date with a UTC offset.")
        key = "purchased" if by == "CreatedAfter" else "updated"
        start = datetime.fromisoformat(since)  # written above or by _write_token: known to parse
        matching = sorted(
            (_epoch_ms(entry[key]), amazon_order_id(order_id), order_id)
            for order_id, entry in self.order_book.items()
            if entry[key] >= start
        )
        remaining = [m for m in matching if after is None or (m[0], m[1]) > after]
        page = remaining[:size]
        payload: dict[str, Any] = {
            "Orders": [self._api_order(order_id) for _, _, order_id in page],
            "LastUpdatedBefore" if by == "LastUpdatedAfter" else "CreatedBefore": _iso(datetime.now(UTC)),
        }
        if len(remaining) > size:
            payload["NextToken"] = _write_token(
                {"by": by, "since": since, "size": size, "after": [page[-1][0], page[-1][1]]}
            )
        return web.json_response({"payload": payload})

    def _api_order(self, order_id: int) -> dict[str, Any]:
        entry, items = self.order_book[order_id], self.orders[order_id]
        units = sum(int(item["Quantity"]) for item in items)
        return {
            "AmazonOrderId": amazon_order_id(order_id),
            "PurchaseDate": _iso(entry["purchased"]),
            "LastUpdateDate": _iso(entry["updated"]),
            "OrderStatus": entry["status"],
            "FulfillmentChannel": "MFN",
            "SalesChannel": "Amazon.com",
            "ShipServiceLevel": "Std US D2D Dom",
            "NumberOfItemsShipped": 0,
            "NumberOfItemsUnshipped": units if entry["status"] in ("Pending", "Unshipped") else 0,
            "PaymentMethod": "Other",
            "MarketplaceId": self.marketplace_id,
            "OrderType": "StandardOrder",
            "IsBusinessOrder": False,
            "IsPrime": False,
            "IsPremiumOrder": False,
            "IsReplacementOrder": False,
        }

    async def _get_order_items(self, request: web.Request) -> web.Response:
        """getOrderItems: every item of one order (all on one page here)."""
        refused = self.gate(request, self.order_items_budget)
        if refused is not None:
            return refused
        wanted = request.match_info["order_id"]
        found = [n for n in self.order_book if amazon_order_id(n) == wanted]
        if not found:
            return self._error(404, "InvalidInput", f"Order {wanted} was not found.")
        items = [
            {
                "ASIN": f"B0{item['OrderItemId'][-8:]}",
                "SellerSKU": item["SellerSKU"],
                "OrderItemId": item["OrderItemId"],
                "Title": item["SellerSKU"],
                "QuantityOrdered": item["Quantity"],
                "QuantityShipped": item["QuantityShipped"],
                "IsGift": "false",
                "IsTransparency": False,
            }
            for item in self.orders[found[0]]
        ]
        return web.json_response({"payload": {"AmazonOrderId": wanted, "OrderItems": items}})

    async def _patch(self, request: web.Request) -> web.Response:
        refused = self._gate(request, self.patch_budget)
        if refused is not None:
            return refused
        seller_sku = request.match_info["sku"]
        try:
            body: Any = await request.json()
        except json.JSONDecodeError:
            return self._error(400, "InvalidInput", "Request body is not JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("productType"), str):
            return self._error(400, "InvalidInput", "productType is required.")
        patches = body.get("patches")
        if not isinstance(patches, list) or not patches:
            return self._error(400, "InvalidInput", "patches must hold at least one operation.")
        parsed = self._quantity(patches)
        if isinstance(parsed, int) and seller_sku not in self.available:
            parsed = f"SKU {seller_sku} has no listing in marketplace {self.marketplace_id}"
        submission = str(uuid.uuid4())
        if isinstance(parsed, str):
            self.calls.append(PatchCall(time.monotonic(), seller_sku, None, 200, "INVALID", parsed))
            issue = {
                "code": "90000900",
                "message": parsed,
                "severity": "ERROR",
                "attributeNames": ["fulfillment_availability"],
            }
            return web.json_response(
                {"sku": seller_sku, "status": "INVALID", "submissionId": submission, "issues": [issue]}
            )
        self.available[seller_sku] = parsed
        self.calls.append(PatchCall(time.monotonic(), seller_sku, parsed, 200, "ACCEPTED"))
        return web.json_response(
            {"sku": seller_sku, "status": "ACCEPTED", "submissionId": submission, "issues": []}
        )

    @staticmethod
    def _quantity(patches: list[Any]) -> int | str:
        """The DEFAULT quantity the patches set, or (a string) the problem Amazon would report."""
        quantity: int | None = None
        for patch in patches:
            if not isinstance(patch, dict) or patch.get("path") != "/attributes/fulfillment_availability":
                return "this simulator only patches /attributes/fulfillment_availability"
            if patch.get("op") not in ("merge", "replace"):
                return f"op {patch.get('op')!r} cannot set a quantity (use merge or replace)"
            for entry in patch.get("value") or []:
                if not isinstance(entry, dict) or entry.get("fulfillment_channel_code") != "DEFAULT":
                    return "fulfillment_channel_code must be DEFAULT for merchant-fulfilled stock"
                value = entry.get("quantity")
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    return f"quantity {value!r} must be a whole number of 0 or more"
                quantity = value
        return "no quantity given for fulfillment_availability" if quantity is None else quantity

    async def _get(self, request: web.Request) -> web.Response:
        refused = self._gate(request, self.get_budget)
        if refused is not None:
            return refused
        seller_sku = request.match_info["sku"]
        if seller_sku not in self.available:
            return self._error(
                404, "NOT_FOUND", f"SKU '{seller_sku}' not found in marketplace {self.marketplace_id}"
            )
        item: dict[str, Any] = {"sku": seller_sku}
        included = request.query.get("includedData", "summaries").split(",")
        if "summaries" in included:
            item["summaries"] = [
                {"marketplaceId": self.marketplace_id, "productType": "PRODUCT", "status": ["BUYABLE"]}
            ]
        if "fulfillmentAvailability" in included:
            item["fulfillmentAvailability"] = [
                {"fulfillmentChannelCode": "DEFAULT", "quantity": self.available[seller_sku]}
            ]
        return web.json_response(item)

    def place_order(
        self,
        connection: Connection,
        order_id: int,
        lines: list[tuple[str, int]],
        created_at: datetime,
        *,
        status: str = "Unshipped",
        sent_at: datetime | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A buyer orders: Amazon takes the units from its count and SNS posts the signed ORDER_CHANGE."""
        items = []
        for n, (sku, quantity) in enumerate(lines, start=1):
            seller_sku = connection.listings[sku].listing_id
            if seller_sku in self.available:
                self.available[seller_sku] = max(0, self.available[seller_sku] - quantity)
            items.append(
                {
                    "OrderItemId": order_item_id(order_id, n),
                    "SellerSKU": seller_sku,
                    "SupplySourceId": None,
                    "OrderItemStatus": "Unshipped",
                    "Quantity": quantity,
                    "QuantityShipped": 0,
                    "IsBuyerRequestedCancel": False,
                }
            )
        self.orders[order_id] = items
        self.order_book[order_id] = {"status": status, "purchased": created_at, "updated": created_at}
        return self._notify(connection, order_id, status, items, created_at, created_at, sent_at)

    def cancel_order(
        self,
        connection: Connection,
        order_id: int,
        cancelled_at: datetime,
        *,
        purchased_at: datetime | None = None,
        sent_at: datetime | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The seller or Amazon cancels a placed order: its units return and SNS posts ``Canceled``."""
        items = self.orders.get(order_id)
        if items is None:
            raise ValueError(f"order {order_id} was never placed on this simulator; place_order it first")
        for item in items:
            seller_sku = item["SellerSKU"]
            if seller_sku in self.available:
                self.available[seller_sku] += int(item["Quantity"])
        purchased = purchased_at or cancelled_at
        if order_id in self.order_book:
            self.order_book[order_id].update(status="Canceled", updated=cancelled_at)
        return self._notify(connection, order_id, "Canceled", items, purchased, cancelled_at, sent_at)

    def _notify(
        self,
        connection: Connection,
        order_id: int,
        status: str,
        items: list[dict[str, Any]],
        purchased_at: datetime,
        changed_at: datetime,
        sent_at: datetime | None,
    ) -> tuple[bytes, dict[str, str]]:
        notification = order_change_notification(
            seller_id=connection.options["seller_id"],
            marketplace_id=connection.options.get("marketplace_id", DEFAULT_MARKETPLACE),
            amazon_order=amazon_order_id(order_id),
            status=status,
            items=items,
            purchased_at=purchased_at,
            changed_at=changed_at,
        )
        return sns_notification(
            self.signer, connection.options["sns_topic_arn"], json.dumps(notification), sent_at or changed_at
        )


def sample_connection(
    base_url: str,
    *,
    skus: tuple[str, ...],
    conn_id: str = "amazon-acme",
    tenant: str = "acme",
    signer: SnsSigner | None = None,
) -> Connection:
    """A connection to this simulator: random LWA token, seller id and topic, the signer's certificate as
    webhook secret, and listings whose seller SKU is ``AZ-<sku>`` (so the mapping is exercised)."""
    identity = signer or default_signer()
    alphabet = string.ascii_uppercase + string.digits
    seller_id = "A" + "".join(secrets.choice(alphabet) for _ in range(13))
    account = "".join(secrets.choice(string.digits) for _ in range(12))
    return Connection(
        id=conn_id,
        tenant=tenant,
        channel="amazon",
        webhook_secret=SecretStr(identity.certificate_pem),
        api_base_url=base_url,
        access_token=SecretStr(f"Atza|{secrets.token_urlsafe(48)}"),
        listings={sku: Listing(listing_id=f"AZ-{sku}") for sku in skus},
        options={
            "seller_id": seller_id,
            "marketplace_id": DEFAULT_MARKETPLACE,
            "sns_topic_arn": f"arn:aws:sns:{REGION}:{account}:sp-api-order-change-{conn_id}",
            "product_type": "PRODUCT",
        },
    )
