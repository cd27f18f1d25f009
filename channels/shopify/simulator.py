"""A Shopify simulator: the Admin GraphQL inventory endpoint and signed ``orders/create`` webhooks.

It keeps per-inventory-item ``available`` counts, applies ``inventorySetQuantities`` with Shopify's
compare-and-set rule (``changeFromQuantity`` must equal the stored count unless null), records every call,
and can be told to fail the next calls with a given HTTP status.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.ratelimit import TokenBucket
from channels.shopify import RATE_BURST, RATE_LIMIT_PER_S, webhooks

DEFAULT_LOCATION = "gid://shopify/Location/1"


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
class ShopifySimulator:
    access_token: str
    location_id: str = DEFAULT_LOCATION
    available: dict[str, int] = field(default_factory=dict)
    calls: list[SetCall] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    rate_limited: int = 0  # requests answered 429: over the budget
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(RATE_LIMIT_PER_S, RATE_BURST))
    failing_until: float = 0.0
    failing_status: int = 503

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/admin/api/{version}/graphql.json", self._graphql)
        return app

    def fail_next(self, status: int, times: int = 1) -> None:
        self.failures.extend([status] * times)

    def fail_for(self, status: int, seconds: float) -> None:
        """Answer every request with `status` for the next `seconds` (an outage)."""
        self.failing_status, self.failing_until = status, time.monotonic() + seconds

    def _error(self, status: int, message: str) -> web.Response:
        headers = {"Retry-After": "1"} if status == 429 else {}
        return web.json_response({"errors": message}, status=status, headers=headers)

    async def _graphql(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Shopify-Access-Token") != self.access_token:
            return self._error(
                401, "[API] Invalid API key or access token (unrecognized login or wrong password)"
            )
        wait = self.bucket.take()
        if wait > 0:
            self.rate_limited += 1
            return web.json_response(
                {"errors": "Throttled"}, status=429, headers={"Retry-After": f"{max(1, math.ceil(wait))}"}
            )
        if time.monotonic() < self.failing_until:
            return self._error(self.failing_status, "injected outage")
        if self.failures:
            return self._error(self.failures.pop(0), "injected failure")
        try:
            payload: dict[str, Any] = await request.json()
        except json.JSONDecodeError:
            return self._error(400, "body is not JSON")
        query = str(payload.get("query", ""))
        if "inventoryLevel" in query and "nodes" in query:
            return self._read(payload.get("variables") or {})
        if "inventorySetQuantities" not in query:
            return self._error(
                400, "this simulator serves inventorySetQuantities and inventory level reads only"
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

    def place_order(
        self, connection: Connection, order_id: int, lines: list[tuple[str, int]], created_at: datetime
    ) -> tuple[bytes, dict[str, str]]:
        """A buyer orders on the storefront: Shopify decrements its own count and signs the webhook."""
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
        return order_webhook(connection, order_id, items, created_at)


def order_webhook(
    connection: Connection, order_id: int, line_items: list[dict[str, Any]], created_at: datetime
) -> tuple[bytes, dict[str, str]]:
    """A signed ``orders/create`` webhook as Shopify sends it (body bytes and headers)."""
    body = json.dumps(
        {
            "id": order_id,
            "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
            "created_at": created_at.isoformat(),
            "line_items": line_items,
            "currency": "USD",
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        webhooks.SIGNATURE_HEADER: webhooks.sign(connection.webhook_secret.get_secret_value(), body),
        webhooks.TOPIC_HEADER: "orders/create",
        "X-Shopify-Shop-Domain": f"{connection.id}.myshopify.com",
        "X-Shopify-Webhook-Id": f"wh-{order_id}",
        "X-Shopify-Event-Id": f"ev-{order_id}",
        "X-Shopify-Triggered-At": created_at.isoformat(),
        "X-Shopify-API-Version": "2026-01",
    }
    return body, headers


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
