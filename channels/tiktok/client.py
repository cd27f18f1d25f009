"""Outbound TikTok Shop inventory: Update Inventory (202309) per product, Get Product for reads.

Writes are absolute (no compare-and-set), so ``change_from`` is ignored and ``reference`` has nowhere to go.
One call carries SKUs of one product only, so ``set_many`` groups by product (MAX_BATCH SKUs per call).
TikTok caps a SKU's stock at 99,999: larger counts are sent as 99,999, the most the channel can show.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError
from channels.ratelimit import TokenBucket, connection_budget
from channels.tiktok import CHANNEL, MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S, api

MAX_QUANTITY = 99_999


def _count(value: Any, product_id: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChannelError(
            f"tiktok reported quantity {value!r} for product {product_id}, not a whole number",
            status=200,
            retryable=False,
        )
    return value


class TikTokInventoryClient:
    def __init__(
        self, session: aiohttp.ClientSession, connection: Connection, *, budget: TokenBucket | None = None
    ) -> None:
        self._session = session
        self._connection = connection
        self._budget = budget or connection_budget(connection, RATE_LIMIT_PER_S, RATE_BURST)
        # Optional: a SKU stocked in one default warehouse may omit it; multi-warehouse shops must set it.
        self._warehouse = connection.options.get("warehouse_id")

    def _ref(self, sku: str) -> tuple[str, str]:
        """(product id, SKU id) of a master SKU."""
        listing = self._connection.listings.get(sku)
        if listing is None or not listing.inventory_ref:
            raise ChannelError(
                f"SKU {sku!r} has no TikTok product/SKU id in connection {self._connection.id!r}; add "
                "listings.<sku>.listing_id (product id) and inventory_ref (SKU id)",
                status=None,
                retryable=False,
            )
        return listing.listing_id, listing.inventory_ref

    def _stock(self, quantity: int) -> dict[str, Any]:
        if quantity < 0:
            raise ChannelError(
                f"refusing to send a negative count ({quantity}) to tiktok", status=None, retryable=False
            )
        stock: dict[str, Any] = {"quantity": min(quantity, MAX_QUANTITY)}
        if self._warehouse:
            stock["warehouse_id"] = self._warehouse
        return stock

    async def _update(self, product_id: str, items: list[tuple[str, str, int]]) -> list[str]:
        """One Update Inventory call; returns the per-SKU errors TikTok reported (empty if none)."""
        payload = {"skus": [{"id": sku_id, "inventory": [self._stock(qty)]} for _, sku_id, qty in items]}
        await self._budget.acquire()
        data = await api.call(
            self._session, self._connection, "POST", api.inventory_update_path(product_id), payload=payload
        )
        by_sku_id = {sku_id: sku for sku, sku_id, _ in items}
        problems: list[str] = []
        for error in data.get("errors") or []:
            detail = error.get("detail") if isinstance(error, dict) else None
            sku_id = str(detail.get("sku_id")) if isinstance(detail, dict) else "?"
            message = error.get("message") if isinstance(error, dict) else error
            problems.append(f"{by_sku_id.get(sku_id, sku_id)} (TikTok SKU {sku_id}): {message}")
        return problems

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Set the available count of `sku` at the configured warehouse; ChannelError on any failure."""
        await self.set_many([(sku, quantity)], reference=reference)

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        """Set several counts: one call per product (MAX_BATCH SKUs at most). HTTP failures raise at once;
        SKUs TikTok refuses are collected over all calls and raised together, non-retryable."""
        by_product: dict[str, list[tuple[str, str, int]]] = {}
        for sku, quantity in items:
            product_id, sku_id = self._ref(sku)
            by_product.setdefault(product_id, []).append((sku, sku_id, quantity))
        problems: list[str] = []
        for product_id, group in by_product.items():
            for i in range(0, len(group), MAX_BATCH):
                problems += await self._update(product_id, group[i : i + MAX_BATCH])
        if problems:
            raise ChannelError(
                f"{CHANNEL} refused the inventory update for " + "; ".join(problems),
                status=200,
                retryable=False,
            )

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        """The channel's available count of each SKU it knows (at the configured warehouse, else the sum)."""
        by_product: dict[str, dict[str, str]] = {}
        for sku in skus:
            product_id, sku_id = self._ref(sku)
            by_product.setdefault(product_id, {})[sku_id] = sku
        out: dict[str, int] = {}
        for product_id, wanted in by_product.items():
            await self._budget.acquire()
            data = await api.call(self._session, self._connection, "GET", api.product_path(product_id))
            for entry in data.get("skus") or []:
                if not isinstance(entry, dict) or str(entry.get("id")) not in wanted:
                    continue
                counts = [
                    _count(stock.get("quantity"), product_id)
                    for stock in entry.get("inventory") or []
                    if isinstance(stock, dict)
                    and (not self._warehouse or str(stock.get("warehouse_id")) == self._warehouse)
                ]
                out[wanted[str(entry["id"])]] = sum(counts)
        return out
