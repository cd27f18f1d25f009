"""Outbound Shopify inventory writes: GraphQL Admin ``inventorySetQuantities`` on the ``available`` name.

``changeFromQuantity`` is always sent, as recent API versions require: the quantity we believe the channel
shows (compare-and-set), or null to opt out when we do not know it.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, error_for_status
from channels.shopify import API_VERSION, CHANNEL

SET_QUANTITIES = """
mutation inventorySetQuantities($input: InventorySetQuantitiesInput!) {
  inventorySetQuantities(input: $input) {
    inventoryAdjustmentGroup { reason changes { name delta quantityAfterChange } }
    userErrors { code field message }
  }
}
""".strip()


class ShopifyInventoryClient:
    def __init__(self, session: aiohttp.ClientSession, connection: Connection) -> None:
        self._session = session
        self._connection = connection
        self._url = f"{connection.api_base_url.rstrip('/')}/admin/api/{API_VERSION}/graphql.json"
        self._location = connection.options.get("location_id", "gid://shopify/Location/1")

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Set the channel's available count of `sku`; raise ChannelError on any failure."""
        listing = self._connection.listings.get(sku)
        if listing is None or not listing.inventory_ref:
            raise ChannelError(
                f"SKU {sku!r} has no Shopify inventory item in connection {self._connection.id!r}; "
                "add listings.<sku>.inventory_ref",
                status=None,
                retryable=False,
            )
        variables: dict[str, Any] = {
            "input": {
                "name": "available",
                "reason": "correction",
                "referenceDocumentUri": reference,
                "quantities": [
                    {
                        "inventoryItemId": listing.inventory_ref,
                        "locationId": self._location,
                        "quantity": quantity,
                        "changeFromQuantity": change_from,
                    }
                ],
            }
        }
        headers = {"X-Shopify-Access-Token": self._connection.access_token.get_secret_value()}
        async with self._session.post(
            self._url, json={"query": SET_QUANTITIES, "variables": variables}, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise error_for_status(CHANNEL, resp.status, text, resp.headers.get("Retry-After"))
            payload = await resp.json(content_type=None)
        errors = payload.get("errors") or (payload.get("data") or {}).get("inventorySetQuantities", {}).get(
            "userErrors"
        )
        if errors:
            raise ChannelError(f"shopify refused the update: {errors}", status=200, retryable=False)
