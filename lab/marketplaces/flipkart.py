"""A Flipkart simulator: Listings v3 inventory writes and reads, shipment reads and search, notifications.

It serves under ``/sellers`` like ``api.flipkart.net``, checks the bearer token, keeps per-seller-SKU counts
at one location, reports per-SKU SUCCESS/FAILURE as Listings v3 does, refuses more than MAX_BATCH SKUs a
call, enforces a token bucket (429 with Retry-After), records every inventory write, and can be told to fail.
Notifications are signed with the invented body signature of channels.flipkart.webhooks.

Every shipment ``place_order`` creates is kept in the shipment book whether or not its notification is ever
delivered, and Search Shipments serves it: ``POST /v3/shipments/filter`` with ``{"filter": {"type":
preDispatch | postDispatch | cancelled, "states": [...], "cancellationType": ..., "<date field>": {"from",
"to"}}, "pagination": {"pageSize"}, "sort": {"field", "order"}}`` answers ``{"shipments": [...], "hasMore",
"nextPageUrl"}``, and ``GET /v3/shipments/filter?next_token=...`` (the nextPageUrl, relative to
``/sellers``) the next page. A shipment matches when one of its items is in a requested state. Modelled where
Flipkart publishes nothing: the page-size cap (api.SEARCH_MAX_PAGE), inclusive date bounds, keyset paging
(stable while shipments are added) in an opaque base64url token, the default sort (orderDate asc).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.flipkart import MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S, api, webhooks
from channels.ratelimit import TokenBucket
from lab.marketplaces.base import MarketplaceSimulator, retry_after

PREFIX = "/sellers"
DEFAULT_LOCATION = "LOC8bdd7abceca4423a839d935584ee6f19"
# Search Shipments: the states each filter type accepts (Flipkart's docs), and the cancellation types
PRE_DISPATCH = ("APPROVED", "PACKING_IN_PROGRESS", "FORM_FAILED", "PACKED", "READY_TO_DISPATCH")
POST_DISPATCH = ("PICKUP_COMPLETE", "SHIPPED", "DELIVERED")
CANCELLATION_TYPES = ("sellerCancellation", "buyerCancellation", "marketplaceCancellation")
DATE_FIELDS = ("orderDate", "modifiedDate", "cancellationDate", "dispatchByDate", "dispatchAfterDate")
SORT_FIELDS = ("orderDate", "modifiedDate", "dispatchByDate", "dispatchAfterDate")


class BadSearch(ValueError):
    """A Search Shipments request Flipkart would refuse with 400."""


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
class FlipkartSimulator(MarketplaceSimulator):
    access_token: str = ""
    location_id: str = DEFAULT_LOCATION
    available: dict[str, int] = field(default_factory=dict)  # by seller SKU id
    fsn: dict[str, str] = field(default_factory=dict)  # seller SKU id -> FSN
    shipments: dict[str, dict[str, Any]] = field(default_factory=dict)  # by shipment id
    shipment_of_order: dict[str, str] = field(default_factory=dict)
    cancelled_by: dict[str, str] = field(default_factory=dict)  # shipment id -> cancellationType
    searches: int = 0  # Search Shipments calls answered (first pages and next pages)
    calls: list[InventoryWrite] = field(default_factory=list)
    writes: int = 0
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(RATE_LIMIT_PER_S, RATE_BURST))

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
        for path in (api.SHIPMENT_SEARCH_PATH, api.SHIPMENT_SEARCH_PATH + "/"):  # the docs show both
            app.router.add_post(PREFIX + path, self._search)
            app.router.add_get(PREFIX + path, self._search_next)
        return app

    def refuse_credentials(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return web.json_response(
                {"error": "invalid_token", "error_description": "Invalid access token"}, status=401
            )
        return None

    def throttled(self, wait: float) -> web.Response:
        return web.json_response(
            {"errors": [{"severity": "ERROR", "code": 429, "description": "Request rate exceeded"}]},
            status=429,
            headers={"Retry-After": retry_after(wait)},
        )

    def injected(self, status: int, *, outage: bool) -> web.Response:
        description = "injected outage" if outage else "injected failure"
        return web.json_response({"errors": [{"description": description}]}, status=status)

    def _guard(self, request: web.Request) -> web.Response | None:
        """Token, budget, then injected failures; None lets the request through."""
        return self.gate(request, self.bucket)

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

    async def _search(self, request: web.Request) -> web.Response:
        if refused := self._guard(request):
            return refused
        self.searches += 1
        try:
            body = json.loads(await request.read())
            query = _search_query(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad("the body is not JSON")
        except BadSearch as exc:
            return _bad(str(exc))
        return self._search_page(body, query, None)

    async def _search_next(self, request: web.Request) -> web.Response:
        if refused := self._guard(request):
            return refused
        self.searches += 1
        decoded = _next_token(request.query.get("next_token", ""))
        if decoded is None:
            return _bad("next_token is missing or not one this API issued; use the nextPageUrl as given")
        body, after = decoded
        try:
            query = _search_query(body)
        except BadSearch as exc:
            return _bad(str(exc))
        return self._search_page(body, query, after)

    def _search_page(self, body: Any, query: dict[str, Any], after: tuple[str, str] | None) -> web.Response:
        field_name, descending = query["sort"]
        keyed = [
            (_sort_key(shipment, field_name), shipment_id, shipment)
            for shipment_id, shipment in self.shipments.items()
            if self._matches(shipment, query)
        ]
        keyed.sort(key=lambda row: (row[0], row[1]), reverse=descending)
        if after is not None:
            keyed = [
                row for row in keyed if ((row[0], row[1]) < after if descending else (row[0], row[1]) > after)
            ]
        size: int = query["pageSize"]
        page, more = keyed[:size], len(keyed) > size
        next_url = None
        if more:
            last = page[-1]
            token = json.dumps({"q": body, "after": [last[0], last[1]]}).encode()
            next_url = f"{api.SHIPMENT_SEARCH_PATH}?next_token={base64.urlsafe_b64encode(token).decode()}"
        return web.json_response(
            {"hasMore": more, "nextPageUrl": next_url, "shipments": [row[2] for row in page]}
        )

    def _matches(self, shipment: dict[str, Any], query: dict[str, Any]) -> bool:
        items = shipment["orderItems"]
        by = self.cancelled_by.get(shipment["shipmentId"])
        if query["type"] == "cancelled" and by != query["cancellationType"]:
            return False
        if not any(item["status"] in query["states"] for item in items):
            return False
        for name, (start, end) in query["ranges"].items():
            value = _date_of(shipment, name)
            if value is None:
                return False
            at = datetime.fromisoformat(value)
            if (start and at < datetime.fromisoformat(start)) or (end and at > datetime.fromisoformat(end)):
                return False
        return True

    def advance_order(self, order_id: int, status: str, at: datetime) -> None:
        """The order's shipment moves on (PACKED, SHIPPED, DELIVERED, RETURNED...); no stock moves."""
        shipment = self.shipments[self.shipment_of_order[f"OD{order_id}"]]
        for item in shipment["orderItems"]:
            item["status"] = status
        shipment["updatedAt"] = at.isoformat()

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
            "dispatchAfterDate": created_at.isoformat(),
            "dispatchByDate": (created_at + timedelta(days=2)).isoformat(),
            "updatedAt": created_at.isoformat(),
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
            key: value
            for key, value in shipment.items()
            if key not in ("shipmentId", "locationId", "updatedAt")
        }
        return notification(
            connection, webhooks.SHIPMENT_CREATED, shipment_id, self.location_id, attributes, created_at
        )

    def cancel_order(
        self,
        connection: Connection,
        order_id: int,
        cancelled_at: datetime,
        *,
        by: str = "buyerCancellation",
    ) -> tuple[bytes, dict[str, str]]:
        """The whole order is cancelled (`by` one of CANCELLATION_TYPES): the units go back and a thin
        ``shipment_cancelled`` is sent."""
        if by not in CANCELLATION_TYPES:
            raise ValueError(f"cancellation type {by!r} is not one of {CANCELLATION_TYPES}")
        reason = by.removesuffix("Cancellation") + "_cancellation"
        shipment = self.shipments[self.shipment_of_order[f"OD{order_id}"]]
        shipment["updatedAt"] = cancelled_at.isoformat()
        self.cancelled_by[shipment["shipmentId"]] = by
        cancelled = []
        for item in shipment["orderItems"]:
            item.update(
                status=webhooks.CANCELLED,
                cancellationDate=cancelled_at.isoformat(),
                cancellationReason=reason,
                cancellationSubReason="order_no_longer_required",
            )
            if item["sku"] in self.available:
                self.available[item["sku"]] += item["quantity"]
            cancelled.append(
                {
                    "orderItemId": item["orderItemId"],
                    "quantity": item["quantity"],
                    "reason": reason,
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


def _bad(description: str) -> web.Response:
    return web.json_response(
        {"errors": [{"severity": "ERROR", "code": "INVALID_REQUEST", "description": description}]}, status=400
    )


def _iso(value: Any, what: str) -> str:
    """An ISO-8601 time with a UTC offset, normalised; BadSearch otherwise."""
    try:
        at = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise BadSearch(f"{what} {value!r} is not an ISO-8601 date-time with an offset")
    return at.isoformat()


def _search_query(body: Any) -> dict[str, Any]:
    """The canonical form of a Search Shipments request; BadSearch says what Flipkart would refuse."""
    flt = body.get("filter") if isinstance(body, dict) else None
    if not isinstance(flt, dict):
        raise BadSearch("filter is mandatory")
    kind = flt.get("type")
    allowed = {"preDispatch": PRE_DISPATCH, "postDispatch": POST_DISPATCH, "cancelled": (webhooks.CANCELLED,)}
    if kind not in allowed:
        raise BadSearch(f"filter.type {kind!r} must be preDispatch, postDispatch or cancelled")
    states = flt.get("states", list(allowed[kind]) if kind == "cancelled" else None)
    if not isinstance(states, list) or not states or not set(states) <= set(allowed[kind]):
        raise BadSearch(f"filter.states {states!r} must be a list of {', '.join(allowed[kind])} for {kind}")
    cancellation = flt.get("cancellationType")
    if kind == "cancelled" and cancellation not in CANCELLATION_TYPES:
        raise BadSearch(
            f"filter.cancellationType {cancellation!r} must be one of {', '.join(CANCELLATION_TYPES)}"
        )
    ranges: dict[str, tuple[str | None, str | None]] = {}
    for name in DATE_FIELDS:
        if name in flt:
            span = flt[name]
            if not isinstance(span, dict) or not ({"from", "to"} & span.keys()):
                raise BadSearch(f"filter.{name} must be {{from, to}}")
            start, end = span.get("from"), span.get("to")
            ranges[name] = (
                _iso(start, f"filter.{name}.from") if start is not None else None,
                _iso(end, f"filter.{name}.to") if end is not None else None,
            )
    pagination = body.get("pagination") or {}
    size = pagination.get("pageSize", api.SEARCH_MAX_PAGE) if isinstance(pagination, dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= api.SEARCH_MAX_PAGE:
        raise BadSearch(f"pagination.pageSize {size!r} must be from 1 to {api.SEARCH_MAX_PAGE}")
    sort = body.get("sort") or {}
    field_name = sort.get("field", "orderDate") if isinstance(sort, dict) else None
    order = sort.get("order", "asc") if isinstance(sort, dict) else None
    if field_name not in SORT_FIELDS or order not in ("asc", "desc"):
        raise BadSearch(f"sort {sort!r}: field must be one of {', '.join(SORT_FIELDS)}, order asc or desc")
    return {
        "type": kind,
        "states": states,
        "cancellationType": cancellation,
        "ranges": ranges,
        "pageSize": size,
        "sort": [field_name, order == "desc"],
    }


def _next_token(raw: str) -> tuple[dict[str, Any], tuple[str, str]] | None:
    """The search request and position a nextPageUrl's next_token carries; None if it is not one we issued."""
    try:
        token = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except (ValueError, binascii.Error):
        return None
    query = token.get("q") if isinstance(token, dict) else None
    after = token.get("after") if isinstance(token, dict) else None
    if not isinstance(query, dict) or not isinstance(after, list) or len(after) != 2:
        return None
    return query, (str(after[0]), str(after[1]))


def _date_of(shipment: dict[str, Any], name: str) -> str | None:
    """The shipment's time for a date filter or sort: an item's orderDate / cancellationDate, or its own."""
    if name in ("orderDate", "cancellationDate"):
        times = [item[name] for item in shipment["orderItems"] if item.get(name)]
        return max(times, key=datetime.fromisoformat) if times else None
    value = shipment.get({"modifiedDate": "updatedAt"}.get(name, name))
    return value if isinstance(value, str) else None


def _sort_key(shipment: dict[str, Any], name: str) -> str:
    """A sortable (UTC, fixed width) form of the shipment's `name` time; empty if it has none."""
    value = _date_of(shipment, name)
    if value is None:
        return ""
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
