"""A BigCommerce simulator: v2 order products, Catalog API variant batch writes and reads, thin webhooks.

It checks ``X-Auth-Token`` and the store hash, keeps per-variant ``inventory_level`` at the default
location, answers more than MAX_BATCH variants with 413 and partly failed batches with 207, enforces a token
bucket (429 with ``Retry-After`` and BigCommerce's ``X-Rate-Limit-*`` headers), records every variant write,
and can be told to fail. Webhooks carry the subscription's custom secret header, as BigCommerce sends them.
Every order is kept and listed by v2 ``GET /orders`` (``min_date_modified``/``max_date_modified`` in RFC 2822
or ISO 8601, inclusive; ``sort`` ``id``/``date_created``/``date_modified`` with ``:asc``/``:desc``; ``page``,
``limit`` up to 250; 204 for an empty page), whether or not its webhook was delivered.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from channels.bigcommerce import MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S, api, webhooks
from channels.connection import Connection, Listing
from channels.ratelimit import TokenBucket
from lab.marketplaces.base import MarketplaceSimulator, retry_after


def _number(value: str) -> int | str:
    """BigCommerce ids are integers on the wire; keep anything else as given."""
    return int(value) if value.isascii() and value.isdigit() else value


@dataclass(frozen=True)
class VariantWrite:
    """One variant of one ``PUT /v3/catalog/variants`` call as the simulator saw it."""

    at: float
    variant_id: str
    quantity: int
    status: int
    error: str | None = None


@dataclass
class BigCommerceSimulator(MarketplaceSimulator):
    store_hash: str = ""
    access_token: str = ""
    available: dict[str, int] = field(default_factory=dict)  # inventory_level by variant id
    product_of: dict[str, str] = field(default_factory=dict)  # variant id -> product id
    variant_skus: dict[str, str] = field(default_factory=dict)  # variant id -> its SKU code
    orders: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # order id -> product lines
    order_book: dict[str, dict[str, Any]] = field(default_factory=dict)  # order id -> v2 order (no lines)
    order_list_calls: int = 0  # order-list pages answered
    calls: list[VariantWrite] = field(default_factory=list)
    writes: int = 0  # batch requests that reached the handler
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(RATE_LIMIT_PER_S, RATE_BURST))

    def adopt(self, connection: Connection, initial: int = 0) -> None:
        """Take the connection's store hash and token and list its variants with `initial` units each."""
        self.store_hash = connection.options.get("store_hash", "")
        self.access_token = connection.access_token.get_secret_value()
        for sku, listing in connection.listings.items():
            self.available.setdefault(listing.listing_id, initial)
            self.product_of[listing.listing_id] = listing.inventory_ref or ""
            self.variant_skus[listing.listing_id] = sku

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/stores/{store_hash}/v2/orders/{order_id}/products", self._order_products)
        app.router.add_get("/stores/{store_hash}/v2/orders", self._list_orders)
        app.router.add_put("/stores/{store_hash}/v3/catalog/variants", self._update_variants)
        app.router.add_get("/stores/{store_hash}/v3/catalog/products/{product_id}/variants", self._variants)
        return app

    @staticmethod
    def _error(status: int, title: str) -> web.Response:
        return web.json_response(
            {"status": status, "title": title, "type": "/api-docs/getting-started/api-status-codes"},
            status=status,
        )

    def refuse_credentials(self, request: web.Request) -> web.Response | None:
        if request.headers.get(api.AUTH_HEADER) != self.access_token:
            return self._error(401, "You are not authorized to access this resource: check X-Auth-Token")
        if request.match_info["store_hash"] != self.store_hash:
            return self._error(404, "Store not found")
        return None

    def throttled(self, wait: float) -> web.Response:
        return web.json_response(
            {"status": 429, "title": "Too many requests"},
            status=429,
            headers={
                "Retry-After": retry_after(wait),
                api.RESET_HEADER: str(max(1, math.ceil(wait * 1000))),
                "X-Rate-Limit-Time-Window-Ms": "30000",
                "X-Rate-Limit-Requests-Left": "0",
                "X-Rate-Limit-Requests-Quota": "150",
            },
        )

    def injected(self, status: int, *, outage: bool) -> web.Response:
        return self._error(status, "injected outage" if outage else "injected failure")

    def _guard(self, request: web.Request) -> web.Response | None:
        return self.gate(request, self.bucket)

    async def _order_products(self, request: web.Request) -> web.Response:
        if refused := self._guard(request):
            return refused
        order_id = request.match_info["order_id"]
        if order_id not in self.orders:
            # v2 errors are a list of {status, message}
            return web.json_response(
                [{"status": 404, "message": "The requested resource was not found."}], status=404
            )
        page, limit = int(request.query.get("page", "1")), int(request.query.get("limit", "50"))
        lines = self.orders[order_id][(page - 1) * limit : page * limit]
        return web.json_response(lines) if lines else web.Response(status=204)

    async def _list_orders(self, request: web.Request) -> web.Response:
        """v2 ``GET /orders``: filtered on date_modified (inclusive), sorted, page/limit; 204 if empty."""
        if refused := self._guard(request):
            return refused
        query = request.query
        page_text, limit_text = query.get("page", "1"), query.get("limit", "50")
        if not (page_text.isdigit() and limit_text.isdigit()) or int(page_text) < 1:
            return _v2_error(400, "The field 'page' or 'limit' is invalid.")
        page, limit = int(page_text), int(limit_text)
        if not 1 <= limit <= 250:
            return _v2_error(400, "The field 'limit' must be from 1 to 250.")
        field_name, _, direction = query.get("sort", "id:asc").partition(":")
        if field_name not in ("id", "date_created", "date_modified") or direction not in ("", "asc", "desc"):
            return _v2_error(400, f"The field 'sort' {query.get('sort')!r} is invalid.")
        bounds: dict[str, datetime] = {}
        for param in ("min_date_modified", "max_date_modified"):
            if param in query:
                if (bound := _v2_time(query[param])) is None:
                    return _v2_error(400, f"The field '{param}' is not a valid RFC 2822 or ISO 8601 date.")
                bounds[param] = bound
        lowest = bounds.get("min_date_modified", datetime.min.replace(tzinfo=UTC))
        highest = bounds.get("max_date_modified", datetime.max.replace(tzinfo=UTC))
        rows = [o for o in self.order_book.values() if lowest <= _modified(o) <= highest]
        if field_name == "id":
            rows.sort(key=lambda o: int(o["id"]), reverse=direction == "desc")
        else:
            rows.sort(key=lambda o: (_modified(o, field_name), o["id"]), reverse=direction == "desc")
        chunk = rows[(page - 1) * limit : page * limit]
        self.order_list_calls += 1
        return web.json_response(chunk) if chunk else web.Response(status=204)

    async def _update_variants(self, request: web.Request) -> web.Response:
        if refused := self._guard(request):
            return refused
        self.writes += 1
        try:
            body = json.loads(await request.read())
        except json.JSONDecodeError:
            return self._error(400, "The request body is not valid JSON")
        if not isinstance(body, list) or not body:
            return self._error(422, "The request body must be a non-empty array of variants")
        if len(body) > MAX_BATCH:
            return self._error(
                413,
                f"The request payload is too large. The maximum items allowed in the array is {MAX_BATCH}",
            )
        updated: list[dict[str, Any]] = []
        errors: dict[str, str] = {}
        for item in body:
            variant_id = str(item.get("id")) if isinstance(item, dict) else "?"
            level = item.get("inventory_level") if isinstance(item, dict) else None
            error = None
            if variant_id not in self.available:
                error = f"variant {variant_id} was not found"
            elif isinstance(level, bool) or not isinstance(level, int) or level < 0:
                error = f"inventory_level {level!r} must be a whole number of at least 0"
            self.calls.append(
                VariantWrite(
                    time.monotonic(),
                    variant_id,
                    level if isinstance(level, int) else -1,
                    207 if error else 200,
                    error,
                )
            )
            if error or not isinstance(level, int):
                errors[variant_id] = error or "inventory_level is required"
                continue
            self.available[variant_id] = level
            updated.append(self._variant(variant_id))
        if errors:
            body_207 = {
                "data": updated,
                "errors": {
                    "status": 207,
                    "title": "Some variants could not be updated",
                    "type": "",
                    "errors": errors,
                },
                "meta": {},
            }
            return web.json_response(body_207, status=207)
        return web.json_response({"data": updated, "meta": {}})

    def _variant(self, variant_id: str) -> dict[str, Any]:
        return {
            "id": _number(variant_id),
            "product_id": _number(self.product_of[variant_id]),
            "sku": self.variant_skus.get(variant_id, ""),
            "inventory_level": self.available[variant_id],
        }

    async def _variants(self, request: web.Request) -> web.Response:
        if refused := self._guard(request):
            return refused
        product_id = request.match_info["product_id"]
        variants = [self._variant(v) for v, p in self.product_of.items() if p == product_id]
        if not variants:
            return self._error(404, "The requested resource was not found.")
        page, limit = int(request.query.get("page", "1")), int(request.query.get("limit", "50"))
        total_pages = max(1, math.ceil(len(variants) / limit))
        pagination = {
            "total": len(variants),
            "count": len(variants[(page - 1) * limit : page * limit]),
            "per_page": limit,
            "current_page": page,
            "total_pages": total_pages,
        }
        return web.json_response(
            {"data": variants[(page - 1) * limit : page * limit], "meta": {"pagination": pagination}}
        )

    def place_order(
        self, connection: Connection, order_id: int, lines: list[tuple[str, int]], created_at: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """A shopper checks out: BigCommerce takes the stock and sends the thin ``store/order/created``."""
        products = []
        for n, (sku, qty) in enumerate(lines, start=1):
            listing = connection.listings[sku]
            if listing.listing_id in self.available:
                self.available[listing.listing_id] = max(0, self.available[listing.listing_id] - qty)
            products.append(
                {
                    "id": order_id * 100 + n,
                    "order_id": order_id,
                    "product_id": _number(listing.inventory_ref or "0"),
                    "variant_id": _number(listing.listing_id),
                    "name": sku,
                    "sku": sku,
                    "quantity": qty,
                    "base_price": "10.0000",
                }
            )
        self.orders[str(order_id)] = products
        stamp = format_datetime(created_at.astimezone(UTC))
        resource = f"/orders/{order_id}/products"
        self.order_book[str(order_id)] = {
            "id": order_id,
            "status_id": 11,
            "status": "Awaiting Fulfillment",
            "date_created": stamp,
            "date_modified": stamp,
            "items_total": sum(qty for _, qty in lines),
            "products": {
                "url": f"{connection.api_base_url}/stores/{self.store_hash}/v2{resource}",
                "resource": resource,
            },
        }
        return order_webhook(connection, webhooks.CREATED, order_id, created_at)

    def cancel_order(
        self, connection: Connection, order_id: int, cancelled_at: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """The merchant cancels: the units go back and ``store/order/statusUpdated`` (to 5) is sent."""
        for line in self.orders[str(order_id)]:
            variant = str(line["variant_id"])
            if variant in self.available:
                self.available[variant] += int(line["quantity"])
        self.order_book[str(order_id)].update(
            status_id=5, status="Cancelled", date_modified=format_datetime(cancelled_at.astimezone(UTC))
        )
        return order_webhook(
            connection,
            webhooks.STATUS_UPDATED,
            order_id,
            cancelled_at,
            status={"previous_status_id": 11, "new_status_id": 5},
        )


def _v2_error(status: int, message: str) -> web.Response:
    return web.json_response([{"status": status, "message": message}], status=status)


def _modified(order: dict[str, Any], name: str = "date_modified") -> datetime:
    return _v2_time(order[name]) or datetime.min.replace(tzinfo=UTC)


def _v2_time(text: str) -> datetime | None:
    """A v2 date (RFC 2822 as BigCommerce writes them, or ISO 8601) as an aware time; None if neither."""
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def order_webhook(
    connection: Connection, scope: str, order_id: int, at: datetime, *, status: dict[str, int] | None = None
) -> tuple[bytes, dict[str, str]]:
    """A webhook callback as BigCommerce sends it: thin body, the subscription's custom header."""
    data: dict[str, Any] = {"type": "order", "id": order_id}
    if status is not None:
        data["status"] = status
    store_hash = connection.options.get("store_hash", "")
    event = f"{scope}|{order_id}|{json.dumps(status)}"
    body = json.dumps(
        {
            "scope": scope,
            "store_id": "1001234",
            "producer": f"stores/{store_hash}",
            "data": data,
            "hash": hashlib.sha1(event.encode(), usedforsecurity=False).hexdigest(),
            "created_at": int(at.timestamp()),
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        webhooks.SECRET_HEADER: connection.webhook_secret.get_secret_value(),
    }
    return body, headers


def sample_connection(
    base_url: str, *, skus: tuple[str, ...], conn_id: str = "bigcommerce-acme", tenant: str = "acme"
) -> Connection:
    """A connection to this simulator with fresh random secrets; three variants per product
    (variant ids 501, 502, ...; product ids 111, 112, ...)."""
    return Connection(
        id=conn_id,
        tenant=tenant,
        channel="bigcommerce",
        webhook_secret=SecretStr(secrets.token_urlsafe(24)),
        api_base_url=base_url,
        access_token=SecretStr(secrets.token_hex(16)),
        options={"store_hash": f"s{secrets.token_hex(4)}"},
        listings={
            sku: Listing(listing_id=str(500 + n), inventory_ref=str(110 + (n + 2) // 3))
            for n, sku in enumerate(skus, start=1)
        },
    )
