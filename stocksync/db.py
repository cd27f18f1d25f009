"""PostgreSQL plumbing: versioned SQL migrations applied idempotently at start-up, and the connection pool.

Migrations are the files ``stocksync/migrations/NNNN_name.sql``, applied in order, each once, under an
advisory lock so services starting together do not race; an applied file that was edited is an error.
Repeatable migrations, ``R_name.sql``, hold definitions that change as a whole (the master rules, a SQL
function): each is applied after the versioned ones whenever its checksum differs from the one applied last.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg_pool import AsyncConnectionPool

from stocksync.settings import PostgresSettings

_LOCK_KEY = 0x5707C5  # advisory lock id for "stocksync migrations"

RESERVATIONS_CHANNEL = "stocksync_reservations"
"""The LISTEN/NOTIFY channel on which the processor names, at commit, the event id of every reservation
step it handled (payload: the event id); the gateway waits on it to answer a reservation call."""


class MigrationError(RuntimeError):
    """The database's migration history does not match the files shipped with this version."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def shipped_repeatables() -> list[Migration]:
    """The ``R_name.sql`` files, by name (``version`` is 0: they have no place in the versioned order)."""
    found = [
        Migration(0, entry.name.removeprefix("R_").removesuffix(".sql"), entry.read_text())
        for entry in resources.files("stocksync.migrations").iterdir()
        if entry.name.startswith("R_") and entry.name.endswith(".sql")
    ]
    return sorted(found, key=lambda m: m.name)


def shipped_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("stocksync.migrations").iterdir():
        if entry.name.endswith(".sql") and not entry.name.startswith("R_"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


def migrate(database_url: str) -> list[str]:
    """Apply every shipped migration the database lacks, then every repeatable one whose file changed; return
    the names applied (empty if none)."""
    applied_now: list[str] = []
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {v: c for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")}
        for m in shipped_migrations():
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} was edited after it was applied to this "
                        "database; restore the file and put the change in a new migration."
                    )
                continue
            conn.execute(m.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (m.version, m.name, m.checksum),
            )
            applied_now.append(f"{m.version:04d}_{m.name}")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_repeatables (name text PRIMARY KEY, checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        current: dict[str, str] = dict(
            conn.execute("SELECT name, checksum FROM schema_repeatables").fetchall()
        )
        for r in shipped_repeatables():
            if current.get(r.name) == r.checksum:
                continue
            conn.execute(r.sql.encode())
            conn.execute(
                """INSERT INTO schema_repeatables (name, checksum) VALUES (%s, %s)
                   ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()""",
                (r.name, r.checksum),
            )
            applied_now.append(f"R_{r.name}")
    return applied_now


@asynccontextmanager
async def open_pool(settings: PostgresSettings, *, name: str) -> AsyncIterator[AsyncConnectionPool]:
    """An open pool with at least ``pool_min_size`` connections ready; closed when the block ends."""
    pool = AsyncConnectionPool(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        open=False,
        name=name,
    )
    async with pool:
        await pool.wait(timeout=30.0)
        yield pool
