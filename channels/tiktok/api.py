"""TikTok Shop Open API plumbing shared by the inventory client and ``webhooks.expand``: signing and calls.

Every call carries ``x-tts-access-token`` and the query parameters ``app_key``, ``timestamp``,
``shop_cipher`` (when configured) and ``sign``. TikTok answers most business errors with HTTP 200 and a
non-zero ``code``; those become non-retryable ChannelErrors that quote TikTok's message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from channels.connection import Connection
from channels.errors import ChannelError, error_for_status
from channels.tiktok import API_VERSION, CHANNEL

ORDER_DETAIL_PATH = f"/order/{API_VERSION}/orders"
ORDER_SEARCH_PATH = f"/order/{API_VERSION}/orders/search"
TOKEN_HEADER = "x-tts-access-token"  # noqa: S105 - a header name, not a secret
UNSIGNED_PARAMS = frozenset({"sign", "access_token"})


def product_path(product_id: str) -> str:
    return f"/product/{API_VERSION}/products/{product_id}"


def inventory_update_path(product_id: str) -> str:
    return f"/product/{API_VERSION}/products/{product_id}/inventory/update"


def sign_request(secret: str, path: str, params: Mapping[str, str], body: bytes = b"") -> str:
    """TikTok's request signature: hex HMAC-SHA256 keyed with the app secret over
    secret + path + k1v1k2v2... (params sorted by key, without sign/access_token) + body + secret."""
    canonical = "".join(f"{key}{params[key]}" for key in sorted(params) if key not in UNSIGNED_PARAMS)
    message = secret.encode() + path.encode() + canonical.encode() + body + secret.encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _config_error(connection: Connection, what: str) -> ChannelError:
    return ChannelError(
        f"connection {connection.id!r} has no {what}; set it in the connections file",
        status=None,
        retryable=False,
    )


async def call(
    session: aiohttp.ClientSession,
    connection: Connection,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    payload: Any = None,
) -> dict[str, Any]:
    """One signed Open API call; returns the reply's ``data`` object.

    Raises ChannelError: error_for_status for non-2xx, non-retryable for a non-JSON reply or a non-zero code.
    """
    app_key = connection.options.get("app_key")
    if not app_key:
        raise _config_error(connection, "options.app_key (the TikTok app key)")
    secret = connection.webhook_secret.get_secret_value()
    params = {"app_key": app_key, "timestamp": str(int(time.time())), **(query or {})}
    if shop_cipher := connection.options.get("shop_cipher"):
        params["shop_cipher"] = shop_cipher
    body = json.dumps(payload).encode() if payload is not None else b""
    params["sign"] = sign_request(secret, path, params, body)
    headers = {
        TOKEN_HEADER: connection.access_token.get_secret_value(),
        "Content-Type": "application/json",
    }
    url = connection.api_base_url.rstrip("/") + path
    async with session.request(method, url, params=params, data=body or None, headers=headers) as resp:
        status, text = resp.status, await resp.text()
        if not 200 <= status < 300:
            raise error_for_status(CHANNEL, status, text, resp.headers.get("Retry-After"))
    try:
        reply = json.loads(text)
    except json.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict):
        raise ChannelError(
            f"tiktok answered {method} {path} with HTTP {status} but no JSON object: {text[:200]!r}",
            status=status,
            retryable=False,
        )
    if reply.get("code") != 0:
        raise ChannelError(
            f"tiktok refused {method} {path}: code {reply.get('code')!r}, {reply.get('message')!r} "
            f"(request_id {reply.get('request_id')!r})",
            status=status,
            retryable=False,
        )
    data = reply.get("data")
    return data if isinstance(data, dict) else {}
