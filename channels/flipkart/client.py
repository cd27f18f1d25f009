"""Outbound Flipkart inventory: Listings v3 inventory updates and listing reads at one location.

Updates are absolute (no compare-and-set), so ``change_from`` is ignored, and carry no reference field.
The reply reports each SKU as SUCCESS, WARNING (applied, with remarks) or FAILURE; failures are raised
together as one non-retryable ChannelError naming each SKU and Flipkart's description.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError
from channels.flipkart import CHANNEL, MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S, api
from channels.ratelimit import TokenBucket, connection_budget


class FlipkartInventoryClient:
    def __init__(
        self, session: aiohttp.ClientSession, connection: Connection, *, budget: TokenBucket | None = None
    ) -> None:
        self._session = session
        self._connection = connection
        self._budget = budget or connection_budget(connection, RATE_LIMIT_PER_S, RATE_BURST)

    def _config_error(self, what: str) -> ChannelError:
        return ChannelError(
            f"connection {self._connection.id!r} has no {what}; set it in the connections file",
            status=None,
            retryable=False,
        )

    def _location(self) -> str:
        location = self._connection.options.get("location_id")
        if not location:
            raise self._config_error("options.location_id (the Flipkart fulfilment location, LOC...)")
        return location

    def _listing(self, sku: str) -> tuple[str, str]:
        """(seller SKU id, FSN) of a master SKU."""
        listing = self._connection.listings.get(sku)
        if listing is None or not listing.inventory_ref:
            raise self._config_error(
                f"listing for SKU {sku!r}: add listings.<sku>.listing_id (seller SKU id) "
                "and inventory_ref (FSN)"
            )
        return listing.listing_id, listing.inventory_ref

    async def _update(self, batch: list[tuple[str, int]], location: str) -> list[str]:
        """One update call; returns a description of every SKU Flipkart refused."""
        body: dict[str, Any] = {}
        master: dict[str, str] = {}
        for sku, quantity in batch:
            if quantity < 0:
                raise ChannelError(
                    f"refusing to send a negative count ({quantity}) for {sku!r} to flipkart",
                    status=None,
                    retryable=False,
                )
            seller_sku, fsn = self._listing(sku)
            master[seller_sku] = sku
            body[seller_sku] = {"product_id": fsn, "locations": [{"id": location, "inventory": quantity}]}
        await self._budget.acquire()
        reply = await api.call(self._session, self._connection, "POST", api.INVENTORY_PATH, payload=body)
        results = reply if isinstance(reply, dict) else {}
        problems: list[str] = []
        for seller_sku, sku in master.items():
            result = results.get(seller_sku)
            status = result.get("status") if isinstance(result, dict) else None
            if status in ("SUCCESS", "WARNING"):
                continue
            errors = result.get("errors") if isinstance(result, dict) else None
            reasons = [
                str(e.get("description") or e.get("code")) for e in errors or [] if isinstance(e, dict)
            ] or [f"status {status!r}"]
            problems.append(f"{sku} (seller SKU {seller_sku}): {'; '.join(reasons)}")
        return problems

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Set the count of `sku` at the configured location; ChannelError on any failure."""
        await self.set_many([(sku, quantity)], reference=reference)

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        """Set several counts, MAX_BATCH SKUs per call. HTTP failures raise at once; SKUs Flipkart refuses
        are collected over all calls and raised together, non-retryable."""
        location = self._location()
        problems: list[str] = []
        for i in range(0, len(items), MAX_BATCH):
            problems += await self._update(items[i : i + MAX_BATCH], location)
        if problems:
            raise ChannelError(
                f"{CHANNEL} refused the inventory update for " + "; ".join(problems),
                status=200,
                retryable=False,
            )

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        """The count at the configured location of each SKU Flipkart lists (unavailable ones are left out)."""
        location = self._location()
        by_seller_sku = {self._listing(sku)[0]: sku for sku in skus}
        wanted = list(by_seller_sku)
        out: dict[str, int] = {}
        for i in range(0, len(wanted), MAX_BATCH):
            chunk = [quote(s, safe="") for s in wanted[i : i + MAX_BATCH]]
            await self._budget.acquire()
            reply = await api.call(self._session, self._connection, "GET", api.listings_path(chunk))
            available = reply.get("available") if isinstance(reply, dict) else None
            for seller_sku, detail in (available or {}).items() if isinstance(available, dict) else []:
                if seller_sku not in by_seller_sku or not isinstance(detail, dict):
                    continue
                for place in detail.get("locations") or []:
                    if isinstance(place, dict) and place.get("id") == location:
                        count = place.get("inventory")
                        if isinstance(count, bool) or not isinstance(count, int):
                            raise ChannelError(
                                f"flipkart reported inventory {count!r} for {seller_sku} at {location}",
                                status=200,
                                retryable=False,
                            )
                        out[by_seller_sku[seller_sku]] = count
        return out
