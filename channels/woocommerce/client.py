"""Outbound WooCommerce stock writes over the REST API v3.

A listing's ``listing_id`` is the product id (simple products) or the variation id; ``inventory_ref`` is
``"<parent id>/<variation id>"`` for variations, which live under their parent product's URL. Writes set
``stock_quantity`` absolutely (``manage_stock`` on): WooCommerce has no compare-and-set, so ``change_from``
is ignored, and it has no field for ``reference`` either. A set is idempotent, so a retry after a partial
failure is safe.
"""

from __future__ import annotations

import base64
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, error_for_status
from channels.ratelimit import TokenBucket, connection_budget
from channels.woocommerce import API_NAMESPACE, CHANNEL, MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S

_ID = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class Target:
    """Where one SKU's stock lives: a product, or a variation under its parent product."""

    item_id: int
    parent_id: int | None = None

    @property
    def collection(self) -> str:
        """The REST collection path holding this item (relative to ``/wp-json/wc/v3``)."""
        return "products" if self.parent_id is None else f"products/{self.parent_id}/variations"


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class WooCommerceInventoryClient:
    def __init__(
        self, session: aiohttp.ClientSession, connection: Connection, *, budget: TokenBucket | None = None
    ) -> None:
        self._session = session
        self._connection = connection
        self._budget = budget or connection_budget(connection, RATE_LIMIT_PER_S, RATE_BURST)
        self._base = f"{connection.api_base_url.rstrip('/')}/wp-json/{API_NAMESPACE}"
        key, sep, secret = connection.access_token.get_secret_value().partition(":")
        # HTTP Basic with the REST key pair (WooCommerce accepts it over HTTPS).
        self._authorization = (
            "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()
            if sep and key and secret
            else None
        )

    def target(self, sku: str) -> Target:
        """The product or variation behind `sku`; ChannelError(retryable=False) if it is not configured."""
        listing = self._connection.listings.get(sku)
        if listing is None:
            raise ChannelError(
                f"SKU {sku!r} is not listed in connection {self._connection.id!r}; add listings.<sku>",
                status=None,
                retryable=False,
            )
        if listing.inventory_ref:
            parent, sep, variation = listing.inventory_ref.partition("/")
            if sep and _ID.fullmatch(parent) and _ID.fullmatch(variation):
                return Target(int(variation), int(parent))
            raise ChannelError(
                f"SKU {sku!r}: inventory_ref {listing.inventory_ref!r} is not '<parent id>/<variation id>'; "
                "fix it, or remove it for a simple product",
                status=None,
                retryable=False,
            )
        if not _ID.fullmatch(listing.listing_id):
            raise ChannelError(
                f"SKU {sku!r}: listing_id {listing.listing_id!r} is not a WooCommerce product id",
                status=None,
                retryable=False,
            )
        return Target(int(listing.listing_id))

    def _credentials(self) -> str:
        if self._authorization is None:
            raise ChannelError(
                f"connection {self._connection.id!r}: access_token must be "
                "'<consumer key>:<consumer secret>' of a WooCommerce REST API key with write access",
                status=None,
                retryable=False,
            )
        return self._authorization

    async def _call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        await self._budget.acquire()
        async with self._session.request(
            method,
            f"{self._base}/{path}",
            json=json,
            params=params,
            headers={"Authorization": self._credentials(), "Accept": "application/json"},
        ) as resp:
            text = await resp.text()
            if not 200 <= resp.status < 300:
                raise error_for_status(CHANNEL, resp.status, text, resp.headers.get("Retry-After"))
            try:
                return await resp.json(content_type=None)
            except ValueError as exc:
                # Usually PHP notices printed into the REST output: retrying will not help.
                raise ChannelError(
                    f"woocommerce answered HTTP {resp.status} with a body that is not JSON: {text[:200]!r}; "
                    "check the store for PHP notices or a caching/security plugin rewriting REST responses",
                    status=resp.status,
                    retryable=False,
                ) from exc

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Set the stock of `sku`'s product or variation; raise ChannelError on any failure."""
        target = self.target(sku)
        await self._call(
            "PUT",
            f"{target.collection}/{target.item_id}",
            json={"stock_quantity": quantity, "manage_stock": True},
        )

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        """Set many SKUs with ``.../batch`` calls (≤ MAX_BATCH updates each, one collection per call).

        Everything that can be sent is sent; then one ChannelError(retryable=False) names every SKU that
        was not configured or that WooCommerce refused. HTTP failures raise at once (earlier batches stay
        applied).
        """
        latest = dict(items)  # a later quantity for the same SKU wins
        problems: list[str] = []
        groups: dict[str, list[tuple[str, int, Target]]] = defaultdict(list)
        for sku, quantity in latest.items():
            try:
                target = self.target(sku)
            except ChannelError as exc:
                problems.append(str(exc))
                continue
            groups[target.collection].append((sku, quantity, target))
        for collection, group in groups.items():
            for chunk in _chunks(group, MAX_BATCH):
                by_id = {target.item_id: sku for sku, _, target in chunk}
                update = [
                    {"id": target.item_id, "stock_quantity": quantity, "manage_stock": True}
                    for _, quantity, target in chunk
                ]
                body = await self._call("POST", f"{collection}/batch", json={"update": update})
                problems.extend(_batch_errors(body, by_id, len(update)))
        if problems:
            raise ChannelError(
                "woocommerce did not take every stock update: " + "; ".join(problems),
                status=200,
                retryable=False,
            )

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        """Current ``stock_quantity`` per SKU. SKUs the store does not know or does not stock-manage are
        left out; a SKU missing from the connection's listings raises ChannelError(retryable=False)."""
        groups: dict[str, list[tuple[str, Target]]] = defaultdict(list)
        for sku in dict.fromkeys(skus):
            target = self.target(sku)
            groups[target.collection].append((sku, target))
        found: dict[str, int] = {}
        for collection, group in groups.items():
            for chunk in _chunks(group, MAX_BATCH):
                by_id = {target.item_id: sku for sku, target in chunk}
                params = {"include": ",".join(str(i) for i in by_id), "per_page": str(len(by_id))}
                body = await self._call("GET", collection, params=params)
                if not isinstance(body, list):
                    raise ChannelError(
                        f"woocommerce answered GET {collection} with {type(body).__name__}, not a list",
                        status=200,
                        retryable=False,
                    )
                for product in body:
                    if not isinstance(product, dict):
                        continue
                    item = product.get("id")
                    owner = by_id.get(item) if isinstance(item, int) else None
                    stock = product.get("stock_quantity")
                    if owner is not None and isinstance(stock, int) and not isinstance(stock, bool):
                        found[owner] = stock
        return found


def _batch_errors(body: Any, by_id: dict[int, str], sent: int) -> list[str]:
    """Per-item refusals in a batch answer, each naming the SKU and WooCommerce's message."""
    results = body.get("update") if isinstance(body, dict) else None
    if not isinstance(results, list):
        return [f"batch answer has no 'update' list for {sent} items: {str(body)[:200]}"]
    problems = []
    for result in results:
        if isinstance(result, dict) and isinstance(result.get("error"), dict):
            error = result["error"]
            item = result.get("id")
            sku = by_id.get(item) if isinstance(item, int) else None
            problems.append(
                f"SKU {sku!r} (item {item!r}): {error.get('code', 'error')}: {error.get('message', error)}"
            )
    return problems
