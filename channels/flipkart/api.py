"""Flipkart Seller API plumbing shared by the inventory client and ``webhooks.expand``: bearer calls."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, error_for_status
from channels.flipkart import CHANNEL

SHIPMENTS_PATH = "/v3/shipments"
INVENTORY_PATH = "/listings/v3/update/inventory"


def listings_path(seller_skus: list[str]) -> str:
    return "/listings/v3/" + ",".join(seller_skus)


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
    headers = {
        "Authorization": f"Bearer {connection.access_token.get_secret_value()}",
        "Accept": "application/json",
        "Content-Type": "application/json",
    }
    url = connection.api_base_url.rstrip("/") + path
    data = json.dumps(payload) if payload is not None else None
    async with session.request(method, url, params=params, data=data, headers=headers) as resp:
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
