"""Bearer tokens of the tenant-scoped APIs (availability, stream, reservations): a token acts for its own
tenant only, and the tenant is the token's, never a path segment the caller chooses."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ingest.state import CONNECTIONS


def error(status: int, message: str, **extra: Any) -> web.Response:
    """A JSON error answer (``{"error": message, ...}``); a 401 names the scheme to use."""
    headers = {"WWW-Authenticate": 'Bearer realm="stocksync"'} if status == 401 else None
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def tenant_of(request: web.Request) -> str | web.Response:
    """The tenant whose token the request carries; else the 401 answer to send."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error(401, "missing bearer token: send 'Authorization: Bearer <your tenant's token>'")
    tenant = request.app[CONNECTIONS].current.tenant_for_token(token.strip())
    if tenant is None:
        return error(401, "unknown token: check it, or issue one with `stocksync tenants add`")
    return tenant
