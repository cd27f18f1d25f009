"""Shopify's order list for the reconciler's backfill: the GraphQL Admin ``orders`` connection.

GraphQL rather than REST ``GET /orders.json``: REST Admin is legacy (new public apps must use GraphQL since
April 2025), the inventory client already speaks GraphQL at API_VERSION through the same endpoint, token and
cost budget, and the ``orders`` connection filters (``query: "updated_at:>='…'"``), sorts (``sortKey:
UPDATED_AT``) and pages by cursor (``first``/``after``, ``pageInfo.endCursor``) as the backfill needs. Its
nodes carry GraphQL ids (``gid://shopify/Order/123``); each is turned into the REST/webhook shape (numeric
order, line item and variant ids: the last segment of each gid) and normalised by ``webhooks.order_events``,
so every line's event id equals the ``orders/create`` webhook's. Each order's ``refunds`` come with it (a
refund moves the order's ``updatedAt``, so a refunded order is listed again): their refund line items, made
into the REST Refund shape, go through ``webhooks.refund_events``, so a restock the ``refunds/create`` or
``orders/cancelled`` webhook missed is backfilled under the same ids. An order with more than MAX_REFUNDS
refunds, or a refund with more than MAX_LINES lines, is quarantined rather than read in part.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, PayloadError
from channels.orderlist import fetch, high_water, one_order, page_size, require_aware
from channels.payload import Lines
from channels.ratelimit import TokenBucket
from channels.shopify import API_VERSION, webhooks
from channels.spec import OrderBatch

MAX_PAGE = 250  # Shopify's largest `first`
MAX_LINES = 250  # line items fetched with each order; an order with more is quarantined, not truncated
MAX_REFUNDS = 50  # refunds fetched with each order (Order.refunds is a list, not paged)

ORDERS = (
    """
query orders($first: Int!, $after: String, $query: String) {
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {
    nodes {
      id legacyResourceId createdAt updatedAt cancelledAt
      lineItems(first: %d) {
        nodes { id sku quantity variant { legacyResourceId } }
        pageInfo { hasNextPage }
      }
      refunds(first: %d) {
        legacyResourceId createdAt
        refundLineItems(first: %d) {
          nodes { id quantity restockType lineItem { id sku variant { legacyResourceId } } }
          pageInfo { hasNextPage }
        }
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}
""".strip()
    % (MAX_LINES, MAX_REFUNDS, MAX_LINES)
)


def _numeric(gid: Any, what: str) -> int:
    """The numeric id at the end of a GraphQL id (``gid://shopify/LineItem/123`` -> 123) or of a legacy id."""
    tail = str(gid).rpartition("/")[2]
    if not isinstance(gid, str | int) or isinstance(gid, bool) or not tail.isdigit():
        raise PayloadError(f"{what} {gid!r} is not a Shopify id")
    return int(tail)


def rest_order(node: Any) -> dict[str, Any]:
    """A GraphQL ``Order`` node in the REST/webhook shape ``webhooks.order_events`` reads; PayloadError if the
    node lacks what that needs."""
    if not isinstance(node, dict):
        raise PayloadError("order node is not a JSON object")
    order_id = _numeric(node.get("legacyResourceId") or node.get("id"), "order id")
    items = node.get("lineItems")
    if not isinstance(items, dict) or not isinstance(items.get("nodes"), list):
        raise PayloadError(f"order {order_id}: lineItems.nodes is missing")
    if (items.get("pageInfo") or {}).get("hasNextPage"):
        raise PayloadError(f"order {order_id} has more than {MAX_LINES} line items; backfill it by hand")
    lines = []
    for item in items["nodes"]:
        if not isinstance(item, dict):
            raise PayloadError(f"order {order_id}: a line item is not a JSON object")
        variant = item.get("variant")
        variant_id = variant.get("legacyResourceId") if isinstance(variant, dict) else None
        lines.append(
            {
                "id": _numeric(item.get("id"), f"order {order_id}: line item id"),
                "variant_id": _numeric(variant_id, "variant id") if variant_id is not None else None,
                "sku": item.get("sku"),
                "quantity": item.get("quantity"),
            }
        )
    refunds = node.get("refunds") or []
    if not isinstance(refunds, list):
        raise PayloadError(f"order {order_id}: refunds is not a list")
    if len(refunds) >= MAX_REFUNDS:
        raise PayloadError(f"order {order_id} has {MAX_REFUNDS} refunds or more; backfill it by hand")
    return {
        "id": order_id,
        "created_at": node.get("createdAt"),
        "line_items": lines,
        "refunds": [rest_refund(order_id, r) for r in refunds],
    }


def rest_refund(order_id: int, node: Any) -> dict[str, Any]:
    """A GraphQL ``Refund`` node in the REST Refund shape ``webhooks.refund_events`` reads."""
    if not isinstance(node, dict):
        raise PayloadError(f"order {order_id}: a refund is not a JSON object")
    refund_id = _numeric(node.get("legacyResourceId") or node.get("id"), f"order {order_id}: refund id")
    items = node.get("refundLineItems")
    if not isinstance(items, dict) or not isinstance(items.get("nodes"), list):
        raise PayloadError(f"refund {refund_id}: refundLineItems.nodes is missing")
    if (items.get("pageInfo") or {}).get("hasNextPage"):
        raise PayloadError(f"refund {refund_id} has more than {MAX_LINES} lines; backfill it by hand")
    lines = []
    for item in items["nodes"]:
        if not isinstance(item, dict):
            raise PayloadError(f"refund {refund_id}: a refund line item is not a JSON object")
        embedded = item.get("lineItem")
        line: dict[str, Any] = embedded if isinstance(embedded, dict) else {}
        variant = line.get("variant")
        variant_id = variant.get("legacyResourceId") if isinstance(variant, dict) else None
        restock = item.get("restockType")
        lines.append(
            {
                "id": _numeric(item.get("id"), f"refund {refund_id}: refund line item id"),
                "line_item_id": _numeric(line.get("id"), f"refund {refund_id}: line item id"),
                "quantity": item.get("quantity"),
                "restock_type": restock.lower() if isinstance(restock, str) else restock,
                "line_item": {
                    "variant_id": _numeric(variant_id, "variant id") if variant_id is not None else None,
                    "sku": line.get("sku"),
                },
            }
        )
    return {
        "id": refund_id,
        "order_id": order_id,
        "created_at": node.get("createdAt"),
        "refund_line_items": lines,
    }


def _updated(node: dict[str, Any]) -> datetime | None:
    try:
        at = datetime.fromisoformat(str(node.get("updatedAt")))
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


async def list_orders(
    session: aiohttp.ClientSession,
    connection: Connection,
    since: datetime,
    *,
    budget: TokenBucket,
    received_at: datetime,
) -> AsyncIterator[OrderBatch]:
    """Pages of the orders updated at or after `since`, oldest first (see the module docstring)."""
    first = page_size(connection, default=MAX_PAGE, maximum=MAX_PAGE)
    bound = require_aware(since).astimezone(UTC).isoformat().replace("+00:00", "Z")
    url = f"{connection.api_base_url.rstrip('/')}/admin/api/{API_VERSION}/graphql.json"
    headers = {"X-Shopify-Access-Token": connection.access_token.get_secret_value()}
    variables: dict[str, Any] = {"first": first, "after": None, "query": f"updated_at:>='{bound}'"}
    while True:
        answer = await fetch(
            session,
            connection,
            "POST",
            url,
            budget=budget,
            headers=headers,
            json_body={"query": ORDERS, "variables": variables},
        )
        body = answer.body if isinstance(answer.body, dict) else {}
        orders = (body.get("data") or {}).get("orders")
        if body.get("errors") or not isinstance(orders, dict) or not isinstance(orders.get("nodes"), list):
            throttled = "THROTTLED" in str(body.get("errors"))
            raise ChannelError(
                f"shopify order list for connection {connection.id!r} refused the query: "
                f"{body.get('errors') or str(answer.body)[:300]}; "
                + (
                    "over the cost budget, retry later"
                    if throttled
                    else "this is a bug in the query, report it"
                ),
                status=200,
                retryable=throttled,
            )
        batch = OrderBatch()
        times: list[datetime] = []
        for node in orders["nodes"]:
            if isinstance(node, dict) and (at := _updated(node)) is not None:
                times.append(at)
            with one_order(batch, node) as events:
                order = rest_order(node)
                lines = Lines()  # a refused line refuses only itself, in the order or in a refund
                with lines.collect():
                    lines.events += webhooks.order_events(connection, order, received_at)
                for refund in order["refunds"]:
                    with lines.collect():
                        lines.events += webhooks.refund_events(
                            connection, refund, received_at, order_id=str(order["id"])
                        )
                events += lines.result()
        batch.high_water = high_water(times)
        yield batch
        info = orders.get("pageInfo") or {}
        if not info.get("hasNextPage") or not info.get("endCursor"):
            return
        variables["after"] = info["endCursor"]
