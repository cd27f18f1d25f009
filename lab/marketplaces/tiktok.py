"""A TikTok Shop simulator: Get Order Detail, Update Inventory, Get Product, and signed notifications.

It checks what TikTok checks (access token, app key, request ``sign``), keeps per-SKU-id counts at one
warehouse, answers business errors the TikTok way (HTTP 200, non-zero ``code``), enforces a token bucket
per API (429 with Retry-After; TikTok throttles per app, shop and API, so order reads do not spend the
inventory writes' budget), records every inventory write, and can be told to fail.
Orders list one line item per unit, without ``quantity``, as 202309 order details do. Every order placed
stays in the order book and is served by Get Order List (``POST /order/202309/orders/search``: ``page_size``,
``page_token``, ``sort_field``/``sort_order`` in the query, ``create_time_ge``/``update_time_ge`` in the
body; ``data.next_page_token`` empty on the last page) whether or not its notification was delivered. The
page token is opaque (here: where the page ended).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.ratelimit import TokenBucket
from channels.tiktok import API_VERSION, RATE_BURST, RATE_LIMIT_PER_S, api, webhooks
from lab.marketplaces.base import MarketplaceSimulator, retry_after

MAX_ORDER_PAGE = 100  # Get Order List's largest page_size

DEFAULT_WAREHOUSE = "7068517275539719942"


@dataclass(frozen=True)
class InventoryCall:
    """One SKU of one Update Inventory call as the simulator saw it."""

    at: float
    product_id: str
    sku_id: str
    warehouse_id: str
    quantity: int
    status: int
    error: str | None = None


@dataclass
class TikTokSimulator(MarketplaceSimulator):
    app_key: str = ""
    app_secret: str = ""
    access_token: str = ""
    warehouse_id: str = DEFAULT_WAREHOUSE
    available: dict[str, int] = field(default_factory=dict)  # by TikTok SKU id
    products: dict[str, list[str]] = field(default_factory=dict)  # product id -> its SKU ids
    seller_skus: dict[str, str] = field(default_factory=dict)  # SKU id -> seller SKU
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[InventoryCall] = field(default_factory=list)
    writes: int = 0  # Update Inventory requests that reached the handler
    buckets: dict[str, TokenBucket] = field(default_factory=dict)  # per API, made on first use
    # The body of the request being gated, for the sign check: `_guard` sets it and gates with no await
    # in between, so concurrent requests cannot mix their bodies up.
    _signed_body: bytes = field(default=b"", init=False, repr=False, compare=False)

    def adopt(self, connection: Connection, initial: int = 0) -> None:
        """Take the connection's credentials and list its SKUs with `initial` units each."""
        self.app_key = connection.options.get("app_key", "")
        self.app_secret = connection.webhook_secret.get_secret_value()
        self.access_token = connection.access_token.get_secret_value()
        self.warehouse_id = connection.options.get("warehouse_id", self.warehouse_id)
        for sku, listing in connection.listings.items():
            if listing.inventory_ref is None:
                continue
            skus = self.products.setdefault(listing.listing_id, [])
            if listing.inventory_ref not in skus:
                skus.append(listing.inventory_ref)
            self.available.setdefault(listing.inventory_ref, initial)
            self.seller_skus[listing.inventory_ref] = sku

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(api.ORDER_DETAIL_PATH, self._order_detail)
        app.router.add_post(api.ORDER_SEARCH_PATH, self._order_search)
        app.router.add_get(f"/product/{API_VERSION}/products/{{product_id}}", self._get_product)
        app.router.add_post(
            f"/product/{API_VERSION}/products/{{product_id}}/inventory/update", self._update_inventory
        )
        return app

    @staticmethod
    def _reply(code: int, message: str, data: Any = None, *, status: int = 200) -> web.Response:
        headers = {"Retry-After": "1"} if status == 429 else {}
        body = {"code": code, "message": message, "request_id": secrets.token_hex(8), "data": data}
        return web.json_response(body, status=status, headers=headers)

    def bucket(self, api_name: str) -> TokenBucket:
        """The budget of one API of this shop (Get Order Detail, Update Inventory, ...)."""
        if api_name not in self.buckets:
            self.buckets[api_name] = TokenBucket(RATE_LIMIT_PER_S, RATE_BURST)
        return self.buckets[api_name]

    def refuse_credentials(self, request: web.Request) -> web.Response | None:
        """The access token, then the app key and the request's ``sign`` (over the body `_guard` read)."""
        if request.headers.get(api.TOKEN_HEADER) != self.access_token:
            return self._reply(105002, "Access token is invalid", status=401)
        params = dict(request.query)
        expected = api.sign_request(self.app_secret, request.path, params, self._signed_body)
        if params.get("app_key") != self.app_key or params.get("sign") != expected:
            return self._reply(106001, "signature is invalid", status=401)
        return None

    def throttled(self, wait: float) -> web.Response:
        return web.json_response(
            {"code": 36009004, "message": "Too many requests", "request_id": secrets.token_hex(8)},
            status=429,
            headers={"Retry-After": retry_after(wait)},
        )

    def injected(self, status: int, *, outage: bool) -> web.Response:
        return self._reply(36009003, "injected outage" if outage else "injected failure", status=status)

    async def _guard(self, request: web.Request, api_name: str) -> web.Response | None:
        """The checks every endpoint makes, in TikTok's order (token, sign, the API's budget, injected
        failures); None when the request may proceed."""
        self._signed_body = await request.read()  # the sign covers the body
        return self.gate(request, self.bucket(api_name))

    async def _order_detail(self, request: web.Request) -> web.Response:
        if refused := await self._guard(request, "order_detail"):
            return refused
        ids = [i for i in request.query.get("ids", "").split(",") if i]
        if not ids or len(ids) > 50:
            return self._reply(36009001, "ids must list 1 to 50 order ids")
        orders = [self.orders[i] for i in ids if i in self.orders]
        return self._reply(0, "Success", {"orders": orders})

    async def _order_search(self, request: web.Request) -> web.Response:
        """Get Order List: orders whose ``create_time``/``update_time`` is at or after the body's ``*_ge``,
        sorted by ``sort_field`` (create_time or update_time) ASC or DESC, ``page_size`` (1-100) a page."""
        if refused := await self._guard(request, "order_search"):
            return refused
        query = request.query
        size_text = query.get("page_size", "")
        size = int(size_text) if size_text.isdigit() else 0
        field_name = query.get("sort_field", "create_time")
        descending = query.get("sort_order", "DESC") == "DESC"
        if not 1 <= size <= MAX_ORDER_PAGE or field_name not in ("create_time", "update_time"):
            return self._reply(36009001, "page_size must be 1-100; sort_field create_time or update_time")
        try:
            body = json.loads(await request.read() or b"{}")
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return self._reply(36009001, "the body must be a JSON object")
        bounds = {k: body.get(k) for k in ("create_time_ge", "update_time_ge") if k in body}
        if any(isinstance(v, bool) or not isinstance(v, int) for v in bounds.values()):
            return self._reply(36009001, "create_time_ge and update_time_ge are Unix seconds")
        after = _read_page_token(query.get("page_token", ""))
        if after is None and query.get("page_token"):
            return self._reply(36009001, "page_token is invalid")
        keyed = sorted(
            (
                (o[field_name], o["id"])
                for o in self.orders.values()
                if all(o[k.removesuffix("_ge")] >= v for k, v in bounds.items())
            ),
            reverse=descending,
        )
        if after is not None:
            keyed = [k for k in keyed if (k < after if descending else k > after)]
        page = keyed[:size]
        token = _page_token(page[-1]) if len(keyed) > size else ""
        total = sum(
            1 for o in self.orders.values() if all(o[k.removesuffix("_ge")] >= v for k, v in bounds.items())
        )
        data = {"orders": [self.orders[i] for _, i in page], "next_page_token": token, "total_count": total}
        return self._reply(0, "Success", data)

    async def _get_product(self, request: web.Request) -> web.Response:
        if refused := await self._guard(request, "get_product"):
            return refused
        product_id = request.match_info["product_id"]
        if product_id not in self.products:
            return self._reply(12052048, f"product {product_id} does not exist in this shop")
        skus = [
            {
                "id": sku_id,
                "seller_sku": self.seller_skus.get(sku_id, ""),
                "inventory": [{"warehouse_id": self.warehouse_id, "quantity": self.available.get(sku_id, 0)}],
            }
            for sku_id in self.products[product_id]
        ]
        return self._reply(0, "Success", {"id": product_id, "status": "ACTIVATE", "skus": skus})

    async def _update_inventory(self, request: web.Request) -> web.Response:
        if refused := await self._guard(request, "update_inventory"):
            return refused
        self.writes += 1
        product_id = request.match_info["product_id"]
        if product_id not in self.products:
            return self._reply(12052048, f"product {product_id} does not exist in this shop")
        try:
            payload = json.loads(await request.read())
        except json.JSONDecodeError:
            return self._reply(36009001, "body is not JSON")
        skus = payload.get("skus") if isinstance(payload, dict) else None
        if not isinstance(skus, list) or not skus:
            return self._reply(36009001, "skus is required")
        errors: list[dict[str, Any]] = []
        for entry in skus:
            sku_id = str(entry.get("id")) if isinstance(entry, dict) else "?"
            stocks = entry.get("inventory") if isinstance(entry, dict) else None
            for stock in stocks if isinstance(stocks, list) and stocks else [{}]:
                warehouse = str(stock.get("warehouse_id") or self.warehouse_id)
                quantity = stock.get("quantity")
                error = None
                if sku_id not in self.products[product_id]:
                    error = f"SKU {sku_id} does not belong to product {product_id}"
                elif warehouse != self.warehouse_id:
                    error = f"warehouse {warehouse} is not a warehouse of this SKU"
                elif (
                    isinstance(quantity, bool) or not isinstance(quantity, int) or not 0 <= quantity <= 99_999
                ):
                    error = f"quantity {quantity!r} must be a whole number from 0 to 99999"
                self.calls.append(
                    InventoryCall(
                        time.monotonic(),
                        product_id,
                        sku_id,
                        warehouse,
                        quantity if isinstance(quantity, int) else -1,
                        200,
                        error,
                    )
                )
                if error:
                    errors.append(
                        {
                            "code": 12052230,
                            "message": error,
                            "detail": {
                                "sku_id": sku_id,
                                "extra_errors": [
                                    {"warehouse_id": warehouse, "code": 12052230, "message": error}
                                ],
                            },
                        }
                    )
                else:
                    self.available[sku_id] = int(quantity)
        return self._reply(0, "Success", {"errors": errors} if errors else {})

    def place_order(
        self, connection: Connection, order_id: int, lines: list[tuple[str, int]], created_at: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """A buyer orders in the app: TikTok takes the stock, lists one line per unit, and notifies."""
        at = int(created_at.timestamp())
        items: list[dict[str, Any]] = []
        for sku, qty in lines:
            listing = connection.listings[sku]
            sku_id = listing.inventory_ref or ""
            if sku_id in self.available:
                self.available[sku_id] = max(0, self.available[sku_id] - qty)
            for _ in range(qty):
                items.append(
                    {
                        "id": f"{order_id}{len(items) + 1:03d}",
                        "product_id": listing.listing_id,
                        "sku_id": sku_id,
                        "seller_sku": sku,
                        "product_name": sku,
                        "display_status": "AWAITING_SHIPMENT",
                        "sale_price": "10.00",
                        "currency": "USD",
                    }
                )
        self.orders[str(order_id)] = {
            "id": str(order_id),
            "status": "AWAITING_SHIPMENT",
            "create_time": at,
            "update_time": at,
            "paid_time": at,
            "line_items": items,
        }
        return status_notification(connection, str(order_id), "AWAITING_SHIPMENT", created_at)

    def cancel_order(
        self, connection: Connection, order_id: int, cancelled_at: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """The order is cancelled: TikTok puts the units back and notifies the new status."""
        order = self.orders[str(order_id)]
        at = int(cancelled_at.timestamp())
        order.update(status=webhooks.CANCELLED, cancel_time=at, update_time=at)
        for line in order["line_items"]:
            line["display_status"] = webhooks.CANCELLED
            if line["sku_id"] in self.available:
                self.available[line["sku_id"]] += 1
        return status_notification(connection, str(order_id), webhooks.CANCELLED, cancelled_at)


def _page_token(position: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode()


def _read_page_token(token: str) -> tuple[int, str] | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError):
        return None
    if not (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and isinstance(value[1], str)
    ):
        return None
    return value[0], value[1]


def status_notification(
    connection: Connection, order_id: str, status: str, at: datetime
) -> tuple[bytes, dict[str, str]]:
    """A signed ORDER_STATUS_CHANGE notification as TikTok sends it (body bytes and headers)."""
    body = json.dumps(
        {
            "type": webhooks.ORDER_STATUS_CHANGE,
            "tts_notification_id": str(7_000_000_000_000_000_000 + secrets.randbelow(10**18)),
            "shop_id": connection.options.get("shop_id", "7494049642642441621"),
            "timestamp": int(at.timestamp()),
            "data": {
                "order_id": order_id,
                "order_status": status,
                "is_on_hold_order": False,
                "update_time": int(at.timestamp()),
            },
        }
    ).encode()
    signature = webhooks.sign(
        connection.webhook_secret.get_secret_value(), connection.options.get("app_key", ""), body
    )
    return body, {"Content-Type": "application/json", webhooks.SIGNATURE_HEADER: signature}


def sample_connection(
    base_url: str, *, skus: tuple[str, ...], conn_id: str = "tiktok-acme", tenant: str = "acme"
) -> Connection:
    """A connection to this simulator with fresh random secrets; two SKUs per product
    (product ids 1729000000000000001, ...; SKU ids 1729500000000000001, ...)."""
    return Connection(
        id=conn_id,
        tenant=tenant,
        channel="tiktok",
        webhook_secret=SecretStr(secrets.token_hex(20)),
        api_base_url=base_url,
        access_token=SecretStr(f"TTP_{secrets.token_urlsafe(24)}"),
        options={
            "app_key": secrets.token_hex(6),
            "shop_cipher": f"ROW_{secrets.token_urlsafe(12)}",
            "shop_id": "7494049642642441621",
            "warehouse_id": DEFAULT_WAREHOUSE,
        },
        listings={
            sku: Listing(
                listing_id=str(1_729_000_000_000_000_000 + (n + 1) // 2),
                inventory_ref=str(1_729_500_000_000_000_000 + n),
            )
            for n, sku in enumerate(skus, start=1)
        },
    )
