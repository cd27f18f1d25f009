"""A WooCommerce store simulator: the REST v3 product/variation stock endpoints and signed order webhooks.

It keeps ``stock_quantity`` per product or variation id (``available``, keys as strings), checks HTTP Basic
consumer key/secret, enforces a token-bucket budget (WooCommerce has none itself; this stands for the host or
a security plugin answering 429), refuses batches over 100 items with 413 as WooCommerce does, records every
stock write, and can be told to fail the next calls. Orders decrement stock as checkout does; cancelling or
refunding one restores it (WooCommerce's ``wc_maybe_increase_stock_levels``). Every order is kept and served
by ``GET /orders`` (``modified_after``/``after`` with ``dates_are_gmt``, ``orderby`` date|id|modified,
``order``, ``status``, ``page``/``per_page`` up to 100; ``X-WP-Total``, ``X-WP-TotalPages`` and a ``Link``
header), whether or not its webhook was delivered.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.ratelimit import TokenBucket
from channels.woocommerce import MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S, webhooks
from lab.marketplaces.base import MarketplaceSimulator, basic_credentials, retry_after

PREFIX = "/wp-json/wc/v3"


@dataclass(frozen=True)
class StockWrite:
    """One stock write as the simulator saw it (a single PUT or one item of a batch)."""

    at: float
    item_id: str
    quantity: int
    status: int
    via: str  # "put" or "batch"
    error: str | None = None


@dataclass
class WooCommerceSimulator(MarketplaceSimulator):
    FAILURES_BEFORE_BUDGET = True

    consumer_key: str = ""
    consumer_secret: str = ""
    available: dict[str, int] = field(default_factory=dict)
    parents: dict[str, str] = field(default_factory=dict)  # variation id -> parent product id
    calls: list[StockWrite] = field(default_factory=list)
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    order_list_calls: int = 0  # order-list pages answered 200
    rate_per_s: float = RATE_LIMIT_PER_S
    burst: float = RATE_BURST
    clock: Callable[[], float] = time.monotonic
    bucket: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.rate_per_s, self.burst, clock=self.clock)

    @classmethod
    def for_connection(
        cls, connection: Connection, *, quantity: int = 0, **kwargs: Any
    ) -> WooCommerceSimulator:
        """A store holding `connection`'s listings at `quantity` each, accepting its REST key."""
        key, _, secret = connection.access_token.get_secret_value().partition(":")
        simulator = cls(consumer_key=key, consumer_secret=secret, **kwargs)
        simulator.stock(connection, quantity)
        return simulator

    def stock(self, connection: Connection, quantity: int) -> None:
        """Create (or reset) every listed product/variation of `connection` at `quantity`."""
        for listing in connection.listings.values():
            item, parent = _item_of(listing)
            self.available[item] = quantity
            if parent is not None:
                self.parents[item] = parent

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put(PREFIX + r"/products/{id:\d+}", self._put)
        app.router.add_put(PREFIX + r"/products/{parent:\d+}/variations/{id:\d+}", self._put)
        app.router.add_post(PREFIX + "/products/batch", self._batch)
        app.router.add_post(PREFIX + r"/products/{parent:\d+}/variations/batch", self._batch)
        app.router.add_get(PREFIX + "/products", self._list)
        app.router.add_get(PREFIX + r"/products/{parent:\d+}/variations", self._list)
        app.router.add_get(PREFIX + "/orders", self._orders)
        return app

    # -- REST API -------------------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
        body = {"code": code, "message": message, "data": {"status": status}}
        return web.json_response(body, status=status, headers=headers)

    def refuse_credentials(self, request: web.Request) -> web.Response | None:
        if basic_credentials(request.headers.get("Authorization", "")) != (
            self.consumer_key,
            self.consumer_secret,
        ):
            return self._error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        return None

    def throttled(self, wait: float) -> web.Response:
        return self._error(
            429, "rest_too_many_requests", "Too many requests; slow down.", {"Retry-After": retry_after(wait)}
        )

    def injected(self, status: int, *, outage: bool) -> web.Response:
        return self._error(status, "injected_failure", "injected failure")

    def _gate(self, request: web.Request) -> web.Response | None:
        """Auth, injected failures and the budget, in that order; None lets the request through."""
        return self.gate(request, self.bucket)

    def _known(self, item: str, parent: str | None) -> bool:
        return item in self.available and self.parents.get(item) == parent

    def _representation(self, item: str) -> dict[str, Any]:
        quantity = self.available[item]
        body: dict[str, Any] = {
            "id": int(item),
            "manage_stock": True,
            "stock_quantity": quantity,
            "stock_status": "instock" if quantity > 0 else "outofstock",
        }
        if item in self.parents:
            body["parent_id"] = int(self.parents[item])
        return body

    def _apply(self, item: str, parent: str | None, change: Any, via: str) -> tuple[int, str | None]:
        """Apply and record one update: (status, None) when applied, else (status, WooCommerce's message)."""
        quantity = change.get("stock_quantity") if isinstance(change, dict) else None
        status, error = 200, None
        if not self._known(item, parent):
            status, error = 404, "Invalid ID."
        elif not isinstance(quantity, int) or isinstance(quantity, bool):
            status, error = 400, "Invalid parameter(s): stock_quantity"
        else:
            self.available[item] = quantity
        recorded = quantity if isinstance(quantity, int) and not isinstance(quantity, bool) else -1
        self.calls.append(StockWrite(time.monotonic(), item, recorded, status, via, error))
        return status, error

    async def _put(self, request: web.Request) -> web.Response:
        if (refused := self._gate(request)) is not None:
            return refused
        item, parent = request.match_info["id"], request.match_info.get("parent")
        try:
            change = await request.json()
        except json.JSONDecodeError:
            return self._error(400, "rest_invalid_json", "Invalid JSON body passed.")
        status, error = self._apply(item, parent, change, "put")
        if error is not None:
            code = "woocommerce_rest_product_invalid_id" if status == 404 else "rest_invalid_param"
            return self._error(status, code, error)
        return web.json_response(self._representation(item))

    async def _batch(self, request: web.Request) -> web.Response:
        if (refused := self._gate(request)) is not None:
            return refused
        parent = request.match_info.get("parent")
        try:
            spec = await request.json()
        except json.JSONDecodeError:
            return self._error(400, "rest_invalid_json", "Invalid JSON body passed.")
        updates = spec.get("update", []) if isinstance(spec, dict) else None
        if not isinstance(updates, list) or (isinstance(spec, dict) and {"create", "delete"} & spec.keys()):
            return self._error(400, "rest_invalid_param", "this simulator serves batch 'update' only")
        if len(updates) > MAX_BATCH:
            return self._error(
                413,
                "woocommerce_rest_request_entity_too_large",
                f"Unable to accept more than {MAX_BATCH} items for this request.",
            )
        results: list[dict[str, Any]] = []
        for change in updates:
            raw_id = change.get("id") if isinstance(change, dict) else None
            item = str(raw_id)
            status, error = self._apply(item, parent, change, "batch")
            if error is None:
                results.append(self._representation(item))
            else:
                code = "woocommerce_rest_product_invalid_id" if status == 404 else "rest_invalid_param"
                error_body = {"code": code, "message": error, "data": {"status": status}}
                results.append({"id": raw_id, "error": error_body})
        return web.json_response({"update": results})

    async def _list(self, request: web.Request) -> web.Response:
        if (refused := self._gate(request)) is not None:
            return refused
        parent = request.match_info.get("parent")
        wanted = [i for i in request.query.get("include", "").split(",") if i]
        per_page_text = request.query.get("per_page", "10")
        per_page = int(per_page_text) if per_page_text.isdigit() else 0
        if not 1 <= per_page <= 100:
            return self._error(400, "rest_invalid_param", "Invalid parameter(s): per_page")
        items = [i for i in wanted if self._known(i, parent)][:per_page]
        return web.json_response([self._representation(i) for i in items])

    async def _orders(self, request: web.Request) -> web.Response:
        """``GET /orders``: WordPress-style page pagination over the filtered, sorted order list."""
        if (refused := self._gate(request)) is not None:
            return refused
        query = request.query
        numbers = {name: query.get(name, default) for name, default in (("per_page", "10"), ("page", "1"))}
        if not all(v.isdigit() for v in numbers.values()):
            return self._error(400, "rest_invalid_param", "Invalid parameter(s): per_page, page")
        per_page, page = int(numbers["per_page"]), int(numbers["page"])
        if not 1 <= per_page <= 100 or page < 1:
            return self._error(400, "rest_invalid_param", "Invalid parameter(s): per_page, page")
        orderby, order = query.get("orderby", "date"), query.get("order", "desc")
        sort_field = {"date": "date_created_gmt", "modified": "date_modified_gmt", "id": "id"}.get(orderby)
        if sort_field is None or order not in ("asc", "desc"):
            return self._error(400, "rest_invalid_param", "Invalid parameter(s): orderby, order")
        rows = list(self.orders.values())
        status = query.get("status", "any")
        if status != "any":
            rows = [o for o in rows if o["status"] in status.split(",")]
        for param, fieldname in (("after", "date_created_gmt"), ("modified_after", "date_modified_gmt")):
            if param not in query:
                continue
            bound = _wp_time(query[param], gmt=query.get("dates_are_gmt") == "true")
            if bound is None:
                return self._error(400, "rest_invalid_param", f"Invalid parameter(s): {param}")
            # stored *_gmt values are naive UTC; WordPress keeps what is strictly after the bound
            rows = [o for o in rows if datetime.fromisoformat(o[fieldname]).replace(tzinfo=UTC) > bound]
        rows.sort(key=lambda o: (o[sort_field], o["id"]), reverse=order == "desc")
        total_pages = math.ceil(len(rows) / per_page)
        if rows and page > total_pages:
            return self._error(
                400,
                "rest_post_invalid_page_number",
                "The page number requested is larger than the number of pages available.",
            )
        self.order_list_calls += 1
        headers = {"X-WP-Total": str(len(rows)), "X-WP-TotalPages": str(total_pages)}
        if page < total_pages:
            headers["Link"] = f'<{request.url.update_query(page=str(page + 1))}>; rel="next"'
        return web.json_response(rows[(page - 1) * per_page : page * per_page], headers=headers)

    # -- the storefront -------------------------------------------------------------------------------------

    def place_order(
        self, connection: Connection, order_id: int, lines: list[tuple[str, int]], created_at: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """A buyer checks out: stock goes down as WooCommerce reduces it, and ``order.created`` is signed."""
        items = []
        for n, (sku, quantity) in enumerate(lines, start=1):
            item, parent = _item_of(connection.listings[sku])
            if item in self.available:
                self.available[item] = max(0, self.available[item] - quantity)
            items.append(
                {
                    "id": order_id * 100 + n,
                    "name": sku,
                    "product_id": int(parent if parent is not None else item),
                    "variation_id": int(item) if parent is not None else 0,
                    "quantity": quantity,
                    "sku": sku,
                    "total": "10.00",
                }
            )
        stamp = _gmt(created_at)
        order: dict[str, Any] = {
            "id": order_id,
            "parent_id": 0,
            "number": str(order_id),
            "status": "processing",
            "currency": "USD",
            "date_created": stamp,
            "date_created_gmt": stamp,
            "date_modified": stamp,
            "date_modified_gmt": stamp,
            "line_items": items,
        }
        self.orders[order_id] = order
        return order_webhook(connection, order, "order.created")

    def cancel_order(
        self, connection: Connection, order_id: int, cancelled_at: datetime, *, status: str = "cancelled"
    ) -> tuple[bytes, dict[str, str]]:
        """The seller cancels (or fully refunds, restocking) an order: stock comes back, ``order.updated``."""
        order = self.orders[order_id]
        for line in order["line_items"]:
            item = str(line["variation_id"] or line["product_id"])
            if item in self.available:
                self.available[item] += line["quantity"]
        order.update(status=status, date_modified=_gmt(cancelled_at), date_modified_gmt=_gmt(cancelled_at))
        return order_webhook(connection, order, "order.updated")


def _item_of(listing: Listing) -> tuple[str, str | None]:
    """(item id, parent id or None) of a listing, as the client reads it."""
    if listing.inventory_ref:
        parent, _, variation = listing.inventory_ref.partition("/")
        return variation, parent
    return listing.listing_id, None


def _wp_time(text: str, *, gmt: bool) -> datetime | None:
    """A WordPress date parameter as UTC (no offset: UTC when `gmt`, else the site's zone, UTC here)."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _gmt(moment: datetime) -> str:
    # WooCommerce writes *_gmt as UTC without an offset.
    return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat()


def order_webhook(
    connection: Connection, order: dict[str, Any], topic: str, *, webhook_id: int = 1
) -> tuple[bytes, dict[str, str]]:
    """A signed order webhook as WooCommerce sends it: compact JSON of the REST order, and its headers."""
    body = json.dumps(order, separators=(",", ":")).encode()
    resource, _, event = topic.partition(".")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "WooCommerce/10.3.0 Hookshot (WordPress/6.8.3)",
        webhooks.SOURCE_HEADER: connection.api_base_url.rstrip("/") + "/",
        webhooks.TOPIC_HEADER: topic,
        webhooks.RESOURCE_HEADER: resource,
        webhooks.EVENT_HEADER: event,
        webhooks.SIGNATURE_HEADER: webhooks.sign(connection.webhook_secret.get_secret_value(), body),
        webhooks.WEBHOOK_ID_HEADER: str(webhook_id),
        webhooks.DELIVERY_ID_HEADER: secrets.token_hex(16),  # new on every send, like WooCommerce's
    }
    return body, headers


def sample_connection(
    base_url: str, *, skus: tuple[str, ...], conn_id: str = "woocommerce-acme", tenant: str = "acme"
) -> Connection:
    """A connection to this simulator with fresh random secrets. Odd-numbered SKUs are simple products
    (ids 101, 103, ...); even-numbered ones are variations 702, 704, ... of variable product 500."""
    listings = {}
    for n, sku in enumerate(skus, start=1):
        if n % 2:
            listings[sku] = Listing(listing_id=str(100 + n))
        else:
            listings[sku] = Listing(listing_id=str(700 + n), inventory_ref=f"500/{700 + n}")
    return Connection(
        id=conn_id,
        tenant=tenant,
        channel="woocommerce",
        webhook_secret=SecretStr(secrets.token_urlsafe(24)),
        api_base_url=base_url,
        access_token=SecretStr(f"ck_{secrets.token_hex(20)}:cs_{secrets.token_hex(20)}"),
        listings=listings,
    )
