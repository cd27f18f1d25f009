"""Bearer tokens of the tenant-scoped APIs (availability, stream, reservations): a token acts for its own
tenant only, and the tenant is the token's, never a path segment the caller chooses."""

from __future__ import annotations

from aiohttp import web

from ingest.answers import error
from ingest.state import CONNECTIONS


def tenant_of(request: web.Request) -> str | web.Response:
    """The tenant whose token the request carries; else the 401 answer to send."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error(401, "missing bearer token: send 'Authorization: Bearer <your tenant's token>'")
    tenant = request.app[CONNECTIONS].current.tenant_for_token(token.strip())
    if tenant is None:
        return error(401, "unknown token: check it, or issue one with `stocksync tenants add`")
    return tenant
