"""BigCommerce REST plumbing shared by the inventory client and ``webhooks.expand``.

Every call goes to ``{api_base_url}/stores/{store_hash}/...`` with ``X-Auth-Token``. A 429 carries
``X-Rate-Limit-Time-Reset-Ms``; it stands in for ``Retry-After`` when that is absent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from channels.bigcommerce import CHANNEL
from channels.connection import Connection
from channels.errors import ChannelError, error_for_status

AUTH_HEADER = "X-Auth-Token"
RESET_HEADER = "X-Rate-Limit-Time-Reset-Ms"


def store_url(connection: Connection, path: str) -> str:
    store_hash = connection.options.get("store_hash")
    if not store_hash:
        raise ChannelError(
            f"connection {connection.id!r} has no options.store_hash (the store's API path id); "
            "set it in the connections file",
            status=None,
            retryable=False,
        )
    return f"{connection.api_base_url.rstrip('/')}/stores/{store_hash}{path}"


def retry_after(headers: Mapping[str, str]) -> str | None:
    """Seconds to wait as a string: Retry-After, else BigCommerce's reset time in milliseconds."""
    if given := headers.get("Retry-After"):
        return given
    reset_ms = headers.get(RESET_HEADER, "")
    return f"{int(reset_ms) / 1000:.3f}" if reset_ms.isascii() and reset_ms.isdigit() else None


async def call(
    session: aiohttp.ClientSession,
    connection: Connection,
    method: str,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    payload: Any = None,
) -> tuple[int, Any]:
    """One API call; returns (status, parsed JSON or None for an empty 2xx).

    Raises ChannelError: error_for_status for non-2xx, non-retryable for a 2xx body that is not JSON.
    """
    headers = {
        AUTH_HEADER: connection.access_token.get_secret_value(),
        "Accept": "application/json",
        "Content-Type": "application/json",
    }
    url = store_url(connection, path)
    data = json.dumps(payload) if payload is not None else None
    async with session.request(method, url, params=params, data=data, headers=headers) as resp:
        status, text = resp.status, await resp.text()
        if not 200 <= status < 300:
            raise error_for_status(CHANNEL, status, text, retry_after(resp.headers))
    if status == 204 or not text.strip():
        return status, None
    try:
        return status, json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChannelError(
            f"bigcommerce answered {method} {path} with HTTP {status} but no JSON: {text[:200]!r}",
            status=status,
            retryable=False,
        ) from exc
