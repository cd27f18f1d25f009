"""A Shopify simulator: the Admin GraphQL inventory endpoint and order list, and signed ``orders/create``
webhooks.

It keeps per-inventory-item ``available`` counts, applies ``inventorySetQuantities`` with Shopify's
compare-and-set rule (``changeFromQuantity`` must equal the stored count unless null), records every call,
and can be told to fail the next calls with a given HTTP status. Every placed order goes into an order book
served by the GraphQL ``orders`` connection (``first`` up to 250, ``after`` cursor, ``sortKey: UPDATED_AT``,
search ``query`` on ``updated_at``), whether or not its webhook was ever delivered. It is no GraphQL engine:
queries are recognised by their root field, and an order node always carries every field the client reads.
"""

from __future__ import annotations

import base64
import binascii
import json
import operator
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.ratelimit import TokenBucket
from channels.shopify import RATE_BURST, RATE_LIMIT_PER_S, webhooks
from lab.marketplaces.base import MarketplaceSimulator, retry_after

DEFAULT_LOCATION = "gid://shopify/Location/1"
MAX_PAGE = 250  # Shopify's largest `first` on a connection
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_FILTER = re.compile(r"^updated_at:(>=|>|<=|<)'?([^'\s]+)'?$")


@dataclass
class BookedOrder:
    """An order as the store holds it, whether or not its webhook was delivered."""

    id: int
    created_at: datetime
    updated_at: datetime
    line_items: list[dict[str, Any]]
    cancelled_at: datetime | None = None
    refunds: list[dict[str, Any]] = field(default_factory=list)  # REST Refund resources (see ``refund``)

    def node(self) -> dict[str, Any]:
        """The order as the GraphQL Admin API returns it (``Order`` with its ``lineItems``)."""
        return {
            "id": f"gid://shopify/Order/{self.id}",
            "legacyResourceId": str(self.id),
            "name": f"#{self.id}",
            "createdAt": _gql_time(self.created_at),
            "updatedAt": _gql_time(self.updated_at),
            "cancelledAt": _gql_time(self.cancelled_at) if self.cancelled_at else None,
            "lineItems": {
                "nodes": [
                    {
                        "id": f"gid://shopify/LineItem/{line['id']}",
                        "sku": line.get("sku"),
                        "quantity": line["quantity"],
                        "variant": {
                            "id": f"gid://shopify/ProductVariant/{line['variant_id']}",
                            "legacyResourceId": str(line["variant_id"]),
                        },
                    }
                    for line in self.line_items
                ],
                "pageInfo": {"hasNextPage": False, "endCursor": None},
            },
            "refunds": [_gql_refund(r) for r in self.refunds],
        }


def _gql_refund(refund: dict[str, Any]) -> dict[str, Any]:
    """A REST Refund (see ``refund``) as the GraphQL Admin API's ``Refund`` with its ``refundLineItems``."""
    return {
        "id": f"gid://shopify/Refund/{refund['id']}",
        "legacyResourceId": str(refund["id"]),
        "createdAt": _gql_time(datetime.fromisoformat(refund["created_at"])),
        "refundLineItems": {
            "nodes": [
                {
                    "id": f"gid://shopify/RefundLineItem/{item['id']}",
                    "quantity": item["quantity"],
                    "restockType": item["restock_type"].upper(),
                    "lineItem": {
                        "id": f"gid://shopify/LineItem/{item['line_item_id']}",
                        "sku": item["line_item"].get("sku"),
                        "variant": {"legacyResourceId": str(item["line_item"]["variant_id"])},
                    },
                }
                for item in refund["refund_line_items"]
            ],
            "pageInfo": {"hasNextPage": False, "endCursor": None},
        },
    }


def _gql_time(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class SetCall:
    """One inventorySetQuantities call as the simulator saw it."""

    at: float
    inventory_item_id: str
    quantity: int
    change_from: int | None
    reference: str
    status: int
    user_error: str | None = None


@dataclass
class ShopifySimulator(MarketplaceSimulator):
    access_token: str
    location_id: str = DEFAULT_LOCATION
    available: dict[str, int] = field(default_factory=dict)
    calls: list[SetCall] = field(default_factory=list)
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(RATE_LIMIT_PER_S, RATE_BURST))
    orders: dict[int, BookedOrder] = field(default_factory=dict)
    order_list_calls: int = 0  # order-list queries answered 200

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/admin/api/{version}/graphql.json", self._graphql)
        return app

    def refuse_credentials(self, request: web.Request) -> web.Response | None:
        if request.headers.get("X-Shopify-Access-Token") != self.access_token:
            return self._error(
                401, "[API] Invalid API key or access token (unrecognized login or wrong password)"
            )
        return None

    def throttled(self, wait: float) -> web.Response:
        return web.json_response(
            {"errors": "Throttled"}, status=429, headers={"Retry-After": retry_after(wait)}
        )

    def injected(self, status: int, *, outage: bool) -> web.Response:
        return self._error(status, "injected outage" if outage else "injected failure")

    def _error(self, status: int, message: str) -> web.Response:
        headers = {"Retry-After": "1"} if status == 429 else {}
        return web.json_response({"errors": message}, status=status, headers=headers)

    async def _graphql(self, request: web.Request) -> web.Response:
        if (refused := self.gate(request, self.bucket)) is not None:
            return refused
        try:
            payload: dict[str, Any] = await request.json()
        except json.JSONDecodeError:
            return self._error(400, "body is not JSON")
        query = str(payload.get("query", ""))
        if re.search(r"\borders\s*\(", query):
            return self._orders(payload.get("variables") or {})
        if "inventoryLevel" in query and "nodes" in query:
            return self._read(payload.get("variables") or {})
        if "inventorySetQuantities" not in query:
            return self._error(
                400, "this simulator serves inventorySetQuantities, inventory level reads and orders only"
            )
        spec = (payload.get("variables") or {}).get("input") or {}
        user_errors: list[dict[str, Any]] = []
        changes = []
        for q in spec.get("quantities", []):
            item, quantity = q.get("inventoryItemId"), q.get("quantity")
            if "changeFromQuantity" not in q:
                user_errors.append(
                    {
                        "code": "INVALID",
                        "field": ["changeFromQuantity"],
                        "message": "changeFromQuantity must be passed (null opts out)",
                    }
                )
                continue
            change_from = q["changeFromQuantity"]
            current = self.available.get(item)
            error = None
            if q.get("locationId") != self.location_id:
                error = "The specified location could not be found."
            elif current is None:
                error = "The specified inventory item could not be found."
            elif change_from is not None and change_from != current:
                error = f"The compare quantity {change_from} does not match the current quantity {current}."
            self.calls.append(
                SetCall(
                    time.monotonic(),
                    str(item),
                    int(quantity),
                    change_from,
                    str(spec.get("referenceDocumentUri", "")),
                    200,
                    error,
                )
            )
            if error:
                user_errors.append(
                    {
                        "code": "CHANGE_FROM_QUANTITY_STALE" if current is not None else "NOT_FOUND",
                        "field": ["input", "quantities"],
                        "message": error,
                    }
                )
                continue
            self.available[item] = int(quantity)
            changes.append(
                {
                    "name": "available",
                    "delta": int(quantity) - (current or 0),
                    "quantityAfterChange": int(quantity),
                }
            )
        group = {"reason": spec.get("reason"), "changes": changes} if changes else None
        body = {
            "data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": group, "userErrors": user_errors}}
        }
        return web.json_response(body)

    def _read(self, variables: dict[str, Any]) -> web.Response:
        nodes: list[dict[str, Any] | None] = []
        for item in variables.get("ids") or []:
            if item not in self.available or variables.get("locationId") != self.location_id:
                nodes.append(None)
                continue
            quantities = [{"name": "available", "quantity": self.available[item]}]
            nodes.append({"id": item, "inventoryLevel": {"quantities": quantities}})
        return web.json_response({"data": {"nodes": nodes}})

    def _orders(self, variables: dict[str, Any]) -> web.Response:
        """The ``orders`` connection: oldest (updatedAt, id) first, filtered on updated_at, cursor-paged."""
        first, after, search = variables.get("first"), variables.get("after"), variables.get("query")
        if not isinstance(first, int) or isinstance(first, bool) or not 1 <= first <= MAX_PAGE:
            return _gql_errors(f"orders: 'first' must be a whole number from 1 to {MAX_PAGE}, got {first!r}")
        book = sorted(self.orders.values(), key=lambda o: (o.updated_at, o.id))
        if search:
            match = _FILTER.match(str(search).strip())
            try:
                bound = datetime.fromisoformat(match.group(2)) if match else None
            except ValueError:
                bound = None
            if match is None or bound is None or bound.tzinfo is None:
                return _gql_errors(
                    "orders: this simulator understands only the search query "
                    f"\"updated_at:>='<ISO time with offset>'\" (or >, <=, <), got {search!r}"
                )
            compare = _COMPARE[match.group(1)]
            book = [o for o in book if compare(o.updated_at, bound)]
        if after is not None:
            try:
                at_text, last_id = json.loads(base64.urlsafe_b64decode(str(after).encode()))
                last = (datetime.fromisoformat(at_text), int(last_id))
            except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
                return _gql_errors(f"orders: invalid cursor {after!r}; pass a pageInfo.endCursor unchanged")
            book = [o for o in book if (o.updated_at, o.id) > last]
        page = book[:first]
        end = (
            base64.urlsafe_b64encode(
                json.dumps([page[-1].updated_at.isoformat(), page[-1].id]).encode()
            ).decode()
            if page
            else None
        )
        self.order_list_calls += 1
        connection = {
            "nodes": [o.node() for o in page],
            "pageInfo": {"hasNextPage": len(book) > first, "endCursor": end},
        }
        return web.json_response({"data": {"orders": connection}})

    def place_order(
        self, connection: Connection, order_id: int, lines: list[tuple[str, int]], created_at: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """A buyer orders on the storefront: Shopify decrements its own count, books the order (the order
        list returns it from now on) and signs the webhook (which the caller may or may not deliver)."""
        items = []
        for n, (sku, qty) in enumerate(lines, start=1):
            listing = connection.listings[sku]
            if listing.inventory_ref in self.available:
                self.available[listing.inventory_ref] = max(0, self.available[listing.inventory_ref] - qty)
            items.append(
                {
                    "id": order_id * 100 + n,
                    "variant_id": int(listing.listing_id),
                    "sku": sku,
                    "quantity": qty,
                    "title": sku,
                }
            )
        self.orders[order_id] = BookedOrder(order_id, created_at, created_at, items)
        return order_webhook(connection, order_id, items, created_at)

    def cancel_order(
        self, connection: Connection, order_id: int, cancelled_at: datetime, *, restock: bool = True
    ) -> tuple[bytes, dict[str, str]]:
        """The seller cancels a booked order: with `restock`, Shopify puts its units back on its own count
        and refunds every line with restock_type ``cancel``; the signed ``orders/cancelled`` webhook."""
        booked = self.orders[order_id]
        booked.cancelled_at = booked.updated_at = cancelled_at
        kind = "cancel" if restock else "no_restock"
        if restock:
            for line in booked.line_items:
                ref = connection.listings[line["sku"]].inventory_ref
                if ref in self.available:
                    self.available[ref] += line["quantity"]
        lines = [(line, line["quantity"], kind) for line in booked.line_items]
        booked.refunds.append(refund(order_id * 10 + len(booked.refunds), order_id, lines, cancelled_at))
        return cancelled_webhook(connection, order_id, booked.line_items, booked.refunds, cancelled_at)


def _gql_errors(message: str) -> web.Response:
    """A GraphQL-level refusal: Shopify answers 200 with an ``errors`` list."""
    return web.json_response({"errors": [{"message": message}]})


def _signed(
    connection: Connection, topic: str, payload: dict[str, Any], webhook_id: str, at: datetime
) -> tuple[bytes, dict[str, str]]:
    """`payload` as Shopify delivers a webhook of `topic`: the body bytes and its signed headers."""
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        webhooks.SIGNATURE_HEADER: webhooks.sign(connection.webhook_secret.get_secret_value(), body),
        webhooks.TOPIC_HEADER: topic,
        "X-Shopify-Shop-Domain": f"{connection.id}.myshopify.com",
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Event-Id": f"ev-{webhook_id}",
        "X-Shopify-Triggered-At": at.isoformat(),
        "X-Shopify-API-Version": "2026-01",
    }
    return body, headers


def order_webhook(
    connection: Connection, order_id: int, line_items: list[dict[str, Any]], created_at: datetime
) -> tuple[bytes, dict[str, str]]:
    """A signed ``orders/create`` webhook as Shopify sends it (body bytes and headers)."""
    order = {
        "id": order_id,
        "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
        "created_at": created_at.isoformat(),
        "line_items": line_items,
        "currency": "USD",
    }
    return _signed(connection, "orders/create", order, f"wh-{order_id}", created_at)


def refund(
    refund_id: int, order_id: int, lines: list[tuple[dict[str, Any], int, str]], created_at: datetime
) -> dict[str, Any]:
    """The REST Refund resource: for each (line item, quantity, restock_type) one refund line item."""
    return {
        "id": refund_id,
        "order_id": order_id,
        "created_at": created_at.isoformat(),
        "processed_at": created_at.isoformat(),
        "refund_line_items": [
            {
                "id": refund_id * 100 + n,
                "line_item_id": line["id"],
                "quantity": quantity,
                "restock_type": restock_type,
                "line_item": line,
            }
            for n, (line, quantity, restock_type) in enumerate(lines, start=1)
        ],
    }


def refund_webhook(connection: Connection, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A signed ``refunds/create`` webhook of a Refund resource (see ``refund``)."""
    at = datetime.fromisoformat(payload["created_at"])
    return _signed(connection, "refunds/create", payload, f"wh-refund-{payload['id']}", at)


def cancelled_webhook(
    connection: Connection,
    order_id: int,
    line_items: list[dict[str, Any]],
    refunds: list[dict[str, Any]],
    cancelled_at: datetime,
) -> tuple[bytes, dict[str, str]]:
    """A signed ``orders/cancelled`` webhook: the order with ``cancelled_at`` and the refunds it created."""
    order = {
        "id": order_id,
        "created_at": cancelled_at.isoformat(),
        "cancelled_at": cancelled_at.isoformat(),
        "cancel_reason": "customer",
        "line_items": line_items,
        "refunds": refunds,
    }
    return _signed(connection, "orders/cancelled", order, f"wh-cancel-{order_id}", cancelled_at)


def sample_connection(
    base_url: str, *, skus: tuple[str, ...], conn_id: str = "shop-acme", tenant: str = "acme"
) -> Connection:
    """A connection to this simulator with fresh random secrets and listings for `skus`
    (variant ids 4001, 4002, ..., inventory items gid://shopify/InventoryItem/9001, ...)."""
    return Connection(
        id=conn_id,
        tenant=tenant,
        channel="shopify",
        webhook_secret=SecretStr(secrets.token_urlsafe(24)),
        api_base_url=base_url,
        access_token=SecretStr(f"shpat_{secrets.token_hex(16)}"),
        listings={
            sku: Listing(listing_id=str(4000 + n), inventory_ref=f"gid://shopify/InventoryItem/{9000 + n}")
            for n, sku in enumerate(skus, start=1)
        },
    )
