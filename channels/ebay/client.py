"""Outbound eBay inventory writes: Inventory API ``bulkUpdatePriceQuantity``, reads by ``getInventoryItem``.

Each SKU is sent as one request with both levels eBay asks for: the inventory item's
``shipToLocationAvailability.quantity`` and the published offer's ``availableQuantity`` (the listing shows
the smaller of the two). Up to MAX_BATCH (25) SKUs per call. eBay has no compare-and-set and no reference
field, so ``change_from`` and ``reference`` are not sent. Every call revises the listing; eBay allows 250
revisions a listing per day, which is why callers coalesce to the latest quantity per SKU before writing.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from channels.connection import Connection
from channels.ebay import CHANNEL, INVENTORY_API_PATH, MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S
from channels.errors import ChannelError, error_for_status
from channels.ratelimit import TokenBucket, connection_budget


class EbayInventoryClient:
    """Writes and reads available counts of one eBay seller account (``connection``)."""

    def __init__(
        self, session: aiohttp.ClientSession, connection: Connection, *, budget: TokenBucket | None = None
    ) -> None:
        self._session = session
        self._connection = connection
        self._budget = budget or connection_budget(connection, RATE_LIMIT_PER_S, RATE_BURST)
        self._base = f"{connection.api_base_url.rstrip('/')}{INVENTORY_API_PATH}"

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._connection.access_token.get_secret_value()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def _offer_id(self, sku: str) -> str:
        listing = self._connection.listings.get(sku)
        if listing is None or not listing.inventory_ref:
            raise ChannelError(
                f"SKU {sku!r} has no eBay offer in connection {self._connection.id!r}; "
                "add listings.<sku>.inventory_ref (the offerId from getOffers)",
                status=None,
                retryable=False,
            )
        return listing.inventory_ref

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Set the available count of `sku` (inventory item and offer); raise ChannelError on any failure.
        `change_from` is ignored: eBay offers no compare-and-set."""
        await self.set_many([(sku, quantity)], reference=reference)

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        """Set many counts, MAX_BATCH SKUs per call (the last quantity wins for a repeated SKU).

        All SKUs are checked before anything is sent. Calls before a failing one stay applied; the
        ChannelError names the items eBay refused."""
        latest: dict[str, int] = {}
        for sku, quantity in items:
            if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
                raise ChannelError(
                    f"quantity {quantity!r} for SKU {sku!r} is not a whole number >= 0",
                    status=None,
                    retryable=False,
                )
            latest[sku] = quantity
        requests = [(sku, quantity, self._offer_id(sku)) for sku, quantity in latest.items()]
        for start in range(0, len(requests), MAX_BATCH):
            await self._bulk_update(requests[start : start + MAX_BATCH])

    async def _bulk_update(self, chunk: list[tuple[str, int, str]]) -> None:
        body = {
            "requests": [
                {
                    "sku": sku,
                    "shipToLocationAvailability": {"quantity": quantity},
                    "offers": [{"offerId": offer_id, "availableQuantity": quantity}],
                }
                for sku, quantity, offer_id in chunk
            ]
        }
        await self._budget.acquire()
        async with self._session.post(
            f"{self._base}/bulk_update_price_quantity", json=body, headers=self._headers()
        ) as resp:
            text = await resp.text()
            status, retry_after = resp.status, resp.headers.get("Retry-After")
        if not 200 <= status < 300:
            raise error_for_status(CHANNEL, status, text, retry_after)
        responses = _json_object(text, status).get("responses")
        if not isinstance(responses, list):
            raise ChannelError(
                f"ebay answered HTTP {status} without a 'responses' list: {text[:300]}",
                status=status,
                retryable=False,
            )
        refused = [_describe(r) for r in responses if not isinstance(r, dict) or r.get("statusCode") != 200]
        if refused:
            raise ChannelError(
                f"ebay refused {len(refused)} of {len(chunk)} updates: {'; '.join(refused)}",
                status=status,
                retryable=False,
            )

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        """eBay's ship-to-home quantity of each SKU (0 when eBay reports no availability)."""
        counts: dict[str, int] = {}
        for sku in dict.fromkeys(skus):
            url = f"{self._base}/inventory_item/{quote(sku, safe='')}"
            await self._budget.acquire()
            async with self._session.get(url, headers=self._headers()) as resp:
                text = await resp.text()
                status, retry_after = resp.status, resp.headers.get("Retry-After")
            if not 200 <= status < 300:
                raise error_for_status(CHANNEL, status, text, retry_after)
            availability = _json_object(text, status).get("availability") or {}
            ship = availability.get("shipToLocationAvailability") if isinstance(availability, dict) else None
            quantity = ship.get("quantity", 0) if isinstance(ship, dict) else 0
            if not isinstance(quantity, int) or isinstance(quantity, bool):
                raise ChannelError(
                    f"ebay reported quantity {quantity!r} for SKU {sku!r}, not a whole number",
                    status=status,
                    retryable=False,
                )
            counts[sku] = quantity
        return counts


def _json_object(text: str, status: int) -> dict[str, Any]:
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ChannelError(
            f"ebay answered HTTP {status} with a body that is not a JSON object: {text[:300]}",
            status=status,
            retryable=False,
        )
    return payload


def _describe(response: Any) -> str:
    """One refused item as ``sku 'X' (offer 'Y'): HTTP 400 <eBay's message>``."""
    if not isinstance(response, dict):
        return f"unreadable item {response!r}"
    errors = response.get("errors")
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    message = first.get("longMessage") or first.get("message") or "no message"
    error_id = f" (errorId {first['errorId']})" if "errorId" in first else ""
    return (
        f"sku {response.get('sku')!r} (offer {response.get('offerId')!r}): "
        f"HTTP {response.get('statusCode')}{error_id} {message}"
    )
