"""An Etsy simulator: Open API v3 listing inventory (get and replace), shop receipts, and Standard-Webhooks
signed thin ``order.paid`` / ``order.canceled`` webhooks.

It keeps per-product counts keyed by the product's SKU on Etsy (unique across the simulated shop), groups
products into listings, and behaves like Etsy where integrations trip: a PUT replaces the listing's whole
inventory (omitted products disappear), refuses read-only fields and Money-object prices, caps quantities at
999, and gives every product and offering new ids. It checks ``x-api-key`` and the bearer token, enforces a
token-bucket budget (HTTP 429 + ``retry-after``), records every write and can be told to fail the next calls.
Error bodies are Etsy's ``{"error": "<message>"}``; the exact messages are ours. Every receipt is kept and
listed by getShopReceipts (``GET /shops/{shop_id}/receipts``: ``min_last_modified``/``max_last_modified``,
``min_created``/``max_created`` in unix seconds, inclusive; ``sort_on`` created|updated|receipt_id,
``sort_order``, ``limit`` 1-100 (default 25), ``offset``; ``{"count", "results"}``), delivered webhook or not.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.etsy import API_PATH, MAX_QUANTITY, RATE_BURST, RATE_LIMIT_PER_S, webhooks
from channels.ratelimit import TokenBucket
from lab.marketplaces.base import MarketplaceSimulator, retry_after

PUBLIC_HOST = "https://openapi.etsy.com"
VARIATION_PROPERTY_ID = 513  # Etsy's id for a seller-defined custom variation property
_READ_ONLY_PRODUCT_FIELDS = ("product_id", "is_deleted")
_READ_ONLY_OFFERING_FIELDS = ("offering_id", "is_deleted")


@dataclass(frozen=True)
class InventoryCall:
    """One product of an updateListingInventory call (or the refused call) as the simulator saw it."""

    at: float
    listing_id: str
    sku: str | None
    quantity: int | None
    status: int
    error: str | None = None


@dataclass
class EtsySimulator(MarketplaceSimulator):
    """Simulated Etsy shop. ``available``/``prices``: by product SKU on Etsy; ``listings``: listing id -> its
    product SKUs; ``product_ids``: product SKU -> current (product, offering, property value) ids;
    ``receipts``: by receipt id; ``calls``: every inventory write."""

    api_key: str
    access_token: str
    shop_id: str
    available: dict[str, int] = field(default_factory=dict)
    listings: dict[str, list[str]] = field(default_factory=dict)
    prices: dict[str, int] = field(default_factory=dict)
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[InventoryCall] = field(default_factory=list)
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(RATE_LIMIT_PER_S, RATE_BURST))
    receipt_list_calls: int = 0  # getShopReceipts pages answered 200
    product_ids: dict[str, tuple[int, int, int]] = field(default_factory=dict, init=False)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(7_000_000_001), init=False)

    @classmethod
    def for_connection(
        cls, connection: Connection, quantities: Mapping[str, int] | None = None
    ) -> EtsySimulator:
        """A simulator for `connection`'s shop and credentials whose listings hold its mapped products,
        with the given counts by master SKU (0 if not given) and a price of 10.00 each."""
        quantities = quantities or {}
        if "api_key" not in connection.options or "shop_id" not in connection.options:
            raise ValueError(
                f"connection {connection.id!r} needs options.api_key and options.shop_id; "
                "build it with lab.marketplaces.etsy.sample_connection"
            )
        sim = cls(
            api_key=connection.options["api_key"],
            access_token=connection.access_token.get_secret_value(),
            shop_id=connection.options["shop_id"],
        )
        for sku, listing in connection.listings.items():
            etsy_sku = listing.inventory_ref or sku
            sim.listings.setdefault(listing.listing_id, []).append(etsy_sku)
            sim.available[etsy_sku] = quantities.get(sku, 0)
            sim.prices[etsy_sku] = 1000
        for skus in sim.listings.values():
            sim._renumber(skus)
        return sim

    def app(self) -> web.Application:
        app = web.Application()
        inventory = f"{API_PATH}/listings/{{listing_id}}/inventory"
        app.router.add_get(inventory, self._get_inventory)
        app.router.add_put(inventory, self._put_inventory)
        app.router.add_get(f"{API_PATH}/shops/{{shop_id}}/receipts/{{receipt_id}}", self._get_receipt)
        app.router.add_get(f"{API_PATH}/shops/{{shop_id}}/receipts", self._list_receipts)
        return app

    def _renumber(self, skus: list[str]) -> None:
        """New product, offering and property-value ids, as Etsy assigns on every inventory write."""
        for sku in skus:
            self.product_ids[sku] = (next(self._ids), next(self._ids), next(self._ids))

    def _refuse(self, status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    def refuse_credentials(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-api-key") != self.api_key:
            return self._refuse(403, "Invalid API key: x-api-key must be '<keystring>:<shared secret>'.")
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return self._refuse(401, "invalid_token")
        return None

    def throttled(self, wait: float) -> web.Response:
        response = self._refuse(429, "You have exceeded your quota of requests per second.")
        response.headers["retry-after"] = retry_after(wait)
        response.headers["x-limit-per-second"] = str(int(RATE_LIMIT_PER_S))
        response.headers["x-remaining-this-second"] = "0"
        return response

    def injected(self, status: int, *, outage: bool) -> web.Response:
        return self._refuse(status, "injected failure")

    def _guard(self, request: web.Request) -> web.Response | None:
        """Credentials, budget and injected failures, in that order; None lets the call through."""
        return self.gate(request, self.bucket)

    def _inventory(self, listing_id: str) -> dict[str, Any]:
        skus = self.listings[listing_id]
        varies = len(skus) > 1
        products = []
        for sku in skus:
            product_id, offering_id, value_id = self.product_ids[sku]
            values = (
                [
                    {
                        "property_id": VARIATION_PROPERTY_ID,
                        "property_name": "Variant",
                        "scale_id": None,
                        "scale_name": None,
                        "value_ids": [value_id],
                        "values": [sku],
                    }
                ]
                if varies
                else []
            )
            offering = {
                "offering_id": offering_id,
                "quantity": self.available[sku],
                "is_enabled": True,
                "is_deleted": False,
                "price": {"amount": self.prices[sku], "divisor": 100, "currency_code": "USD"},
            }
            products.append(
                {
                    "product_id": product_id,
                    "sku": sku,
                    "is_deleted": False,
                    "offerings": [offering],
                    "property_values": values,
                }
            )
        on_property = [VARIATION_PROPERTY_ID] if varies else []
        return {
            "products": products,
            "price_on_property": [],
            "quantity_on_property": on_property,
            "sku_on_property": on_property,
            "listing": None,
        }

    async def _get_inventory(self, request: web.Request) -> web.Response:
        refused = self._guard(request)
        if refused is not None:
            return refused
        listing_id = request.match_info["listing_id"]
        if listing_id not in self.listings:
            return self._refuse(404, f"Listing {listing_id} does not exist.")
        return web.json_response(self._inventory(listing_id))

    async def _put_inventory(self, request: web.Request) -> web.Response:
        refused = self._guard(request)
        if refused is not None:
            return refused
        listing_id = request.match_info["listing_id"]
        if listing_id not in self.listings:
            return self._refuse(404, f"Listing {listing_id} does not exist.")
        try:
            payload = await request.json()
        except json.JSONDecodeError:
            payload = None
        parsed = _parse_products(payload, multiple=len(self.listings[listing_id]) > 1)
        if isinstance(parsed, str):
            self.calls.append(InventoryCall(time.monotonic(), listing_id, None, None, 400, parsed))
            return self._refuse(400, parsed)
        # The listing now holds exactly the products sent: omitted ones are gone, as on Etsy.
        for sku in self.listings[listing_id]:
            if sku not in parsed:
                self.available.pop(sku, None)
        for sku, (quantity, price_cents) in parsed.items():
            self.available[sku] = quantity
            self.prices[sku] = price_cents
            self.calls.append(InventoryCall(time.monotonic(), listing_id, sku, quantity, 200))
        self.listings[listing_id] = list(parsed)
        self._renumber(self.listings[listing_id])
        return web.json_response(self._inventory(listing_id))

    async def _get_receipt(self, request: web.Request) -> web.Response:
        refused = self._guard(request)
        if refused is not None:
            return refused
        shop_id, receipt_id = request.match_info["shop_id"], request.match_info["receipt_id"]
        receipt = self.receipts.get(receipt_id)
        if shop_id != self.shop_id or receipt is None:
            return self._refuse(404, f"Receipt {receipt_id} of shop {shop_id} does not exist.")
        return web.json_response(receipt)

    async def _list_receipts(self, request: web.Request) -> web.Response:
        """getShopReceipts: time filters on the receipt's timestamps, sorted, offset-paged."""
        refused = self._guard(request)
        if refused is not None:
            return refused
        if request.match_info["shop_id"] != self.shop_id:
            return self._refuse(404, f"Shop {request.match_info['shop_id']} does not exist.")
        query = request.query
        numbers: dict[str, int] = {}
        for name in (
            "limit",
            "offset",
            "min_last_modified",
            "max_last_modified",
            "min_created",
            "max_created",
        ):
            if name in query:
                if not query[name].isascii() or not query[name].isdigit():
                    return self._refuse(400, f"Invalid input parameter: {name} must be a whole number")
                numbers[name] = int(query[name])
        limit, offset = numbers.get("limit", 25), numbers.get("offset", 0)
        if not 1 <= limit <= 100:
            return self._refuse(400, "Invalid input parameter: limit must be between 1 and 100")
        sort_on, sort_order = query.get("sort_on", "created"), query.get("sort_order", "desc")
        stamp = {"created": "create_timestamp", "updated": "update_timestamp", "receipt_id": "receipt_id"}
        if sort_on not in stamp or sort_order not in ("asc", "desc", "ascending", "descending"):
            return self._refuse(400, "Invalid input parameter: sort_on or sort_order")
        rows = list(self.receipts.values())
        for name, key, lowest in (
            ("min_last_modified", "update_timestamp", True),
            ("max_last_modified", "update_timestamp", False),
            ("min_created", "create_timestamp", True),
            ("max_created", "create_timestamp", False),
        ):
            if name in numbers:
                bound = numbers[name]
                rows = [r for r in rows if (r[key] >= bound if lowest else r[key] <= bound)]
        rows.sort(key=lambda r: (r[stamp[sort_on]], r["receipt_id"]), reverse=sort_order.startswith("desc"))
        self.receipt_list_calls += 1
        return web.json_response({"count": len(rows), "results": rows[offset : offset + limit]})

    def _etsy_sku(self, connection: Connection, sku: str) -> str:
        return connection.listings[sku].inventory_ref or sku

    def place_order(
        self,
        connection: Connection,
        order_id: int,
        lines: list[tuple[str, int]],
        created_at: datetime,
        *,
        sent_at: datetime | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A buyer pays on Etsy: Etsy decrements its counts, stores the receipt (id `order_id`) and sends a
        signed, thin ``order.paid`` webhook (attempt time `sent_at`, default now)."""
        for sku, qty in lines:
            etsy_sku = self._etsy_sku(connection, sku)
            if etsy_sku in self.available:
                self.available[etsy_sku] = max(0, self.available[etsy_sku] - qty)
        products = {
            sku: self.product_ids.get(self._etsy_sku(connection, sku), (None, None, None))[0]
            for sku, _ in lines
        }
        receipt = build_receipt(connection, order_id, lines, created_at, product_ids=products)
        self.receipts[str(order_id)] = receipt
        return order_webhook(connection, "order.paid", order_id, sent_at or datetime.now(UTC))

    def cancel_order(
        self,
        connection: Connection,
        order_id: int,
        canceled_at: datetime,
        *,
        sent_at: datetime | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The seller cancels receipt `order_id`: Etsy restocks its lines, marks the receipt canceled and
        sends a signed, thin ``order.canceled`` webhook."""
        receipt = self.receipts[str(order_id)]
        for transaction in receipt["transactions"]:
            if transaction["sku"] in self.available:
                self.available[transaction["sku"]] += transaction["quantity"]
        stamp = int(canceled_at.timestamp())
        receipt.update(status="canceled", update_timestamp=stamp, updated_timestamp=stamp)
        return order_webhook(connection, "order.canceled", order_id, sent_at or datetime.now(UTC))


def _parse_products(payload: Any, *, multiple: bool) -> dict[str, tuple[int, int]] | str:
    """Product SKU -> (quantity, price in cents) of an updateListingInventory body, or Etsy's complaint."""
    products = payload.get("products") if isinstance(payload, dict) else None
    if not isinstance(products, list) or not products:
        return "Missing Input Parameter: [products]"
    parsed: dict[str, tuple[int, int]] = {}
    for product in products:
        if not isinstance(product, dict):
            return "There was a problem with /products : must be an array of objects"
        for name in _READ_ONLY_PRODUCT_FIELDS:
            if name in product:
                return f"There was a problem with /products : '{name}' is not allowed"
        sku = product.get("sku")
        values = product.get("property_values")
        if not isinstance(sku, str) or not sku or sku in parsed:
            return f"Each product needs its own non-empty 'sku' (got {sku!r})"
        if not isinstance(values, list) or (multiple and not values):
            return "Property values can't be empty"
        if any(isinstance(v, dict) and "scale_name" in v for v in values):
            return "There was a problem with /property_values : 'scale_name' is not allowed"
        offerings = product.get("offerings")
        if not isinstance(offerings, list) or len(offerings) != 1 or not isinstance(offerings[0], dict):
            return f"Product {sku} needs exactly one offering"
        offering = offerings[0]
        for name in _READ_ONLY_OFFERING_FIELDS:
            if name in offering:
                return f"There was a problem with /offerings : '{name}' is not allowed"
        price, quantity = offering.get("price"), offering.get("quantity")
        if not isinstance(price, (int, float)) or isinstance(price, bool) or price <= 0:
            return f"There was a problem with /offerings/price : expected a number, got {price!r}"
        if not isinstance(quantity, int) or isinstance(quantity, bool) or not 0 <= quantity <= MAX_QUANTITY:
            return f"There was a problem with /offerings/quantity : must be 0 to {MAX_QUANTITY}"
        if not isinstance(offering.get("is_enabled"), bool):
            return "There was a problem with /offerings/is_enabled : expected a boolean"
        parsed[sku] = (quantity, round(price * 100))
    return parsed


def build_receipt(
    connection: Connection,
    receipt_id: int,
    lines: list[tuple[str, int]],
    created_at: datetime,
    *,
    product_ids: Mapping[str, int | None] | None = None,
    status: str = "paid",
) -> dict[str, Any]:
    """A ShopReceipt as getShopReceipt returns it (trimmed to the fields that matter here), one transaction
    (id ``receipt_id * 100 + n``) per line of master SKU and quantity."""
    stamp = int(created_at.timestamp())
    prefix = connection.access_token.get_secret_value().split(".", 1)[0]
    user_id = int(prefix) if prefix.isascii() and prefix.isdigit() else 0
    transactions = []
    for n, (sku, qty) in enumerate(lines, start=1):
        listing = connection.listings[sku]
        transactions.append(
            {
                "transaction_id": receipt_id * 100 + n,
                "receipt_id": receipt_id,
                "listing_id": int(listing.listing_id),
                "product_id": (product_ids or {}).get(sku),
                "sku": listing.inventory_ref or sku,
                "quantity": qty,
                "title": sku,
                "seller_user_id": user_id,
                "create_timestamp": stamp,
                "created_timestamp": stamp,
                "paid_timestamp": stamp,
                "shipped_timestamp": None,
                "transaction_type": "listing",
                "price": {"amount": 1000, "divisor": 100, "currency_code": "USD"},
            }
        )
    return {
        "receipt_id": receipt_id,
        "receipt_type": 0,
        "seller_user_id": user_id,
        "status": status,
        "is_paid": True,
        "is_shipped": False,
        "create_timestamp": stamp,
        "created_timestamp": stamp,
        "update_timestamp": stamp,
        "updated_timestamp": stamp,
        "transactions": transactions,
        "refunds": [],
    }


def order_webhook(
    connection: Connection,
    event_type: str,
    receipt_id: int,
    sent_at: datetime,
    *,
    msg_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A signed thin webhook as Etsy sends it (body bytes and headers) for receipt `receipt_id`."""
    shop_id = connection.options["shop_id"]
    body = json.dumps(
        {
            "event_type": event_type,
            "resource_url": f"{PUBLIC_HOST}{API_PATH}/shops/{shop_id}/receipts/{receipt_id}",
            "shop_id": int(shop_id),
        }
    ).encode()
    msg_id = msg_id or f"msg_{secrets.token_urlsafe(18)}"
    timestamp = int(sent_at.timestamp())
    headers = {
        "Content-Type": "application/json",
        webhooks.ID_HEADER: msg_id,
        webhooks.TIMESTAMP_HEADER: str(timestamp),
        webhooks.SIGNATURE_HEADER: webhooks.sign(
            connection.webhook_secret.get_secret_value(), msg_id, timestamp, body
        ),
    }
    return body, headers


def sample_connection(
    base_url: str,
    *,
    skus: tuple[str, ...],
    conn_id: str = "etsy-acme",
    tenant: str = "acme",
    shop_id: str = "31415926",
) -> Connection:
    """A connection to this simulator: fresh random ``whsec_`` secret, API key and user token, and one
    single-product listing per SKU (listing ids 1500000001, ...; the Etsy SKU is the master SKU)."""
    return Connection(
        id=conn_id,
        tenant=tenant,
        channel="etsy",
        webhook_secret=SecretStr(webhooks.SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()),
        api_base_url=base_url,
        access_token=SecretStr(f"27182818.{secrets.token_urlsafe(32)}"),
        options={"shop_id": shop_id, "api_key": f"{secrets.token_hex(12)}:{secrets.token_hex(5)}"},
        listings={sku: Listing(listing_id=str(1_500_000_000 + n)) for n, sku in enumerate(skus, start=1)},
    )
