"""Outbound Walmart inventory: ``PUT /v3/inventory`` per SKU, an inventory feed for big batches, GET to read.

A listing's ``listing_id`` is the seller SKU on Walmart (it may differ from the master SKU). Options:
``ship_node`` (else the seller's default node), ``channel_type`` (``WM_CONSUMER.CHANNEL.TYPE``, if Walmart
issued one). ``access_token`` is ``"<client id>:<client secret>"``: access tokens come from ``POST /v3/token``
and are cached until a minute before they expire; a 401 on a cached token fetches a fresh one, once.

Writes are absolute (no compare-and-set: ``change_from`` is ignored) and idempotent. ``reference`` is not
sent: ``WM_QOS.CORRELATION_ID`` must be unique per call, so each call gets a fresh UUID. Feeds are
asynchronous: set_many returns once Walmart accepted a feed (its id is appended to ``feed_ids``);
``feed_status`` reports the per-item outcome later.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, error_for_status
from channels.ratelimit import TokenBucket, connection_budget
from channels.walmart import CHANNEL, FEED_THRESHOLD, MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S, SERVICE_NAME

FEED_SPEC_VERSION = "1.4"
_FAILED_INGESTION = frozenset({"DATA_ERROR", "SYSTEM_ERROR", "TIMEOUT_ERROR"})


def _errors(body: Any) -> list[str]:
    """Walmart's error entries in a body (``errors`` as a list or as ``{"error": [...]}``), as text."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, dict):
        errors = errors.get("error")
    if not errors:
        return []
    entries = errors if isinstance(errors, list) else [errors]
    out = []
    for e in entries:
        if isinstance(e, dict):
            out.append(f"{e.get('code', 'ERROR')}: {e.get('description') or e.get('info') or e}")
        else:
            out.append(str(e))
    return out


class WalmartInventoryClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        connection: Connection,
        *,
        feed_threshold: int = FEED_THRESHOLD,
        budget: TokenBucket | None = None,
    ) -> None:
        self._session = session
        # charged before every HTTP call, token requests included
        self._budget = budget or connection_budget(connection, RATE_LIMIT_PER_S, RATE_BURST)
        self._connection = connection
        self._base = connection.api_base_url.rstrip("/")
        self._feed_threshold = feed_threshold
        client_id, sep, client_secret = connection.access_token.get_secret_value().partition(":")
        self._basic = (
            "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
            if sep and client_id and client_secret
            else None
        )
        self._token: str | None = None
        self._token_valid_until = 0.0
        self.feed_ids: list[str] = []

    # -- plumbing -------------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {
            "WM_QOS.CORRELATION_ID": str(uuid.uuid4()),
            "WM_SVC.NAME": SERVICE_NAME,
            "Accept": "application/json",
        }
        if channel_type := self._connection.options.get("channel_type"):
            headers["WM_CONSUMER.CHANNEL.TYPE"] = channel_type
        return headers

    def _token_is_fresh(self) -> bool:
        return self._token is not None and time.monotonic() < self._token_valid_until

    async def _access_token(self) -> str:
        if self._token is not None and self._token_is_fresh():
            return self._token
        if self._basic is None:
            raise ChannelError(
                f"connection {self._connection.id!r}: access_token must be '<client id>:<client secret>' "
                "of a Walmart Marketplace API key",
                status=None,
                retryable=False,
            )
        await self._budget.acquire()
        async with self._session.post(
            f"{self._base}/v3/token",
            data={"grant_type": "client_credentials"},
            headers={**self._headers(), "Authorization": self._basic},
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise error_for_status(
                    CHANNEL, resp.status, f"token request refused: {text}", resp.headers.get("Retry-After")
                )
        try:
            body = json.loads(text)
            token, lifetime = body["access_token"], float(body.get("expires_in", 900))
        except (ValueError, KeyError, TypeError) as exc:
            raise ChannelError(
                f"walmart token answer is not usable: {text[:200]!r}", status=200, retryable=True
            ) from exc
        if not isinstance(token, str) or not token:
            raise ChannelError(
                f"walmart token answer has no token: {text[:200]!r}", status=200, retryable=True
            )
        self._token = token
        # Renew a minute early so a token never expires between being read and being used.
        self._token_valid_until = time.monotonic() + max(0.0, lifetime - 60)
        return token

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        feed_file: bytes | None = None,
    ) -> Any:
        """One API call with a valid token; the JSON answer, or ChannelError."""
        for attempt in (1, 2):
            cached = self._token_is_fresh()
            token = await self._access_token()
            data = None
            if feed_file is not None:  # a FormData is consumed by one request: build it per attempt
                data = aiohttp.FormData()
                data.add_field("file", feed_file, filename="inventory.json", content_type="application/json")
            await self._budget.acquire()
            async with self._session.request(
                method,
                f"{self._base}{path}",
                params=params,
                json=json_body,
                data=data,
                headers={**self._headers(), "WM_SEC.ACCESS_TOKEN": token},
            ) as resp:
                text = await resp.text()
                if resp.status == 401 and cached and attempt == 1:
                    self._token = None  # revoked or expired early: one fresh token, then give up
                    continue
                if not 200 <= resp.status < 300:
                    raise error_for_status(CHANNEL, resp.status, text, resp.headers.get("Retry-After"))
            try:
                return json.loads(text) if text.strip() else {}
            except ValueError as exc:
                raise ChannelError(
                    f"walmart answered HTTP {resp.status} with a body that is not JSON: {text[:200]!r}",
                    status=resp.status,
                    retryable=False,
                ) from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def orders_page(self, params: dict[str, str]) -> Any:
        """One page of ``GET /v3/orders`` (the JSON answer) for `params`: the filters of the first page, or
        the parsed ``meta.nextCursor`` of the page before; ChannelError on failure."""
        return await self._call("GET", "/v3/orders", params=params)

    def seller_sku(self, sku: str) -> str:
        """The Walmart seller SKU of master `sku`; ChannelError(retryable=False) if it is not listed."""
        listing = self._connection.listings.get(sku)
        if listing is None or not listing.listing_id:
            raise ChannelError(
                f"SKU {sku!r} is not listed in connection {self._connection.id!r}; add listings.<sku> with "
                "the Walmart seller SKU as listing_id",
                status=None,
                retryable=False,
            )
        return listing.listing_id

    def _inventory_params(self, seller_sku: str) -> dict[str, str]:
        params = {"sku": seller_sku}
        if ship_node := self._connection.options.get("ship_node"):
            params["shipNode"] = ship_node
        return params

    # -- the inventory client -------------------------------------------------------------------------------

    async def set_available(
        self, sku: str, quantity: int, *, change_from: int | None, reference: str
    ) -> None:
        """Set `sku`'s quantity on Walmart with one PUT; raise ChannelError on any failure."""
        seller_sku = self.seller_sku(sku)
        body = await self._call(
            "PUT",
            "/v3/inventory",
            params=self._inventory_params(seller_sku),
            json_body={"sku": seller_sku, "quantity": {"unit": "EACH", "amount": quantity}},
        )
        if errors := _errors(body):
            raise ChannelError(
                f"walmart refused SKU {sku!r} (seller SKU {seller_sku!r}): {'; '.join(errors)}",
                status=200,
                retryable=False,
            )

    async def set_many(self, items: list[tuple[str, int]], *, reference: str) -> None:
        """Below the feed threshold one PUT per SKU, else one inventory feed per MAX_BATCH items.

        Retryable failures raise at once (what was written stays written; a retry is safe). Per-item refusals
        and unlisted SKUs are collected and raised together, after the rest was sent.
        """
        latest = dict(items)  # a later quantity for the same SKU wins
        problems: list[str] = []
        resolved: list[tuple[str, str, int]] = []
        for sku, quantity in latest.items():
            try:
                resolved.append((sku, self.seller_sku(sku), quantity))
            except ChannelError as exc:
                problems.append(str(exc))
        if len(resolved) >= self._feed_threshold:
            for start in range(0, len(resolved), MAX_BATCH):
                self.feed_ids.append(await self._submit_feed(resolved[start : start + MAX_BATCH]))
        else:
            for sku, seller_sku, quantity in resolved:
                try:
                    await self.set_available(sku, quantity, change_from=None, reference=reference)
                except ChannelError as exc:
                    if exc.retryable:
                        raise
                    problems.append(f"SKU {sku!r} (seller SKU {seller_sku!r}): {exc}")
        if problems:
            raise ChannelError(
                "walmart did not take every inventory update: " + "; ".join(problems),
                status=200,
                retryable=False,
            )

    async def _submit_feed(self, chunk: list[tuple[str, str, int]]) -> str:
        ship_node = self._connection.options.get("ship_node")
        inventory = []
        for _, seller_sku, quantity in chunk:
            entry: dict[str, Any] = {"sku": seller_sku, "quantity": {"unit": "EACH", "amount": quantity}}
            if ship_node:
                entry["shipNode"] = ship_node
            inventory.append(entry)
        document = {"InventoryHeader": {"version": FEED_SPEC_VERSION}, "Inventory": inventory}
        body = await self._call(
            "POST",
            "/v3/feeds",
            params={"feedType": "inventory"},
            feed_file=json.dumps(document, separators=(",", ":")).encode(),
        )
        feed_id = body.get("feedId") if isinstance(body, dict) else None
        if not isinstance(feed_id, str) or not feed_id:
            # Resending could spend another of the 10 hourly feeds on the same data: do not retry blindly.
            raise ChannelError(
                f"walmart answered an inventory feed of {len(chunk)} items without a feedId: "
                f"{str(body)[:200]}; check Seller Center's feed activity before resending",
                status=200,
                retryable=False,
            )
        return feed_id

    async def feed_status(self, feed_id: str) -> str:
        """The feed's status (RECEIVED, INPROGRESS, PROCESSED, ERROR); ChannelError(retryable=False) naming
        every item Walmart failed to ingest."""
        body = await self._call("GET", f"/v3/feeds/{feed_id}", params={"includeDetails": "true"})
        if not isinstance(body, dict):
            raise ChannelError(
                f"walmart feed status is not an object: {str(body)[:200]}", status=200, retryable=False
            )
        details = body.get("itemDetails")
        items = details.get("itemIngestionStatus") if isinstance(details, dict) else None
        failed = []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("ingestionStatus") in _FAILED_INGESTION:
                errors = item.get("ingestionErrors")
                listed = errors.get("ingestionError") if isinstance(errors, dict) else None
                reasons = [
                    str(e.get("description", e)) if isinstance(e, dict) else str(e)
                    for e in (listed if isinstance(listed, list) else [])
                ]
                failed.append(
                    f"seller SKU {item.get('sku')!r}: {item.get('ingestionStatus')} {'; '.join(reasons)}"
                )
        if failed:
            raise ChannelError(
                f"walmart feed {feed_id} failed items: " + "; ".join(failed), status=200, retryable=False
            )
        return str(body.get("feedStatus"))

    async def get_available(self, skus: list[str]) -> dict[str, int]:
        """Walmart's current quantity per SKU (one paced GET each); SKUs it does not know are left out."""
        found: dict[str, int] = {}
        for sku in dict.fromkeys(skus):
            seller_sku = self.seller_sku(sku)
            try:
                body = await self._call("GET", "/v3/inventory", params=self._inventory_params(seller_sku))
            except ChannelError as exc:
                if exc.status == 404:
                    continue
                raise
            quantity = body.get("quantity") if isinstance(body, dict) else None
            amount = quantity.get("amount") if isinstance(quantity, dict) else None
            if isinstance(amount, int) and not isinstance(amount, bool):
                found[sku] = amount
        return found
