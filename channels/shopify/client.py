"""Outbound Shopify inventory: GraphQL Admin ``inventorySetQuantities`` on the ``available`` name, and reads.

``changeFromQuantity`` is always sent, as recent API versions require: the count we believe the channel shows
(compare-and-set), or null to opt out when we do not know it. A mismatch raises CompareMismatch with the
count Shopify holds, so the caller can decide instead of overwriting a sale it has not heard of yet.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, CompareMismatch, error_for_status
from channels.ratelimit import TokenBucket, connection_budget
from channels.shopify import API_VERSION, CHANNEL, MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S

SET_QUANTITIES = """
mutation inventorySetQuantities($input: InventorySetQuantitiesInput!) {
  inventorySetQuantities(input: $input) {
    inventoryAdjustmentGroup { reason changes { name delta quantityAfterChange } }
    userErrors { code field message }
  }
}
""".strip()

READ_LEVELS = """
query inventoryLevels($ids: [ID!]!, $locationId: ID!) {
  nodes(ids: $ids) {
    ... on InventoryItem {
      id
      inventoryLevel(locationId: $locationId) { quantities(names: ["available"]) { name quantity } }
    }
  }
}
""".strip()


class ShopifyInventoryClient:
    def __init__(
        self, session: aiohttp.ClientSession, connection: Connection, *, budget: TokenBucket | None = None
    ) -> None:
        self._session = session
        self._connection = connection
        self._budget = budget or connection_budget(connection, RATE_LIMIT_PER_S, RATE_BURST)
        self._url = f"{connection.api_base_url.rstrip('/')}/admin/api/{API_VERSION}/graphql.json"
        self._location = connection.options.get("location_id", "gid://shopify/Location/1")

    def _item(self, sku: str) -> str:
        listing = self._connection.listings.get(sku)
        if listing is None or not listing.inventory_ref:
            raise ChannelError(
                f"SKU {sku!r} has no Shopify inventory item in connection {self._connection.id!r}; "
                "add listings.<sku>.inventory_ref",
                status=None,
                retryable=False,
            )
        return listing.inventory_ref

    async def _graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        headers = {"X-Shopify-Access-Token": self._connection.access_token.get_secret_value()}
        await self._budget.acquire()
        async with self._session.post(
            self._url, json={"query": query, "variables": variables}, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise error_for_status(CHANNEL, resp.status, text, resp.headers.get("Retry-After"))
            payload: dict[str, Any] = await resp.json(content_type=None)
        if payload.get("errors"):
            raise ChannelError(
                f"shopify refused the request: {payload['errors']}", status=200, retryable=False
            )
        return payload.get("data") or {}

    async def _set(self, items: list[tuple[str, int, int | None]], reference: str) -> None:
        quantities = [
            {
                "inventoryItemId": self._item(sku),
                "locationId": self._location,
                "quantity": qty,
                "changeFromQuantity": frm,
            }
            for sku, qty, frm in items
        ]
        spec = {
            "name": "available",
            "reason": "correction",
            "referenceDocumentUri": reference,
            "quantities": quantities,
        }
        data = await self._graphql(SET_QUANTITIES, {"input": spec})
        errors = (data.get("inventorySetQuantities") or {}).get("userErrors") or []
        stale = [e for e in errors if e.get("code") == "CHANGE_FROM_QUANTITY_STALE"]
        if stale and len(items) == 1:
            current = (await self.get_available([items[0][0]])).get(items[0][0])
            raise CompareMismatch(f"shopify holds another count: {stale[0].get('message')}", current=current)
        if errors:
            raise ChannelError(f"shopify refused the update: {errors}", status=200, retryable=False)

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Set the channel's available count of `sku` (compare-and-set when `change_from` is known)."""
        await self._set([(sku, quantity, change_from)], reference)

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        """Set several counts, MAX_BATCH per call, without compare-and-set."""
        for i in range(0, len(items), MAX_BATCH):
            await self._set([(sku, qty, None) for sku, qty in items[i : i + MAX_BATCH]], reference)

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        """The channel's current available count of each SKU it knows."""
        by_item = {self._item(sku): sku for sku in skus}
        data = await self._graphql(READ_LEVELS, {"ids": list(by_item), "locationId": self._location})
        out: dict[str, int] = {}
        for node in data.get("nodes") or []:
            if not node or node.get("id") not in by_item:
                continue
            for q in ((node.get("inventoryLevel") or {}).get("quantities")) or []:
                if q.get("name") == "available":
                    out[by_item[node["id"]]] = int(q["quantity"])
        return out
