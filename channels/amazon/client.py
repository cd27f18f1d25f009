"""Outbound Amazon quantities: Listings Items API ``patchListingsItem`` on ``fulfillment_availability``.

``PATCH /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds=...`` with body
``{"productType": ..., "patches": [{"op": "merge", "path": "/attributes/fulfillment_availability",
"value": [{"fulfillment_channel_code": "DEFAULT", "quantity": n}]}]}`` and the Login-with-Amazon access token
in ``x-amz-access-token``. ``merge`` (documented since June 2025) changes only ``quantity``; ``replace`` would
also clear the listing's handling time and restock date. A 200 answer carries ``status`` ``ACCEPTED`` or
``INVALID`` and ``issues``; ACCEPTED means queued, and Amazon shows the quantity some time later.

Connection options: ``seller_id`` (required), ``marketplace_id`` (default ATVPDKIKX0DER, amazon.com),
``product_type`` (default ``PRODUCT``, accepted for offer-only patches), ``fulfillment_channel_code``
(default ``DEFAULT``, merchant-fulfilled stock; FBA quantities belong to Amazon and are never written).

Amazon has no compare-and-set on quantity and no field for our reference: ``change_from`` and ``reference``
are accepted for the common interface and not sent. Amazon's 429 carries ``x-amzn-RateLimit-Limit``, not
always ``Retry-After``; when the latter is absent the wait for one request at that rate is reported.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from channels.amazon import CHANNEL, LISTINGS_API_VERSION, RATE_BURST, RATE_LIMIT_PER_S
from channels.connection import Connection
from channels.errors import ChannelError, error_for_status
from channels.ratelimit import TokenBucket, connection_budget

DEFAULT_MARKETPLACE = "ATVPDKIKX0DER"
DEFAULT_PRODUCT_TYPE = "PRODUCT"
DEFAULT_FULFILLMENT_CHANNEL = "DEFAULT"
FULFILLMENT_AVAILABILITY = "/attributes/fulfillment_availability"


def _retry_after(headers: Any) -> str | None:
    """``Retry-After`` if sent, else one request's interval at the ``x-amzn-RateLimit-Limit`` rate."""
    given = headers.get("Retry-After")
    if given:
        return str(given)
    limit = headers.get("x-amzn-RateLimit-Limit")
    try:
        rate = float(limit) if limit else 0.0
    except ValueError:
        return None
    return f"{1.0 / rate:.3f}" if rate > 0 else None


class AmazonInventoryClient:
    def __init__(
        self, session: aiohttp.ClientSession, connection: Connection, *, budget: TokenBucket | None = None
    ) -> None:
        self._session = session
        self._connection = connection
        self._budget = budget or connection_budget(connection, RATE_LIMIT_PER_S, RATE_BURST)
        self._base = f"{connection.api_base_url.rstrip('/')}/listings/{LISTINGS_API_VERSION}/items"
        options = connection.options
        self._seller_id = options.get("seller_id", "")
        self._marketplace = options.get("marketplace_id", DEFAULT_MARKETPLACE)
        self._product_type = options.get("product_type", DEFAULT_PRODUCT_TYPE)
        self._fulfillment_channel = options.get("fulfillment_channel_code", DEFAULT_FULFILLMENT_CHANNEL)

    def _seller_sku(self, sku: str) -> str:
        listing = self._connection.listings.get(sku)
        if listing is None or not listing.listing_id:
            raise ChannelError(
                f"SKU {sku!r} has no Amazon listing in connection {self._connection.id!r}; "
                "add listings.<sku>.listing_id = the seller SKU on Amazon",
                status=None,
                retryable=False,
            )
        return listing.listing_id

    def _url(self, seller_sku: str) -> str:
        if not self._seller_id:
            raise ChannelError(
                f"connection {self._connection.id!r} has no options.seller_id "
                "(the Amazon merchant token); set it",
                status=None,
                retryable=False,
            )
        # SKUs may hold "/", "#", spaces...: Amazon requires them percent-encoded in the path.
        return f"{self._base}/{quote(self._seller_id, safe='')}/{quote(seller_sku, safe='')}"

    def _headers(self) -> dict[str, str]:
        return {
            "x-amz-access-token": self._connection.access_token.get_secret_value(),
            "Accept": "application/json",
        }

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Make Amazon offer `quantity` of `sku` (a negative target as 0); raise ChannelError on failure."""
        seller_sku = self._seller_sku(sku)
        body = {
            "productType": self._product_type,
            "patches": [
                {
                    "op": "merge",
                    "path": FULFILLMENT_AVAILABILITY,
                    "value": [
                        {"fulfillment_channel_code": self._fulfillment_channel, "quantity": max(0, quantity)}
                    ],
                }
            ],
        }
        await self._budget.acquire()
        async with self._session.patch(
            self._url(seller_sku),
            params={"marketplaceIds": self._marketplace},
            json=body,
            headers=self._headers(),
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise error_for_status(CHANNEL, resp.status, text, _retry_after(resp.headers))
        try:
            answer = json.loads(text)
        except ValueError as exc:
            # The write may or may not be queued; an absolute quantity can be sent again safely.
            raise ChannelError(
                f"amazon answered 200 without a JSON submission result for {sku!r}: {exc}",
                status=200,
                retryable=True,
            ) from exc
        if not isinstance(answer, dict):
            answer = {}
        issues = answer.get("issues")
        listed = issues if isinstance(issues, list) else []
        errors = [i for i in listed if isinstance(i, dict) and i.get("severity") == "ERROR"]
        if answer.get("status") != "ACCEPTED" or errors:
            raise ChannelError(
                f"amazon refused quantity {quantity} for SKU {sku!r} (seller SKU {seller_sku!r}): "
                f"status {answer.get('status')!r}, issues {errors or issues}",
                status=200,
                retryable=False,
            )

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        """One patch per SKU, in order (no bulk endpoint worth its limits; see the package docstring).

        A retryable failure (429, 5xx) stops at once, since the next call would meet the same budget; a
        per-SKU refusal does not stop the others, and one ChannelError naming every refused SKU follows.
        """
        refused: list[ChannelError] = []
        for sku, quantity in items:
            try:
                await self.set_available(sku, quantity, change_from=None, reference=reference)
            except ChannelError as exc:
                if exc.retryable:
                    raise
                refused.append(exc)
        if len(refused) == 1:
            raise refused[0]
        if refused:
            raise ChannelError(
                f"amazon refused {len(refused)} of {len(items)} SKUs: " + "; ".join(str(e) for e in refused),
                status=refused[0].status,
                retryable=False,
            )

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        """Amazon's current merchant-fulfilled quantity of each SKU (``getListingsItem``, one call each)."""
        counts: dict[str, int] = {}
        for sku in skus:
            seller_sku = self._seller_sku(sku)
            await self._budget.acquire()
            async with self._session.get(
                self._url(seller_sku),
                params={"marketplaceIds": self._marketplace, "includedData": "fulfillmentAvailability"},
                headers=self._headers(),
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise error_for_status(CHANNEL, resp.status, text, _retry_after(resp.headers))
            try:
                item = json.loads(text)
            except ValueError as exc:
                raise ChannelError(
                    f"amazon answered 200 without a JSON listing for {sku!r}: {exc}",
                    status=200,
                    retryable=True,
                ) from exc
            availability = item.get("fulfillmentAvailability") if isinstance(item, dict) else None
            quantity = next(
                (
                    a.get("quantity")
                    for a in (availability if isinstance(availability, list) else [])
                    if isinstance(a, dict) and a.get("fulfillmentChannelCode") == self._fulfillment_channel
                ),
                None,
            )
            if not isinstance(quantity, int) or isinstance(quantity, bool):
                raise ChannelError(
                    f"amazon listing {seller_sku!r} (SKU {sku!r}) has no {self._fulfillment_channel} "
                    f"quantity (fulfillmentAvailability {availability!r}); "
                    "an FBA-only listing cannot be synced",
                    status=200,
                    retryable=False,
                )
            counts[sku] = quantity
        return counts
