"""An eBay simulator: Inventory API bulk price/quantity updates and reads, Notification API public keys, and
ECDSA-signed ``ORDER_CONFIRMATION`` notifications.

It keeps per-SKU ship-to-home counts and offer-to-SKU links, applies ``bulkUpdatePriceQuantity`` item by
item (HTTP 200, or 207 when an item fails), counts revisions per listing (offer) per calendar day and refuses
the 251st like eBay does, enforces a token-bucket budget (HTTP 429 + Retry-After), records every write and can
be told to fail the next calls. The module plays eBay's key service: ``sample_connection`` issues an EC P-256
key pair per connection (its public PEM becomes ``webhook_secret``) and ``place_order`` signs with the private
half. The revision-limit error's id and wording are invented (eBay does not publish them); the calendar day is
UTC here (eBay's API day starts at midnight Pacific). Every order is kept and listed by the Fulfillment API's
getOrders (``GET /sell/fulfillment/v1/order``: ``filter=lastmodifieddate:[from..to]`` or ``creationdate:``,
inclusive, either end optional; ``limit`` 1-200, default 50; ``offset``; newest created first, as eBay sorts;
``total``/``next``), whether or not its notification was delivered.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.ebay import (
    INVENTORY_API_PATH,
    MAX_BATCH,
    MAX_REVISIONS_PER_DAY,
    NOTIFICATION_API_PATH,
    RATE_BURST,
    RATE_LIMIT_PER_S,
    webhooks,
)
from channels.ebay.orders import FULFILLMENT_API_PATH
from channels.ratelimit import TokenBucket
from lab.marketplaces.base import MarketplaceSimulator, retry_after

_FILTER = re.compile(r"^(lastmodifieddate|creationdate):\[(.*?)\.\.(.*?)\]$")
# kid -> private key, and public PEM -> kid: the keys this process's simulated eBay signs with.
_PRIVATE_KEYS: dict[str, ec.EllipticCurvePrivateKey] = {}
_KID_BY_PEM: dict[str, str] = {}


def issue_signing_key() -> tuple[str, ec.EllipticCurvePrivateKey]:
    """A fresh notification signing key pair and its key id, remembered for ``place_order``."""
    kid = str(uuid.uuid4())
    key = ec.generate_private_key(ec.SECP256R1())
    _PRIVATE_KEYS[kid] = key
    _KID_BY_PEM[webhooks.public_key_pem(key)] = kid
    return kid, key


def signing_key_for(connection: Connection) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """The key id and private key behind `connection`'s ``webhook_secret`` (a PEM this module issued)."""
    kid = _KID_BY_PEM.get(connection.webhook_secret.get_secret_value())
    if kid is None:
        raise ValueError(
            f"connection {connection.id!r} has a webhook_secret this simulator did not issue; "
            "build the connection with lab.marketplaces.ebay.sample_connection"
        )
    return kid, _PRIVATE_KEYS[kid]


@dataclass(frozen=True)
class UpdateCall:
    """One item of a bulkUpdatePriceQuantity call as the simulator saw it."""

    at: float
    sku: str
    offer_id: str | None
    quantity: int | None
    status: int
    error: str | None = None


def _utc_today() -> date:
    return datetime.now(UTC).date()


def _error(error_id: int, message: str, *, category: str = "REQUEST") -> dict[str, Any]:
    return {
        "errorId": error_id,
        "domain": "API_INVENTORY",
        "subdomain": "Selling",
        "category": category,
        "message": message,
    }


@dataclass
class EbaySimulator(MarketplaceSimulator):
    """Simulated eBay seller account. ``available``: ship-to-home quantity by SKU; ``offers``: offer id ->
    SKU; ``calls``: every item written; ``bulk_sizes``: items per bulk call; ``revisions``: (offer id, day)
    -> revisions that day; ``today`` is injectable so tests can cross midnight without waiting."""

    access_token: str
    available: dict[str, int] = field(default_factory=dict)
    offers: dict[str, str] = field(default_factory=dict)
    calls: list[UpdateCall] = field(default_factory=list)
    bulk_sizes: list[int] = field(default_factory=list)
    revisions: dict[tuple[str, date], int] = field(default_factory=dict)
    revision_limit: int = MAX_REVISIONS_PER_DAY
    today: Callable[[], date] = _utc_today
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(RATE_LIMIT_PER_S, RATE_BURST))
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # orderId -> Fulfillment API Order
    order_list_calls: int = 0  # getOrders pages answered 200

    @classmethod
    def for_connection(
        cls, connection: Connection, quantities: Mapping[str, int] | None = None
    ) -> EbaySimulator:
        """A simulator holding `connection`'s token, its offers and the given counts (0 if not given)."""
        quantities = quantities or {}
        return cls(
            access_token=connection.access_token.get_secret_value(),
            available={sku: quantities.get(sku, 0) for sku in connection.listings},
            offers={
                listing.inventory_ref: sku
                for sku, listing in connection.listings.items()
                if listing.inventory_ref
            },
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"{INVENTORY_API_PATH}/bulk_update_price_quantity", self._bulk_update)
        app.router.add_get(f"{INVENTORY_API_PATH}/inventory_item/{{sku}}", self._get_inventory_item)
        app.router.add_get(f"{NOTIFICATION_API_PATH}/public_key/{{kid}}", self._get_public_key)
        app.router.add_get(f"{FULFILLMENT_API_PATH}/order", self._get_orders)
        return app

    def _refuse(self, status: int, error_id: int, message: str) -> web.Response:
        headers = {}
        if status == 429:
            headers["Retry-After"] = "1"
        category = "APPLICATION" if status >= 500 else "REQUEST"
        return web.json_response(
            {"errors": [_error(error_id, message, category=category)]}, status=status, headers=headers
        )

    def refuse_credentials(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            body = {
                "errors": [
                    {
                        "errorId": 1001,
                        "domain": "OAuth",
                        "category": "REQUEST",
                        "message": "Invalid access token",
                        "longMessage": "Invalid access token. Check the value of the Authorization HTTP "
                        "request header.",
                    }
                ]
            }
            return web.json_response(body, status=401)
        return None

    def throttled(self, wait: float) -> web.Response:
        response = self._refuse(
            429, 2001, "Too many requests. The request limit has been reached for the resource."
        )
        response.headers["Retry-After"] = retry_after(wait)
        return response

    def injected(self, status: int, *, outage: bool) -> web.Response:
        return self._refuse(status, 25001 if status >= 500 else 25002, "injected failure")

    def _guard(self, request: web.Request) -> web.Response | None:
        """Auth, budget and injected failures, in that order; None lets the call through."""
        return self.gate(request, self.bucket)

    async def _bulk_update(self, request: web.Request) -> web.Response:
        refused = self._guard(request)
        if refused is not None:
            return refused
        try:
            payload = await request.json()
        except json.JSONDecodeError:
            return self._refuse(400, 25002, "The request body is not valid JSON.")
        items = payload.get("requests") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            return self._refuse(400, 25002, "The 'requests' container is missing or empty.")
        if len(items) > MAX_BATCH:
            return self._refuse(400, 25002, f"A maximum of {MAX_BATCH} requests is allowed per call.")
        self.bulk_sizes.append(len(items))
        responses = [self._apply(item) for item in items]
        status = 200 if all(r["statusCode"] == 200 for r in responses) else 207
        return web.json_response({"responses": responses}, status=status)

    def _apply(self, item: Any) -> dict[str, Any]:
        """Apply one PriceQuantity request; return its PriceQuantityResponse."""
        sku = item.get("sku") if isinstance(item, dict) else None
        ship = (item.get("shipToLocationAvailability") or {}) if isinstance(item, dict) else {}
        offers = (item.get("offers") or []) if isinstance(item, dict) else []
        quantity = ship.get("quantity") if isinstance(ship, dict) else None
        offer_id = None
        if isinstance(offers, list) and offers and isinstance(offers[0], dict):
            offer_id = offers[0].get("offerId")
            if quantity is None:
                quantity = offers[0].get("availableQuantity")
        error: tuple[int, dict[str, Any]] | None = None
        if not isinstance(sku, str) or sku not in self.available:
            error = (
                404,
                _error(25710, "We didn't find the entity you are requesting. Please verify the sku."),
            )
        elif not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
            error = (400, _error(25002, f"The quantity {quantity!r} is invalid; it must be 0 or more."))
        elif offer_id is not None and self.offers.get(str(offer_id)) != sku:
            error = (400, _error(25713, f"This Offer is not available for SKU {sku}: {offer_id}."))
        touched = [str(offer_id)] if offer_id is not None else [o for o, s in self.offers.items() if s == sku]
        day = self.today()
        if error is None and any(self.revisions.get((o, day), 0) >= self.revision_limit for o in touched):
            error = (
                400,
                _error(
                    25002,
                    f"This listing has already been revised {self.revision_limit} times today, the most "
                    "eBay allows in one calendar day. Revise it again tomorrow.",
                ),
            )
        response: dict[str, Any] = {"sku": sku, "statusCode": 200}
        if offer_id is not None:
            response["offerId"] = offer_id
        if error is not None:
            response["statusCode"] = error[0]
            response["errors"] = [error[1]]
        elif isinstance(sku, str) and isinstance(quantity, int):  # always true here; narrows the types
            self.available[sku] = quantity
            for offer in touched:
                self.revisions[(offer, day)] = self.revisions.get((offer, day), 0) + 1
        self.calls.append(
            UpdateCall(
                time.monotonic(),
                str(sku),
                None if offer_id is None else str(offer_id),
                quantity if isinstance(quantity, int) else None,
                response["statusCode"],
                None if error is None else str(error[1]["message"]),
            )
        )
        return response

    async def _get_inventory_item(self, request: web.Request) -> web.Response:
        refused = self._guard(request)
        if refused is not None:
            return refused
        sku = request.match_info["sku"]
        if sku not in self.available:
            return self._refuse(404, 25710, "We didn't find the entity you are requesting. Please verify.")
        body = {
            "sku": sku,
            "locale": "en_US",
            "condition": "NEW",
            "product": {"title": sku},
            "availability": {"shipToLocationAvailability": {"quantity": self.available[sku]}},
        }
        return web.json_response(body)

    async def _get_public_key(self, request: web.Request) -> web.Response:
        refused = self._guard(request)
        if refused is not None:
            return refused
        key = _PRIVATE_KEYS.get(request.match_info["kid"])
        if key is None:
            return self._refuse(404, 195001, "The public key was not found.")
        # eBay serves the PEM on one line; verifiers must accept that.
        pem = "".join(webhooks.public_key_pem(key).splitlines())
        return web.json_response({"algorithm": "ECDSA", "digest": "SHA1", "key": pem})

    async def _get_orders(self, request: web.Request) -> web.Response:
        """getOrders: one date-range filter, newest created first, offset pages with ``next``."""
        refused = self._guard(request)
        if refused is not None:
            return refused
        query = request.query
        limit_text, offset_text = query.get("limit", "50"), query.get("offset", "0")
        if not (limit_text.isdigit() and offset_text.isdigit()) or not 1 <= int(limit_text) <= 200:
            return self._refuse(400, 30830, "The 'limit' must be 1 to 200 and 'offset' 0 or more.")
        limit, offset = int(limit_text), int(offset_text)
        rows = list(self.orders.values())
        for term in filter(None, query.get("filter", "").split(",")):
            match = _FILTER.match(term.strip())
            refusal = self._refuse(400, 30800, f"Invalid filter {term!r}: use lastmodifieddate:[from..to].")
            if match is None:
                return refusal
            try:
                lowest = _range_end(match.group(2), datetime.min.replace(tzinfo=UTC))
                highest = _range_end(match.group(3), datetime.max.replace(tzinfo=UTC))
            except ValueError:
                return refusal
            name = "lastModifiedDate" if match.group(1) == "lastmodifieddate" else "creationDate"
            rows = [o for o in rows if lowest <= datetime.fromisoformat(o[name]) <= highest]
        rows.sort(key=lambda o: (o["creationDate"], o["orderId"]), reverse=True)
        self.order_list_calls += 1
        body: dict[str, Any] = {
            "href": str(request.url),
            "total": len(rows),
            "limit": limit,
            "offset": offset,
            "orders": rows[offset : offset + limit],
        }
        if offset + limit < len(rows):
            body["next"] = str(request.url.update_query(offset=str(offset + limit)))
        return web.json_response(body)

    def place_order(
        self, connection: Connection, order_id: int, lines: list[tuple[str, int]], created_at: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """A buyer checks out on eBay: eBay decrements its counts, keeps the order (getOrders lists it from
        now on) and signs an ORDER_CONFIRMATION."""
        items = []
        for n, (sku, qty) in enumerate(lines, start=1):
            listing = connection.listings[sku]
            if sku in self.available:
                self.available[sku] = max(0, self.available[sku] - qty)
            items.append(
                {
                    "lineItemId": str(order_id * 100 + n),
                    "legacyItemId": listing.listing_id,
                    "sku": sku,
                    "quantity": qty,
                }
            )
        stamp = _ebay_stamp(created_at)
        self.orders[order_number(order_id)] = {
            "orderId": order_number(order_id),
            "legacyOrderId": f"{order_id}-0",
            "creationDate": stamp,
            "lastModifiedDate": stamp,
            "orderFulfillmentStatus": "NOT_STARTED",
            "orderPaymentStatus": "PAID",
            "cancelStatus": {"cancelState": "NONE_REQUESTED", "cancelRequests": []},
            "lineItems": [{**item, "title": item["sku"]} for item in items],
        }
        return order_notification(connection, order_number(order_id), items, created_at)


def _ebay_stamp(at: datetime) -> str:
    """eBay's timestamp format: UTC with milliseconds and ``Z``."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _range_end(text: str, open_end: datetime) -> datetime:
    """One end of an eBay date-range filter (`open_end` if empty); ValueError if it is not a UTC time."""
    if not text:
        return open_end
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return parsed


def order_number(order_id: int) -> str:
    """An eBay-style order id (``27-00042-00001``) for a simulator order number."""
    return f"27-{order_id:05d}-00001"


def order_notification(
    connection: Connection,
    order_id: str,
    line_items: list[dict[str, Any]],
    created_at: datetime,
    *,
    notification_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A signed ``ORDER_CONFIRMATION`` notification as eBay sends it (body bytes and headers)."""
    stamp = created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = json.dumps(
        {
            "metadata": {"topic": webhooks.ORDER_TOPIC, "schemaVersion": "1.0", "deprecated": False},
            "notification": {
                "notificationId": notification_id or str(uuid.uuid4()),
                "eventDate": stamp,
                "publishDate": stamp,
                "publishAttemptCount": 1,
                "data": {"orderId": order_id, "lineItems": line_items},
            },
        }
    ).encode()
    kid, key = signing_key_for(connection)
    headers = {
        "Content-Type": "application/json",
        webhooks.SIGNATURE_HEADER: webhooks.sign(key, body, kid=kid),
    }
    return body, headers


def sample_connection(
    base_url: str, *, skus: tuple[str, ...], conn_id: str = "ebay-acme", tenant: str = "acme"
) -> Connection:
    """A connection to this simulator: a fresh signing key pair (public PEM as ``webhook_secret``), a random
    user token, and listings for `skus` (item ids 110000000001, ..., offer ids 5000000001, ...)."""
    _, key = issue_signing_key()
    return Connection(
        id=conn_id,
        tenant=tenant,
        channel="ebay",
        webhook_secret=SecretStr(webhooks.public_key_pem(key)),
        api_base_url=base_url,
        access_token=SecretStr(f"v^1.1#i^1#r^1#{secrets.token_urlsafe(32)}"),
        listings={
            sku: Listing(listing_id=str(110_000_000_000 + n), inventory_ref=str(5_000_000_000 + n))
            for n, sku in enumerate(skus, start=1)
        },
    )
