"""Outbound Etsy inventory writes: ``getListingInventory``, then ``updateListingInventory`` of the listing.

Etsy's PUT replaces every product of the listing (omitted products are deleted), wants offering prices as
decimal numbers rather than the Money objects it returns, and refuses read-only fields (``product_id``,
``offering_id``, ``is_deleted``, ``scale_name``); product and offering ids change on every write, so products
are found by SKU. Quantities above MAX_QUANTITY (999, Etsy's cap per product) are written as 999: the channel
then shows fewer units than exist, never more. Etsy has no compare-and-set and no reference field, so
``change_from`` and ``reference`` are not sent; the read-modify-write leaves a short window in which a
concurrent edit of the same listing in Shop Manager can be overwritten.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, error_for_status
from channels.etsy import API_PATH, CHANNEL, MAX_QUANTITY, RATE_BURST, RATE_LIMIT_PER_S
from channels.ratelimit import TokenBucket, connection_budget

_PROPERTY_VALUE_FIELDS = ("property_id", "property_name", "scale_id", "value_ids", "values")


def api_headers(connection: Connection) -> dict[str, str]:
    """``x-api-key`` (``keystring:shared_secret`` from ``options.api_key``) and the OAuth bearer token
    (``<user id>.<token>``, the connection's access_token)."""
    api_key = connection.options.get("api_key")
    if not api_key or ":" not in api_key:
        raise ChannelError(
            f"connection {connection.id!r} has no Etsy API key; set options.api_key to "
            "'<keystring>:<shared secret>' from Your Apps",
            status=None,
            retryable=False,
        )
    return {
        "x-api-key": api_key,
        "Authorization": f"Bearer {connection.access_token.get_secret_value()}",
        "Accept": "application/json",
    }


class EtsyInventoryClient:
    """Writes and reads available counts of one Etsy shop (``connection``)."""

    def __init__(
        self, session: aiohttp.ClientSession, connection: Connection, *, budget: TokenBucket | None = None
    ) -> None:
        self._session = session
        self._connection = connection
        self._budget = budget or connection_budget(connection, RATE_LIMIT_PER_S, RATE_BURST)
        self._base = f"{connection.api_base_url.rstrip('/')}{API_PATH}"

    def _locate(self, sku: str) -> tuple[str, str]:
        """(Etsy listing id, product SKU on Etsy) of a master SKU."""
        listing = self._connection.listings.get(sku)
        if listing is None:
            raise ChannelError(
                f"SKU {sku!r} has no Etsy listing in connection {self._connection.id!r}; "
                "add listings.<sku>.listing_id",
                status=None,
                retryable=False,
            )
        return listing.listing_id, listing.inventory_ref or sku

    def _group(self, skus: list[str]) -> dict[str, dict[str, str]]:
        """Etsy listing id -> {product SKU on Etsy: master SKU}, checked before any call."""
        groups: dict[str, dict[str, str]] = defaultdict(dict)
        for sku in skus:
            listing_id, etsy_sku = self._locate(sku)
            groups[listing_id][etsy_sku] = sku
        return groups

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Set the available count of `sku`; raise ChannelError on any failure. `change_from` is ignored:
        Etsy offers no compare-and-set."""
        await self.set_many([(sku, quantity)], reference=reference)

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        """Set many counts: one read and one write per Etsy listing (the last quantity wins for a repeated
        SKU). Listings written before a failing one stay written."""
        latest: dict[str, int] = {}
        for sku, quantity in items:
            if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
                raise ChannelError(
                    f"quantity {quantity!r} for SKU {sku!r} is not a whole number >= 0",
                    status=None,
                    retryable=False,
                )
            latest[sku] = quantity
        for listing_id, products in self._group(list(latest)).items():
            inventory = await self._get_inventory(listing_id)
            wanted = {etsy_sku: min(latest[sku], MAX_QUANTITY) for etsy_sku, sku in products.items()}
            await self._put_inventory(listing_id, _updated(listing_id, inventory, wanted))

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        """Etsy's quantity of each SKU's product (the sum of its enabled offerings)."""
        counts: dict[str, int] = {}
        for listing_id, products in self._group(list(dict.fromkeys(skus))).items():
            inventory = await self._get_inventory(listing_id)
            by_sku = _live_products(listing_id, inventory)
            for etsy_sku, sku in products.items():
                product = _only(listing_id, by_sku, etsy_sku)
                counts[sku] = sum(
                    o["quantity"] for o in _live_offerings(product) if o.get("is_enabled", True) is True
                )
        return counts

    async def _get_inventory(self, listing_id: str) -> dict[str, Any]:
        url = f"{self._base}/listings/{listing_id}/inventory"
        await self._budget.acquire()
        async with self._session.get(url, headers=api_headers(self._connection)) as resp:
            text, status, retry_after = await resp.text(), resp.status, resp.headers.get("retry-after")
        return _json_object(text, status, retry_after, f"inventory of listing {listing_id}")

    async def _put_inventory(self, listing_id: str, body: dict[str, Any]) -> None:
        url = f"{self._base}/listings/{listing_id}/inventory"
        await self._budget.acquire()
        async with self._session.put(url, json=body, headers=api_headers(self._connection)) as resp:
            text, status, retry_after = await resp.text(), resp.status, resp.headers.get("retry-after")
        _json_object(text, status, retry_after, f"inventory update of listing {listing_id}")


def _json_object(text: str, status: int, retry_after: str | None, what: str) -> dict[str, Any]:
    if not 200 <= status < 300:
        raise error_for_status(CHANNEL, status, text, retry_after)
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ChannelError(
            f"etsy answered HTTP {status} for the {what} with a body that is not a JSON object: {text[:300]}",
            status=status,
            retryable=False,
        )
    return payload


def _malformed(listing_id: str, detail: str) -> ChannelError:
    return ChannelError(
        f"etsy returned an unreadable inventory for listing {listing_id}: {detail}",
        status=200,
        retryable=False,
    )


def _live_list(listing_id: str, inventory: dict[str, Any]) -> list[dict[str, Any]]:
    """The listing's non-deleted products, in Etsy's order."""
    products = inventory.get("products")
    if not isinstance(products, list):
        raise _malformed(listing_id, "'products' is not a list")
    if not all(isinstance(p, dict) for p in products):
        raise _malformed(listing_id, "a product is not a JSON object")
    return [p for p in products if p.get("is_deleted") is not True]


def _live_products(listing_id: str, inventory: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Product SKU -> the listing's non-deleted products with that SKU."""
    by_sku: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for product in _live_list(listing_id, inventory):
        by_sku[str(product.get("sku") or "")].append(product)
    return by_sku


def _only(listing_id: str, by_sku: dict[str, list[dict[str, Any]]], etsy_sku: str) -> dict[str, Any]:
    found = by_sku.get(etsy_sku, [])
    if len(found) != 1:
        problem = "has no product" if not found else f"has {len(found)} products"
        raise ChannelError(
            f"etsy listing {listing_id} {problem} with SKU {etsy_sku!r}; give every product of the listing "
            "its own SKU on Etsy and map it with listings.<sku>.inventory_ref",
            status=None,
            retryable=False,
        )
    return found[0]


def _live_offerings(product: dict[str, Any]) -> list[dict[str, Any]]:
    offerings = product.get("offerings")
    if not isinstance(offerings, list):
        return []
    return [
        o
        for o in offerings
        if isinstance(o, dict)
        and o.get("is_deleted") is not True
        and isinstance(o.get("quantity"), int)
        and not isinstance(o.get("quantity"), bool)
    ]


def _price(listing_id: str, price: Any) -> float:
    """Etsy returns Money ``{"amount", "divisor", "currency_code"}`` but takes a decimal number."""
    if isinstance(price, dict):
        amount, divisor = price.get("amount"), price.get("divisor")
        if isinstance(amount, int) and isinstance(divisor, int) and divisor > 0:
            return amount / divisor
    if isinstance(price, (int, float)) and not isinstance(price, bool):
        return float(price)
    raise _malformed(listing_id, f"offering price {price!r} is not a Money object")


def _updated(listing_id: str, inventory: dict[str, Any], wanted: dict[str, int]) -> dict[str, Any]:
    """The PUT body re-sending every live product, with the `wanted` product SKUs' quantities replaced."""
    by_sku = _live_products(listing_id, inventory)
    for etsy_sku in wanted:
        _only(listing_id, by_sku, etsy_sku)
    products = []
    for product in _live_list(listing_id, inventory):
        etsy_sku = str(product.get("sku") or "")
        offerings = []
        for offering in _live_offerings(product):
            clean: dict[str, Any] = {
                "price": _price(listing_id, offering.get("price")),
                "quantity": wanted.get(etsy_sku, offering["quantity"]),
                "is_enabled": offering.get("is_enabled", True) is True,
            }
            if offering.get("readiness_state_id") is not None:
                clean["readiness_state_id"] = offering["readiness_state_id"]
            offerings.append(clean)
        values = product.get("property_values")
        products.append(
            {
                "sku": etsy_sku,
                "property_values": [
                    {k: v[k] for k in _PROPERTY_VALUE_FIELDS if k in v}
                    for v in (values if isinstance(values, list) else [])
                    if isinstance(v, dict)
                ],
                "offerings": offerings,
            }
        )
    body: dict[str, Any] = {"products": products}
    for key in (
        "price_on_property",
        "quantity_on_property",
        "sku_on_property",
        "readiness_state_on_property",
    ):
        if isinstance(inventory.get(key), list):
            body[key] = inventory[key]
    return body
