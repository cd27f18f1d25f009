"""Outbound BigCommerce inventory: Catalog API batch variant updates, per-product variant reads.

``PUT /v3/catalog/variants`` sets ``inventory_level`` absolutely for up to MAX_BATCH variants of any
products; there is no compare-and-set, so ``change_from`` is ignored, and no reference field. A 207
(multi-status) means some variants were not updated: it is raised as a non-retryable ChannelError naming
them. The Catalog API reads and writes the store's default location only.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from channels.bigcommerce import CHANNEL, MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S, api
from channels.connection import Connection
from channels.errors import ChannelError
from channels.ratelimit import TokenBucket, connection_budget

PAGE_SIZE = 250


class BigCommerceInventoryClient:
    def __init__(
        self, session: aiohttp.ClientSession, connection: Connection, *, budget: TokenBucket | None = None
    ) -> None:
        self._session = session
        self._connection = connection
        self._budget = budget or connection_budget(connection, RATE_LIMIT_PER_S, RATE_BURST)

    def _listing(self, sku: str) -> tuple[str, str | None]:
        """(variant id, product id or None) of a master SKU."""
        listing = self._connection.listings.get(sku)
        if listing is None:
            raise ChannelError(
                f"SKU {sku!r} has no BigCommerce variant in connection {self._connection.id!r}; add "
                "listings.<sku>.listing_id (variant id) and inventory_ref (product id)",
                status=None,
                retryable=False,
            )
        return listing.listing_id, listing.inventory_ref

    async def _put(self, batch: list[tuple[str, int]]) -> None:
        by_variant: dict[str, str] = {}
        body: list[dict[str, Any]] = []
        for sku, quantity in batch:
            if quantity < 0:
                raise ChannelError(
                    f"refusing to send a negative count ({quantity}) for {sku!r} to bigcommerce",
                    status=None,
                    retryable=False,
                )
            variant_id, _ = self._listing(sku)
            by_variant[variant_id] = sku
            body.append(
                {
                    "id": int(variant_id) if (variant_id.isascii() and variant_id.isdigit()) else variant_id,
                    "inventory_level": quantity,
                }
            )
        await self._budget.acquire()
        status, reply = await api.call(
            self._session, self._connection, "PUT", "/v3/catalog/variants", payload=body
        )
        if status == 207:
            errors = reply.get("errors") if isinstance(reply, dict) else None
            detail = errors.get("errors") if isinstance(errors, dict) else None
            title = errors.get("title") if isinstance(errors, dict) else None
            named = (
                "; ".join(f"{by_variant.get(str(k), k)} (variant {k}): {v}" for k, v in detail.items())
                if isinstance(detail, dict) and detail
                else f"variants {sorted(by_variant)}"
            )
            raise ChannelError(
                f"{CHANNEL} did not update every variant ({title or 'multi-status'}): {named}",
                status=status,
                retryable=False,
            )

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Set the default location's inventory level of `sku`; ChannelError on any failure."""
        await self._put([(sku, quantity)])

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        """Set several levels, MAX_BATCH variants per call; the first failing call raises."""
        for i in range(0, len(items), MAX_BATCH):
            await self._put(items[i : i + MAX_BATCH])

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        """The channel's inventory level of each SKU it knows, one read per product (paged)."""
        by_product: dict[str, dict[str, str]] = {}
        for sku in skus:
            variant_id, product_id = self._listing(sku)
            if not product_id:
                raise ChannelError(
                    f"SKU {sku!r} has no product id in connection {self._connection.id!r}; add "
                    "listings.<sku>.inventory_ref (the BigCommerce product id) to read its level",
                    status=None,
                    retryable=False,
                )
            by_product.setdefault(product_id, {})[variant_id] = sku
        out: dict[str, int] = {}
        for product_id, wanted in by_product.items():
            page = total_pages = 1
            while page <= total_pages:
                await self._budget.acquire()
                _, reply = await api.call(
                    self._session,
                    self._connection,
                    "GET",
                    f"/v3/catalog/products/{product_id}/variants",
                    params={
                        "include_fields": "inventory_level,sku",
                        "limit": str(PAGE_SIZE),
                        "page": str(page),
                    },
                )
                page_data = reply.get("data") if isinstance(reply, dict) else None
                for variant in page_data if isinstance(page_data, list) else []:
                    level = variant.get("inventory_level") if isinstance(variant, dict) else None
                    if isinstance(variant, dict) and str(variant.get("id")) in wanted:
                        if isinstance(level, bool) or not isinstance(level, int):
                            raise ChannelError(
                                f"bigcommerce reported inventory_level {level!r} "
                                f"for variant {variant.get('id')}",
                                status=200,
                                retryable=False,
                            )
                        out[wanted[str(variant["id"])]] = level
                pagination = (reply.get("meta") or {}).get("pagination") if isinstance(reply, dict) else None
                pages = pagination.get("total_pages") if isinstance(pagination, dict) else None
                total_pages = pages if isinstance(pages, int) and not isinstance(pages, bool) else 1
                page += 1
        return out
