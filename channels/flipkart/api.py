"""Flipkart Seller API plumbing shared by the inventory client, ``webhooks.expand`` and the order list:
bearer calls."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, error_for_status
from channels.flipkart import CHANNEL

SHIPMENTS_PATH = "/v3/shipments"
SHIPMENT_SEARCH_PATH = "/v3/shipments/filter"  # POST a filter; GET its nextPageUrl for the next pages
INVENTORY_PATH = "/listings/v3/update/inventory"
# Search Shipments' largest pageSize: unpublished; 20 is what integrators use and the simulator enforces
SEARCH_MAX_PAGE = 20


def listings_path(seller_skus: list[str]) -> str:
    return "/listings/v3/" + ",".join(seller_skus)


def headers(connection: Connection) -> dict[str, str]:
    """The headers of every Seller API call: the connection's bearer token, JSON both ways."""
    return {
        "Authorization": f"Bearer {connection.access_token.get_secret_value()}",
        "Accept": "application/json",
        "Content-Type": "application/json",
    }


async def call(
    session: aiohttp.ClientSession,
    connection: Connection,
    method: str,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    payload: Any = None,
) -> Any:
    """One API call; returns the parsed JSON reply.

    Raises ChannelError: error_for_status for non-2xx, non-retryable for a 2xx body that is not JSON.
    """
    url = connection.api_base_url.rstrip("/") + path
    data = json.dumps(payload) if payload is not None else None
    async with session.request(method, url, params=params, data=data, headers=headers(connection)) as resp:
        status, text = resp.status, await resp.text()
        if not 200 <= status < 300:
            raise error_for_status(CHANNEL, status, text, resp.headers.get("Retry-After"))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChannelError(
            f"flipkart answered {method} {path} with HTTP {status} but no JSON: {text[:200]!r}",
            status=status,
            retryable=False,
        ) from exc
