"""Connections and admin tenants kept in PostgreSQL (migration 0003), beside or instead of the TOML file.

``stocksync connections add|import|list`` and ``stocksync tenants add`` write and read these tables; the
services read them at start-up (the gateway also every ``INGEST_CONNECTIONS_REFRESH_S``), so a connection
added on the command line starts receiving webhooks without a restart of the gateway. The connections file
is optional: a service whose file is not named reads the tables only, and one whose named file is missing
says so once and carries on with the tables (load_all, load_for_service).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BeforeValidator, ValidationError

from channels.connection import (
    Connection,
    ConnectionRegistry,
    ConnectionsFileError,
    ConnectionsFileUnreadable,
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


def _empty_is_unset(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


ConnectionsFileSetting = Annotated[Path | None, BeforeValidator(_empty_is_unset)]
"""A service's ``*_CONNECTIONS_FILE`` setting: unset or empty means no file (the database only)."""

Notice = Callable[[str], None]


def unreadable_file_notice(problem: ConnectionsFileUnreadable, *, setting: str, using_database: bool) -> str:
    """What a service says when its connections file cannot be read, and what to do about it."""
    carry_on = (
        "carrying on with the connections in the database" if using_database else "carrying on without it"
    )
    return (
        f"connections file {problem.path} (named by {setting}) cannot be read: {problem.reason}; {carry_on}. "
        "To use a file, create it (format: deploy/connections.example.toml) or fix its path or permissions; "
        f"to keep connections in the database only (`stocksync connections add`), unset {setting}."
    )


def read_file(
    file: Path | None, *, setting: str = "the connections file setting", using_database: bool, notice: Notice
) -> ConnectionRegistry:
    """The file's connections; none if no file is named, or if it cannot be read (told to `notice`).
    Raises ConnectionsFileError if the file holds something invalid: that is never skipped silently."""
    if file is None:
        return ConnectionRegistry([])
    try:
        return ConnectionRegistry.from_file(file)
    except ConnectionsFileUnreadable as exc:
        notice(unreadable_file_notice(exc, setting=setting, using_database=using_database))
        return ConnectionRegistry([])


def load_all(
    file: Path | None,
    database_url: str | None,
    *,
    setting: str = "the connections file setting",
    notice: Notice = log.warning,
) -> ConnectionRegistry:
    """The file's connections (if a file is given) merged with the tables' (if a URL is given); the
    table wins where an id is in both, so a connection can be changed without editing the file.

    A file that is named but cannot be read (missing, no permission) counts as empty and is reported to
    `notice`; a file or row that holds an invalid connection raises ConnectionsFileError; a database that
    cannot be read raises psycopg.Error."""
    registry = read_file(file, setting=setting, using_database=database_url is not None, notice=notice)
    if database_url is not None:
        registry = registry.merged(load_database(database_url))
    return registry


def load_for_service(
    file: Path | None, database_url: str | None, *, service: str, setting: str | None = None
) -> ConnectionRegistry:
    """What a service starts with: the file's connections (if `file` is named and readable), plus the
    tables' when the database answers (`database_url` None: tables not read). Neither a missing file nor a
    database that does not answer is fatal (the gateway must take webhooks without the database): each is
    logged once with what to do, and so is starting with no connection at all. An invalid connection in
    either raises ConnectionsFileError. `setting` names the variable that names the file (e.g.
    INGEST_CONNECTIONS_FILE), so the advice names it too."""
    setting = setting or "the connections file setting"
    read: list[str] = []  # the sources that could be read, for the warning about an empty start
    unreadable: list[str] = []

    def notice(message: str) -> None:
        log.warning("%s: %s", service, message)
        unreadable.append(message)

    registry = read_file(file, setting=setting, using_database=database_url is not None, notice=notice)
    if file is not None and not unreadable:
        read.append(f"connections file {file}")
    if database_url is not None:
        try:
            registry = registry.merged(load_database(database_url))
            read.append("the connections table")
        except psycopg.Error as exc:
            log.warning(
                "%s: could not read the connections table (%s); carrying on with %s. Check DATABASE_URL "
                "(and run `stocksync migrate`), or set the service's CONNECTIONS_TABLE setting to false.",
                service,
                str(exc).strip(),
                f"the connections of {file}" if read else "no connections",
            )
    if not any(True for _ in registry):
        log.warning(
            "%s: starting with no connections (%s): nothing is served until one is added. Add one with "
            "`stocksync connections add --id ID --tenant TENANT --channel CHANNEL --api-base-url URL` "
            "(see its --help; channel settings go in --option KEY=VALUE), copy a file in with "
            "`stocksync connections import FILE`, or name a TOML file in %s (format: "
            "deploy/connections.example.toml).",
            service,
            f"none in {' or '.join(read)}" if read else "no connections file or table could be read",
            setting,
        )
    return registry


def connections_or_exit(
    file: Path | None, database_url: str | None, *, service: str, setting: str
) -> ConnectionRegistry:
    """``load_for_service`` for a service's ``__main__``: an invalid connection is refused, never served
    half-configured: one error line naming it, then exit status 2 (no traceback)."""
    try:
        return load_for_service(file, database_url, service=service, setting=setting)
    except ConnectionsFileError as exc:
        log.error("%s cannot start: %s", service, exc)
        raise SystemExit(2) from None
