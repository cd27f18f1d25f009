"""Connections and admin tenants kept in PostgreSQL (migration 0003), beside or instead of the TOML file.

``stocksync connections add|import|list`` and ``stocksync tenants add`` write and read these tables; the
services read them at start-up (the gateway also every ``INGEST_CONNECTIONS_REFRESH_S``), so a connection
added on the command line starts receiving webhooks without a restart of the gateway.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from channels.connection import (
    Connection,
    ConnectionRegistry,
    ConnectionsFileError,
    TenantToken,
    token_digest,
)

log = logging.getLogger(__name__)


def _config(connection: Connection) -> dict[str, object]:
    data = connection.model_dump(mode="json")
    data["webhook_secret"] = connection.webhook_secret.get_secret_value()
    data["access_token"] = connection.access_token.get_secret_value()
    return data


def save_connection(database_url: str, connection: Connection) -> bool:
    """Insert or replace one connection; True if it was new."""
    with psycopg.connect(database_url) as db:
        row = db.execute(
            """INSERT INTO connections AS c (id, tenant, channel, config) VALUES (%s, %s, %s, %s)
               ON CONFLICT (id) DO UPDATE
                  SET tenant = EXCLUDED.tenant, channel = EXCLUDED.channel, config = EXCLUDED.config,
                      updated_at = now()
               RETURNING (xmax = 0)""",
            (connection.id, connection.tenant, connection.channel, Jsonb(_config(connection))),
        ).fetchone()
    return bool(row and row[0])


def add_tenant(database_url: str, tenant: str) -> str:
    """Create or re-key a tenant of the admin API; return its new bearer token (shown once, kept hashed)."""
    token = f"sst_{secrets.token_urlsafe(32)}"
    entry = TenantToken(id=tenant, admin_token_sha256=token_digest(token))
    with psycopg.connect(database_url) as db:
        db.execute(
            """INSERT INTO tenants (id, admin_token_sha256) VALUES (%s, %s)
               ON CONFLICT (id) DO UPDATE SET admin_token_sha256 = EXCLUDED.admin_token_sha256""",
            (entry.id, entry.admin_token_sha256),
        )
    return token


def load_database(database_url: str, *, connect_timeout_s: float = 5.0) -> ConnectionRegistry:
    """Every connection and tenant in the tables. Raises psycopg.Error if the database cannot be read and
    ConnectionsFileError (naming the row) if a stored connection no longer validates."""
    with psycopg.connect(database_url, connect_timeout=max(1, int(connect_timeout_s))) as db:
        rows = db.execute("SELECT id, config FROM connections ORDER BY id").fetchall()
        tenant_rows = db.execute("SELECT id, admin_token_sha256 FROM tenants ORDER BY id").fetchall()
    connections = []
    for conn_id, config in rows:
        try:
            connections.append(Connection.model_validate(config))
        except ValidationError as exc:
            raise ConnectionsFileError(
                f"connection {conn_id!r} in the connections table is invalid:\n{exc}"
            ) from exc
    tenants = [TenantToken(id=t, admin_token_sha256=digest) for t, digest in tenant_rows]
    return ConnectionRegistry(connections, tenants)


def load_all(file: Path | None, database_url: str | None) -> ConnectionRegistry:
    """The file's connections (if a file is given) merged with the tables' (if a URL is given); the
    table wins where an id is in both, so a connection can be changed without editing the file."""
    registry = ConnectionRegistry([])
    if file is not None:
        registry = ConnectionRegistry.from_file(file)
    if database_url is not None:
        registry = registry.merged(load_database(database_url))
    return registry


def load_for_service(file: Path | None, database_url: str | None, *, service: str) -> ConnectionRegistry:
    """What a service starts with: the file's connections, plus the tables' when the database answers. A
    database that does not answer is logged, not fatal (the gateway must take webhooks without it)."""
    try:
        return load_all(file, database_url)
    except psycopg.Error as exc:
        log.warning(
            "%s: could not read the connections table (%s); using the connections file only. "
            "Check DATABASE_URL, or set the service's CONNECTIONS_TABLE setting to false.",
            service,
            str(exc).strip(),
        )
        return load_all(file, None)
