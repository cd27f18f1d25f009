"""A Walmart Marketplace simulator: token, single-item inventory, inventory feeds, signed order events.

It issues access tokens for one client id/secret (``POST /v3/token``) and checks ``WM_SEC.ACCESS_TOKEN``,
``WM_QOS.CORRELATION_ID`` and ``WM_SVC.NAME`` on every call; keeps a quantity per seller SKU (``available``);
enforces a token-bucket budget on inventory calls and a separate one of 10 feeds an hour, answering 429 with
Retry-After; processes feeds at once (the real ones take up to 30 minutes) and serves their item statuses;
records every write; can be told to fail the next calls. Every order placed is kept in the order book and
served by the Orders API (``GET /v3/orders``, filtered by ``createdStartDate`` / ``lastModifiedStartDate``,
``limit`` per page, a ``nextCursor`` query string for the next page) whether or not its event was delivered.
Orders decrement stock; an auto-cancelled line does not put units back (Walmart does not say it does: the
engine's next push sets the count anyway).
"""

from __future__ import annotations

import json
import math
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.ratelimit import TokenBucket
from channels.walmart import FEEDS_PER_HOUR, RATE_BURST, RATE_LIMIT_PER_S, TOKEN_LIFETIME_S, webhooks
from lab.marketplaces.base import MarketplaceSimulator, basic_credentials, retry_after

DEFAULT_PARTNER_ID = "10001234567"
MAX_ORDERS_PER_PAGE = 200


@dataclass(frozen=True)
class InventoryWrite:
    """One inventory write as the simulator saw it (a PUT, or one item of a feed)."""

    at: float
    sku: str  # the Walmart seller SKU
    quantity: int
    status: int
    via: str  # "put" or "feed"
    feed_id: str | None = None
    error: str | None = None


@dataclass
class WalmartSimulator(MarketplaceSimulator):
    FAILURES_BEFORE_BUDGET = True  # Walmart: token and headers, injected failures, then the budget

    client_id: str = ""
    client_secret: str = ""
    partner_id: str = DEFAULT_PARTNER_ID
    available: dict[str, int] = field(default_factory=dict)
    calls: list[InventoryWrite] = field(default_factory=list)
    feeds: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    order_created: dict[str, datetime] = field(default_factory=dict)  # purchase order -> orderDate
    order_modified: dict[str, datetime] = field(default_factory=dict)  # purchase order -> last change
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry on `clock`
    rate_per_s: float = RATE_LIMIT_PER_S
    burst: float = RATE_BURST
    feeds_per_hour: int = FEEDS_PER_HOUR
    clock: Callable[[], float] = time.monotonic
    bucket: TokenBucket = field(init=False)
    feed_bucket: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.rate_per_s, self.burst, clock=self.clock)
        self.feed_bucket = TokenBucket(self.feeds_per_hour / 3600, self.feeds_per_hour, clock=self.clock)

    @classmethod
    def for_connection(cls, connection: Connection, *, quantity: int = 0, **kwargs: Any) -> WalmartSimulator:
        """A seller account holding `connection`'s listings at `quantity` each, accepting its API key."""
        client_id, _, client_secret = connection.access_token.get_secret_value().partition(":")
        kwargs.setdefault("partner_id", connection.options.get("partner_id", DEFAULT_PARTNER_ID))
        simulator = cls(client_id=client_id, client_secret=client_secret, **kwargs)
        for listing in connection.listings.values():
            simulator.available[listing.listing_id] = quantity
        return simulator

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v3/token", self._token)
        app.router.add_put("/v3/inventory", self._put)
        app.router.add_get("/v3/inventory", self._get)
        app.router.add_post("/v3/feeds", self._feed)
        app.router.add_get("/v3/feeds/{feed_id}", self._feed_status)
        app.router.add_get("/v3/orders", self._list_orders)
        return app

    def revoke_tokens(self) -> None:
        """Every issued access token stops working (as when one expires early)."""
        self.tokens.clear()

    # -- API ------------------------------------------------------------------------------------------------

    @staticmethod
    def _error(
        status: int, code: str, description: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        entry = {"code": code, "description": description, "severity": "ERROR", "category": "DATA"}
        return web.json_response({"errors": {"error": [entry]}}, status=status, headers=headers)

    async def _token(self, request: web.Request) -> web.Response:
        if basic_credentials(request.headers.get("Authorization", "")) != (
            self.client_id,
            self.client_secret,
        ):
            return self._error(
                401, "UNAUTHORIZED.GMP_GATEWAY_API", "Unauthorized: invalid client id or secret"
            )
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return self._error(
                400, "INVALID_REQUEST.GMP_GATEWAY_API", "grant_type must be client_credentials"
            )
        token = secrets.token_urlsafe(32)
        self.tokens[token] = self.clock() + TOKEN_LIFETIME_S
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME_S}
        )

    def refuse_credentials(self, request: web.Request) -> web.Response | None:
        """The access token (issued and not expired on `clock`) and the headers every call must carry."""
        token = request.headers.get("WM_SEC.ACCESS_TOKEN", "")
        if self.tokens.get(token, -math.inf) <= self.clock():
            return self._error(
                401, "UNAUTHORIZED.GMP_GATEWAY_API", "Unauthorized token or invalid service name"
            )
        for required in ("WM_QOS.CORRELATION_ID", "WM_SVC.NAME"):
            if not request.headers.get(required):
                return self._error(
                    400, "INVALID_REQUEST_HEADER.GMP_GATEWAY_API", f"{required} header is required"
                )
        return None

    def throttled(self, wait: float) -> web.Response:
        return self._error(
            429,
            "REQUEST_THRESHOLD_VIOLATED.GMP_GATEWAY_API",
            "Too many requests",
            {"Retry-After": retry_after(wait)},
        )

    def injected(self, status: int, *, outage: bool) -> web.Response:
        return self._error(
            status, "INJECTED.GMP_INVENTORY_API", "injected outage" if outage else "injected failure"
        )

    def _record(self, sku: str, quantity: Any, via: str, feed_id: str | None = None) -> str | None:
        """Apply and record one write; the error description, or None when it was applied."""
        error = None
        if sku not in self.available:
            error = f"SKU {sku} is not set up for this seller"
        elif not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
            error = f"quantity.amount {quantity!r} is not a whole number >= 0"
        else:
            self.available[sku] = quantity
        recorded = quantity if isinstance(quantity, int) and not isinstance(quantity, bool) else -1
        status = 200 if error is None else (404 if sku not in self.available else 400)
        self.calls.append(InventoryWrite(time.monotonic(), sku, recorded, status, via, feed_id, error))
        return error

    async def _put(self, request: web.Request) -> web.Response:
        if (refused := self.gate(request, self.bucket)) is not None:
            return refused
        sku = request.query.get("sku", "")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return self._error(400, "INVALID_REQUEST_CONTENT.GMP_INVENTORY_API", "body is not JSON")
        quantity = body.get("quantity") if isinstance(body, dict) else None
        if not isinstance(body, dict) or body.get("sku") != sku or not isinstance(quantity, dict):
            return self._error(
                400, "INVALID_REQUEST_CONTENT.GMP_INVENTORY_API", "sku and quantity are required"
            )
        if quantity.get("unit") != "EACH":
            return self._error(400, "INVALID_REQUEST_CONTENT.GMP_INVENTORY_API", "quantity.unit must be EACH")
        if (error := self._record(sku, quantity.get("amount"), "put")) is not None:
            if sku not in self.available:
                return self._error(404, "CONTENT_NOT_FOUND.GMP_INVENTORY_API", error)
            return self._error(400, "INVALID_REQUEST_CONTENT.GMP_INVENTORY_API", error)
        return web.json_response({"sku": sku, "quantity": {"unit": "EACH", "amount": self.available[sku]}})

    async def _get(self, request: web.Request) -> web.Response:
        if (refused := self.gate(request, self.bucket)) is not None:
            return refused
        sku = request.query.get("sku", "")
        if sku not in self.available:
            return self._error(404, "CONTENT_NOT_FOUND.GMP_INVENTORY_API", f"SKU {sku} is not set up")
        return web.json_response({"sku": sku, "quantity": {"unit": "EACH", "amount": self.available[sku]}})

    async def _feed(self, request: web.Request) -> web.Response:
        if (refused := self.gate(request, self.feed_bucket)) is not None:
            return refused
        if request.query.get("feedType") != "inventory":
            return self._error(
                400, "INVALID_REQUEST.GMP_FEED_API", "this simulator serves feedType=inventory"
            )
        form = await request.post()
        upload = form.get("file")
        raw = upload.file.read() if isinstance(upload, web.FileField) else None
        try:
            document = json.loads(raw) if raw is not None else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            document = None
        inventory = document.get("Inventory") if isinstance(document, dict) else None
        if not isinstance(inventory, list):
            return self._error(
                400, "INVALID_REQUEST.GMP_FEED_API", "multipart 'file' must hold an inventory feed"
            )
        feed_id = uuid.uuid4().hex.upper()
        statuses = []
        for entry in inventory:
            sku = str(entry.get("sku")) if isinstance(entry, dict) else ""
            quantity = entry.get("quantity") if isinstance(entry, dict) else None
            amount = quantity.get("amount") if isinstance(quantity, dict) else None
            error = self._record(sku, amount, "feed", feed_id)
            status: dict[str, Any] = {
                "martId": 0,
                "sku": sku,
                "ingestionStatus": "SUCCESS" if error is None else "DATA_ERROR",
            }
            if error is not None:
                status["ingestionErrors"] = {
                    "ingestionError": [
                        {"type": "DATA_ERROR", "code": "ERR_EXT_DATA_0100", "description": error}
                    ]
                }
            statuses.append(status)
        failed = sum(1 for s in statuses if s["ingestionStatus"] != "SUCCESS")
        self.feeds[feed_id] = {
            "feedId": feed_id,
            "feedStatus": "PROCESSED",
            "feedType": "inventory",
            "itemsReceived": len(statuses),
            "itemsSucceeded": len(statuses) - failed,
            "itemsFailed": failed,
            "itemsProcessing": 0,
            "itemDetails": {"itemIngestionStatus": statuses},
        }
        return web.json_response({"feedId": feed_id})

    async def _feed_status(self, request: web.Request) -> web.Response:
        if (refused := self.gate(request, self.bucket)) is not None:
            return refused
        feed = self.feeds.get(request.match_info["feed_id"])
        if feed is None:
            return self._error(404, "CONTENT_NOT_FOUND.GMP_FEED_API", "no such feed")
        if request.query.get("includeDetails") != "true":
            feed = {k: v for k, v in feed.items() if k != "itemDetails"}
        return web.json_response(feed)

    async def _list_orders(self, request: web.Request) -> web.Response:
        """``GET /v3/orders``: purchase orders created/modified at or after the given dates, oldest change
        first, ``limit`` (default 100, at most 200) a page; ``meta.nextCursor`` is the query string of the
        next page (the filters plus where the page ended), null on the last page."""
        if (refused := self.gate(request, self.bucket)) is not None:
            return refused
        query = request.query
        limit_text = query.get("limit", "100")
        limit = int(limit_text) if limit_text.isdigit() else 0
        if not 1 <= limit <= MAX_ORDERS_PER_PAGE:
            return self._error(
                400, "INVALID_REQUEST_PARAM.GMP_ORDER_API", f"limit must be 1..{MAX_ORDERS_PER_PAGE}"
            )
        try:
            created_from = _query_time(query.get("createdStartDate"))
            modified_from = _query_time(query.get("lastModifiedStartDate"))
            after_ms = int(query["soIndex"]) if "soIndex" in query else None
        except ValueError:
            return self._error(
                400,
                "INVALID_REQUEST_PARAM.GMP_ORDER_API",
                "dates must be yyyy-MM-dd or yyyy-MM-ddTHH:mm:ssZ; soIndex must come from nextCursor",
            )
        after = (after_ms, query.get("poIndex", "")) if after_ms is not None else None
        matching = sorted(
            (_epoch_ms(self.order_modified[po]), po)
            for po in self.orders
            if (created_from is None or self.order_created[po] >= created_from)
            and (modified_from is None or self.order_modified[po] >= modified_from)
        )
        remaining = [key for key in matching if after is None or key > after]
        page = remaining[:limit]
        next_cursor = None
        if len(remaining) > limit:
            kept = {k: v for k, v in query.items() if k not in {"soIndex", "poIndex", "hasMoreElements"}}
            last_ms, last_po = page[-1]
            kept.update(
                hasMoreElements="true", soIndex=str(last_ms), poIndex=last_po, partnerId=self.partner_id
            )
            next_cursor = "?" + urlencode(kept)
        return web.json_response(
            {
                "list": {
                    "meta": {"totalCount": len(matching), "limit": limit, "nextCursor": next_cursor},
                    "elements": {"order": [self._api_order(po) for _, po in page]},
                }
            }
        )

    def _api_order(self, po: str) -> dict[str, Any]:
        """A purchase order as the Orders API shows it (epoch-millisecond times, nested lines)."""
        order = self.orders[po]
        lines = []
        for line in order["orderLines"]:
            amount = line["quantity"]["measurementValue"]
            status: dict[str, Any] = {
                "status": "Cancelled" if line["status"] == "CANCELLED" else "Created",
                "statusQuantity": {"unitOfMeasurement": "EACH", "amount": amount},
            }
            if "cancellationReason" in line:
                status["cancellationReason"] = line["cancellationReason"]
            lines.append(
                {
                    "lineNumber": line["lineNumber"],
                    "item": {"productName": line["productName"], "sku": line["sku"]},
                    "charges": {"charge": []},
                    "orderLineQuantity": {"unitOfMeasurement": "EACH", "amount": amount},
                    "statusDate": _epoch_ms(datetime.fromisoformat(line["statusDate"])),
                    "orderLineStatuses": {"orderLineStatus": [status]},
                    "fulfillment": {
                        "fulfillmentOption": "S2H",
                        "shipMethod": line["shippingMethod"].upper(),
                        "pickUpDateTime": None,
                    },
                }
            )
        return {
            "purchaseOrderId": po,
            "customerOrderId": order["customerOrderId"],
            "customerEmailId": f"{order['customerOrderId']}@relay.walmart.com",
            "orderType": "REGULAR",
            "orderDate": _epoch_ms(self.order_created[po]),
            "shippingInfo": {"methodCode": "Standard"},
            "orderLines": {"orderLine": lines},
        }

    # -- the marketplace ------------------------------------------------------------------------------------

    def place_order(
        self, connection: Connection, order_id: int, lines: list[tuple[str, int]], created_at: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """A buyer orders: Walmart decrements its count and sends a signed ``PO_CREATED`` notification."""
        order_lines = []
        for n, (sku, quantity) in enumerate(lines, start=1):
            seller_sku = connection.listings[sku].listing_id
            if seller_sku in self.available:
                self.available[seller_sku] = max(0, self.available[seller_sku] - quantity)
            order_lines.append(
                {
                    "lineNumber": str(n),
                    "sku": seller_sku,
                    "productName": sku,
                    "quantity": {"unitOfMeasure": "EACH", "measurementValue": str(quantity)},
                    "status": "CREATED",
                    "statusDate": _walmart_time(created_at),
                    "shippingProgramType": "TWO_DAY",
                    "shippingMethod": "Standard",
                    "shipNodeType": "SellerFulfilled",
                }
            )
        po = str(order_id)
        self.order_created[po] = self.order_modified[po] = created_at
        self.orders[po] = {
            "partnerId": self.partner_id,
            "purchaseOrderId": po,
            "customerOrderId": str(200_000_000_000 + order_id),
            "orderDate": _walmart_time(created_at),
            "orderLines": order_lines,
        }
        return notification(connection, "PO_CREATED", self.orders[po], created_at)

    def cancel_order(
        self,
        connection: Connection,
        order_id: int,
        cancelled_at: datetime,
        *,
        line_numbers: list[int] | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """Walmart auto-cancels lines (all by default) and sends ``PO_LINE_AUTOCANCELLED``; counts stay."""
        order = self.orders[str(order_id)]
        self.order_modified[str(order_id)] = max(self.order_modified[str(order_id)], cancelled_at)
        for line in order["orderLines"]:
            if line_numbers is None or int(line["lineNumber"]) in line_numbers:
                line.update(status="CANCELLED", statusDate=_walmart_time(cancelled_at))
                line["cancellationReason"] = "Auto-cancelled due to expired ship date"
        return notification(connection, "PO_LINE_AUTOCANCELLED", order, cancelled_at)


def _epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds, truncated as Walmart's millisecond timestamps are (never later than `moment`)."""
    return math.floor(moment.timestamp() * 1000)


def _query_time(text: str | None) -> datetime | None:
    """An Orders API date filter: yyyy-MM-dd (midnight UTC) or an ISO-8601 time (UTC if no offset)."""
    if text is None:
        return None
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _walmart_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def notification(
    connection: Connection, event_type: str, payload: dict[str, Any], event_time: datetime
) -> tuple[bytes, dict[str, str]]:
    """A signed event notification as Walmart sends it to an HMAC subscription: body bytes and headers."""
    body = json.dumps(
        {
            "source": {
                "eventType": event_type,
                "eventTime": _walmart_time(event_time),
                "eventId": str(uuid.uuid4()),
            },
            "payload": payload,
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        webhooks.AUTH_HEADER: webhooks.sign(connection.webhook_secret.get_secret_value(), body),
    }
    return body, headers


def sample_connection(
    base_url: str, *, skus: tuple[str, ...], conn_id: str = "walmart-acme", tenant: str = "acme"
) -> Connection:
    """A connection to this simulator with fresh random secrets; each master SKU is listed on Walmart
    under the seller SKU ``WM-<sku>`` (so the mapping is exercised), partner id DEFAULT_PARTNER_ID."""
    return Connection(
        id=conn_id,
        tenant=tenant,
        channel="walmart",
        webhook_secret=SecretStr(secrets.token_urlsafe(24)),
        api_base_url=base_url,
        access_token=SecretStr(f"{uuid.uuid4()}:{secrets.token_urlsafe(48)}"),
        listings={sku: Listing(listing_id=f"WM-{sku}") for sku in skus},
        options={"partner_id": DEFAULT_PARTNER_ID},
    )
