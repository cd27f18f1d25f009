"""Flipkart's order list for the reconciler's backfill: Search Shipments (Seller API v3).

REAL (seller.flipkart.com/api-docs, order-api-docs/v3/PostShipmentSearch, and the API platform's
search-pre-dispatch-shipment post/get pages): ``POST /v3/shipments/filter`` with ``{"filter": {"type",
"states", "<date field>": {"from", "to"}, "cancellationType"}, "pagination": {"pageSize"}, "sort": {"field",
"order"}}`` answers ``{"shipments": [...], "hasMore", "nextPageUrl"}``; the next pages are GETs of the
nextPageUrl (``/v3/shipments/filter?next_token=…``), not built by the client. ``filter.type`` is mandatory
and one search covers one type: ``preDispatch`` (APPROVED … READY_TO_DISPATCH), ``postDispatch``
(PICKUP_COMPLETE, SHIPPED, DELIVERED) or ``cancelled``, which also needs one ``cancellationType``
(sellerCancellation, buyerCancellation, marketplaceCancellation). There is no "everything changed since"
search, so a backfill is five sweeps (SWEEPS), each sorted oldest first on its own date:

1-3. cancelled, one per cancellation type, ``cancellationDate.from = since``, sorted by modifiedDate;
4.   postDispatch, ``orderDate.from = since``, sorted by orderDate;
5.   preDispatch, ``orderDate.from = since``, sorted by orderDate (where new orders are).

MODELLED (Flipkart publishes nothing): the largest pageSize (api.SEARCH_MAX_PAGE = 20), ``from`` inclusive
with ``to`` left out (open-ended), times sent as ISO-8601 UTC with milliseconds (`since` rounded down, so an
order of the same millisecond may come again: a duplicate, harmless), and a nextPageUrl relative to the API
base (``…/sellers``). An absolute nextPageUrl is followed only on the API's own origin, so the bearer token
never goes anywhere else.

High water: the sweeps overlap in time, so a page of sweeps 1-4 must not move the checkpoint (a later sweep
may still hold older orders): their pages carry ``high_water = None``. Pages of the last sweep carry their
newest ``orderDate``, and its last page the newest time seen in any sweep, since by then all five are listed.
A cancellation that happens after its sweep ran but before an order listed later in the run is left to the
reconciler's overlap (``overlap_s``) on the next run. Not listed at all: an order placed after `since` that is
already past DELIVERED (returned or completed) when the backfill runs: no postDispatch state covers it.

Events: each shipment goes through ``webhooks.shipment_events``, the function the ``shipment_created``
normaliser uses: a sale per order item with the notification's id, and for a CANCELLED item that sale
followed by the cancellation ``shipment_cancelled`` gives it (same id, the item's whole quantity). An event an
earlier sweep already yielded (a partly cancelled shipment is in two sweeps) is not yielded again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, PayloadError
from channels.flipkart import api, webhooks
from channels.orderlist import fetch, high_water, one_order, page_size, require_aware
from channels.payload import parse_iso
from channels.ratelimit import TokenBucket
from channels.spec import OrderBatch

DEFAULT_PAGE = api.SEARCH_MAX_PAGE


@dataclass(frozen=True)
class Sweep:
    """One Search Shipments filter: its type, states, the date it filters on and the field it sorts by."""

    type: str
    states: tuple[str, ...]
    date: str  # the item date `since` filters on, and the one a page's times are read from
    sort: str
    cancellation_type: str | None = None

    def request(self, since: str, size: int) -> dict[str, Any]:
        flt: dict[str, Any] = {"type": self.type, "states": list(self.states), self.date: {"from": since}}
        if self.cancellation_type is not None:
            flt["cancellationType"] = self.cancellation_type
        return {"filter": flt, "pagination": {"pageSize": size}, "sort": {"field": self.sort, "order": "asc"}}


SWEEPS = (
    *(
        Sweep("cancelled", ("CANCELLED",), "cancellationDate", "modifiedDate", kind)
        for kind in ("sellerCancellation", "buyerCancellation", "marketplaceCancellation")
    ),
    Sweep("postDispatch", ("PICKUP_COMPLETE", "SHIPPED", "DELIVERED"), "orderDate", "orderDate"),
    Sweep(
        "preDispatch",
        ("APPROVED", "PACKING_IN_PROGRESS", "FORM_FAILED", "PACKED", "READY_TO_DISPATCH"),
        "orderDate",
        "orderDate",
    ),
)


def _where(connection: Connection) -> str:
    return f"flipkart order list for connection {connection.id!r}"


def _flipkart_time(since: datetime) -> str:
    return require_aware(since).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def next_page_url(connection: Connection, next_page: str) -> str:
    """The nextPageUrl as a URL to GET: relative to the API base (or to its host); an absolute one only on
    the API's own origin (ChannelError otherwise, so the token is never sent elsewhere)."""
    base = connection.api_base_url.rstrip("/")
    parts = urlsplit(base)
    if "://" in next_page:
        given = urlsplit(next_page)
        if (given.scheme, given.netloc) != (parts.scheme, parts.netloc):
            raise ChannelError(
                f"{_where(connection)}: nextPageUrl {next_page[:200]!r} is not on {parts.netloc}; refusing "
                "to send the access token there. Report it; check the connection's api_base_url",
                status=200,
                retryable=False,
            )
        return next_page
    path = next_page if next_page.startswith("/") else "/" + next_page
    if parts.path.rstrip("/") and path.startswith(parts.path.rstrip("/") + "/"):
        return f"{parts.scheme}://{parts.netloc}{path}"
    return base + path


def _page(connection: Connection, body: Any) -> tuple[list[Any], str | None]:
    """The shipments of one answer and the URL of the next page (None on the last)."""
    if not isinstance(body, dict) or not isinstance(body.get("shipments"), list):
        raise ChannelError(
            f"{_where(connection)}: the answer has no shipments list: {str(body)[:200]!r}; the next run "
            "retries, report it if it persists",
            status=200,
            retryable=True,
        )
    shipments: list[Any] = body["shipments"]
    if body.get("hasMore") is not True:
        return shipments, None
    next_page = body.get("nextPageUrl")
    if not isinstance(next_page, str) or not next_page.strip():
        raise ChannelError(
            f"{_where(connection)}: hasMore is true but nextPageUrl is {next_page!r}; the next run retries, "
            "report it if it persists",
            status=200,
            retryable=True,
        )
    return shipments, next_page_url(connection, next_page.strip())


def _times(shipment: Any, date: str) -> list[datetime]:
    """The shipment's `date` times (cancellationDate falls back to the shipment's updatedAt) that parse."""
    items = shipment.get("orderItems") if isinstance(shipment, dict) else None
    found: list[datetime] = []
    for item in items if isinstance(items, list) else []:
        value = item.get(date) if isinstance(item, dict) else None
        if value is None and date == "cancellationDate" and isinstance(shipment, dict):
            value = shipment.get("updatedAt")
        if isinstance(value, str):
            try:
                found.append(parse_iso(value, date))
            except PayloadError:
                continue
    return found


async def list_orders(
    session: aiohttp.ClientSession,
    connection: Connection,
    since: datetime,
    *,
    budget: TokenBucket,
    received_at: datetime,
) -> AsyncIterator[OrderBatch]:
    """Pages of the shipments ordered or cancelled at or after `since`, sweep by sweep, each oldest first
    (see the module docstring)."""
    size = page_size(connection, default=DEFAULT_PAGE, maximum=api.SEARCH_MAX_PAGE)
    start = _flipkart_time(since)
    base = connection.api_base_url.rstrip("/")
    headers = api.headers(connection)
    yielded: set[str] = set()
    newest: list[datetime] = []  # every time seen in every sweep
    for number, sweep in enumerate(SWEEPS, start=1):
        last_sweep = number == len(SWEEPS)
        answer = await fetch(
            session,
            connection,
            "POST",
            base + api.SHIPMENT_SEARCH_PATH,
            budget=budget,
            headers=headers,
            json_body=sweep.request(start, size),
        )
        while True:
            shipments, url = _page(connection, answer.body)
            batch = OrderBatch()
            times: list[datetime] = []
            for shipment in shipments:
                times += _times(shipment, sweep.date)
                ident = shipment.get("shipmentId") if isinstance(shipment, dict) else None
                with one_order(batch, shipment, f"shipment {ident!r}: ") as events:
                    events += webhooks.shipment_events(connection, shipment, received_at)
            # A shipment found by several sweeps gives its events once.
            kept = []
            for e in batch.events:
                if e.event_id not in yielded:
                    yielded.add(e.event_id)
                    kept.append(e)
            batch.events = kept
            newest += times
            if last_sweep:
                batch.high_water = high_water(newest if url is None else times)
            yield batch
            if url is None:
                break
            answer = await fetch(session, connection, "GET", url, budget=budget, headers=headers)
