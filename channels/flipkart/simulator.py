"""A Flipkart simulator: Listings v3 inventory writes and reads, shipment reads, order notifications.

It serves under ``/sellers`` like ``api.flipkart.net``, checks the bearer token, keeps per-seller-SKU counts
at one location, reports per-SKU SUCCESS/FAILURE as Listings v3 does, refuses more than MAX_BATCH SKUs a
call, enforces a token bucket (429 with Retry-After), records every inventory write, and can be told to fail.
Notifications are signed with the invented body signature of channels.flipkart.webhooks.
"""

from __future__ import annotations

import json
import math
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.flipkart import MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S, webhooks
from channels.ratelimit import TokenBucket

PREFIX = "/sellers"
DEFAULT_LOCATION = "LOC8bdd7abceca4423a839d935584ee6f19"


@dataclass(frozen=True)
class InventoryWrite:
    """One SKU of one inventory update call as the simulator saw it."""

    at: float
    seller_sku: str
    location_id: str
    quantity: int
    status: str  # SUCCESS or FAILURE, as reported back
    error: str | None = None


@dataclass
class FlipkartSimulator:
    access_token: str = ""
    location_id: str = DEFAULT_LOCATION
    available: dict[str, int] = field(default_factory=dict)  # by seller SKU id
    fsn: dict[str, str] = field(default_factory=dict)  # seller SKU id -> FSN
    shipments: dict[str, dict[str, Any]] = field(default_factory=dict)  # by shipment id
    shipment_of_order: dict[str, str] = field(default_factory=dict)
    calls: list[InventoryWrite] = field(default_factory=list)
    writes: int = 0
    failures: list[int] = field(default_factory=list)
    rate_limited: int = 0
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(RATE_LIMIT_PER_S, RATE_BURST))
    failing_until: float = 0.0
    failing_status: int = 503

    def adopt(self, connection: Connection, initial: int = 0) -> None:
        """Take the connection's token and location and list its SKUs with `initial` units each."""
        self.access_token = connection.access_token.get_secret_value()
        self.location_id = connection.options.get("location_id", self.location_id)
        for listing in connection.listings.values():
            self.available.setdefault(listing.listing_id, initial)
            self.fsn[listing.listing_id] = listing.inventory_ref or ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"{PREFIX}/listings/v3/update/inventory", self._update_inventory)
        app.router.add_get(f"{PREFIX}/listings/v3/{{skus}}", self._listings)
        app.router.add_get(f"{PREFIX}/v3/shipments", self._shipments)
        return app

    def fail_next(self, status: int, times: int = 1) -> None:
        self.failures.extend([status] * times)

    def fail_for(self, status: int, seconds: float) -> None:
        """Answer every request with `status` for the next `seconds` (an outage)."""
        self.failing_status, self.failing_until = status, time.monotonic() + seconds

    def _guard(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return web.json_response(
                {"error": "invalid_token", "error_description": "Invalid access token"}, status=401
            )
        wait = self.bucket.take()
        if wait > 0:
            self.rate_limited += 1
            return web.json_response(
                {"errors": [{"severity": "ERROR", "code": 429, "description": "Request rate exceeded"}]},
                status=429,
                headers={"Retry-After": f"{max(1, math.ceil(wait))}"},
            )
        if time.monotonic() < self.failing_until:
            return web.json_response(
                {"errors": [{"description": "injected outage"}]}, status=self.failing_status
            )
        if self.failures:
            status = self.failures.pop(0)
            return web.json_response({"errors": [{"description": "injected failure"}]}, status=status)
        return None

    async def _update_inventory(self, request: web.Request) -> web.Response:
        if refused := self._guard(request):
            return refused
        self.writes += 1
        try:
            body = json.loads(await request.read())
        except json.JSONDecodeError:
            return web.json_response({"errors": [{"description": "body is not JSON"}]}, status=400)
        if not isinstance(body, dict) or not body:
            return web.json_response({"errors": [{"description": "expected {sku: {...}}"}]}, status=400)
        if len(body) > MAX_BATCH:
            return web.json_response(
                {"errors": [{"description": f"at most {MAX_BATCH} SKUs per request"}]}, status=400
            )
        results: dict[str, Any] = {}
        for seller_sku, spec in body.items():
            places = spec.get("locations") if isinstance(spec, dict) else None
            place = (
                places[0]
                if isinstance(places, list) and len(places) == 1 and isinstance(places[0], dict)
                else {}
            )
            quantity = place.get("inventory")
            error = None
            if seller_sku not in self.available:
                error = f"SKU {seller_sku} is not listed by this seller"
            elif not isinstance(spec, dict) or spec.get("product_id") != self.fsn.get(seller_sku):
                error = f"product_id does not match the listing of {seller_sku}"
            elif place.get("id") != self.location_id:
                error = f"location {place.get('id')!r} is not a location of this seller"
            elif isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
                error = f"inventory {quantity!r} must be a whole number of at least 0"
            status = "FAILURE" if error else "SUCCESS"
            self.calls.append(
                InventoryWrite(
                    time.monotonic(),
                    seller_sku,
                    str(place.get("id")),
                    quantity if isinstance(quantity, int) else -1,
                    status,
                    error,
                )
            )
            if error or not isinstance(quantity, int):
                results[seller_sku] = {
                    "status": "FAILURE",
                    "errors": [{"severity": "ERROR", "code": 400, "description": error, "path": seller_sku}],
                    "attribute_errors": [],
                }
                continue
            self.available[seller_sku] = quantity
            results[seller_sku] = {"status": "SUCCESS", "errors": [], "attribute_errors": []}
        return web.json_response(results)

    async def _listings(self, request: web.Request) -> web.Response:
        if refused := self._guard(request):
            return refused
        asked = [s for s in request.match_info["skus"].split(",") if s]
        if len(asked) > MAX_BATCH:
            return web.json_response({"errors": [{"description": f"at most {MAX_BATCH} SKUs"}]}, status=400)
        available = {
            s: {
                "listing_id": f"LST{self.fsn[s]}",
                "product_id": self.fsn[s],
                "listing_status": "ACTIVE",
                "fulfillment_profile": "NON_FBF",
                "locations": [{"id": self.location_id, "status": "ENABLED", "inventory": self.available[s]}],
            }
            for s in asked
            if s in self.available
        }
        return web.json_response(
            {
                "available": available,
                "unavailable": [s for s in asked if s not in self.available],
                "invalid": [],
            }
        )

    async def _shipments(self, request: web.Request) -> web.Response:
        if refused := self._guard(request):
            return refused
        ids = [i for i in request.query.get("shipmentIds", "").split(",") if i]
        return web.json_response({"shipments": [self.shipments[i] for i in ids if i in self.shipments]})

    def place_order(
        self, connection: Connection, order_id: int, lines: list[tuple[str, int]], created_at: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """A buyer orders: Flipkart takes the stock, creates one shipment and sends ``shipment_created``."""
        order = f"OD{order_id}"
        items = []
        for n, (sku, qty) in enumerate(lines, start=1):
            listing = connection.listings[sku]
            seller_sku = listing.listing_id
            if seller_sku in self.available:
                self.available[seller_sku] = max(0, self.available[seller_sku] - qty)
            items.append(
                {
                    "orderItemId": f"{order_id}{n:02d}",
                    "orderId": order,
                    "cancellationGroupId": f"grp{order_id}{n:02d}",
                    "orderDate": created_at.isoformat(),
                    "paymentType": "PREPAID",
                    "status": "APPROVED",
                    "quantity": qty,
                    "fsn": listing.inventory_ref,
                    "sku": seller_sku,
                    "listingId": f"LST{listing.inventory_ref}",
                    "title": sku,
                    "priceComponents": {"sellingPrice": 499, "totalPrice": 499, "customerPrice": 499},
                }
            )
        shipment_id = str(uuid.uuid4())
        shipment = {
            "shipmentId": shipment_id,
            "locationId": self.location_id,
            "hold": False,
            "mps": False,
            "packagingPolicy": "DEFAULT",
            "orderItems": items,
            "subShipments": [{"subShipmentId": "SS-1", "packages": []}],
        }
        self.shipments[shipment_id] = shipment
        self.shipment_of_order[order] = shipment_id
        attributes = {
            key: value for key, value in shipment.items() if key not in ("shipmentId", "locationId")
        }
        return notification(
            connection, webhooks.SHIPMENT_CREATED, shipment_id, self.location_id, attributes, created_at
        )

    def cancel_order(
        self, connection: Connection, order_id: int, cancelled_at: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """The buyer cancels the whole order: the units go back and a thin ``shipment_cancelled`` is sent."""
        shipment = self.shipments[self.shipment_of_order[f"OD{order_id}"]]
        cancelled = []
        for item in shipment["orderItems"]:
            item["status"] = "CANCELLED"
            if item["sku"] in self.available:
                self.available[item["sku"]] += item["quantity"]
            cancelled.append(
                {
                    "orderItemId": item["orderItemId"],
                    "quantity": item["quantity"],
                    "reason": "buyer_cancellation",
                    "subReason": "order_no_longer_required",
                }
            )
        attributes = {"status": "CANCELLED", "orderItems": cancelled}
        return notification(
            connection,
            webhooks.SHIPMENT_CANCELLED,
            shipment["shipmentId"],
            self.location_id,
            attributes,
            cancelled_at,
        )


def notification(
    connection: Connection,
    event_type: str,
    shipment_id: str,
    location_id: str,
    attributes: dict[str, Any],
    at: datetime,
) -> tuple[bytes, dict[str, str]]:
    """A notification as the docs describe it, signed with the (invented) body signature."""
    body = json.dumps(
        {
            "eventType": event_type,
            "source": "flipkart",
            "version": "v3",
            "timestamp": at.isoformat(),
            "shipmentId": shipment_id,
            "locationId": location_id,
            "attributes": attributes,
        }
    ).encode()
    stamp = str(int(at.timestamp()))
    signature = webhooks.sign(connection.webhook_secret.get_secret_value(), stamp, body)
    headers = {
        "Content-Type": "application/json",
        webhooks.TIMESTAMP_HEADER: stamp,
        webhooks.SIGNATURE_HEADER: signature,
    }
    return body, headers


def sample_connection(
    base_url: str, *, skus: tuple[str, ...], conn_id: str = "flipkart-acme", tenant: str = "acme"
) -> Connection:
    """A connection to this simulator (base URL + ``/sellers``) with fresh random secrets
    (seller SKU ids fk-<sku>, FSNs FSN0000000000001, ...)."""
    return Connection(
        id=conn_id,
        tenant=tenant,
        channel="flipkart",
        webhook_secret=SecretStr(secrets.token_hex(32)),
        api_base_url=f"{base_url.rstrip('/')}{PREFIX}",
        access_token=SecretStr(secrets.token_urlsafe(32)),
        options={"location_id": DEFAULT_LOCATION, "app_id": f"app_{secrets.token_hex(6)}"},
        listings={
            sku: Listing(listing_id=f"fk-{sku}", inventory_ref=f"FSN{n:013d}")
            for n, sku in enumerate(skus, start=1)
        },
    )
