"""A real PostgreSQL server for the session, and a fresh migrated database per test (dropped after)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from stocksync.db import migrate
from stocksync.local import PostgresEndpoint, local_postgres
from tests.fix_kafka import announced


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config) -> Iterator[PostgresEndpoint]:
    yield from announced(pytestconfig, local_postgres())


@pytest.fixture
def new_database(pg_server: PostgresEndpoint) -> Iterator[Callable[[], str]]:
    """Makes new, empty databases on the session's server; all dropped, with their connections, after."""
    made: list[str] = []

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        return make_conninfo(pg_server.url, dbname=name)

    yield make
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def empty_database(new_database: Callable[[], str]) -> str:
    """A new, empty database on the session's server; its URL."""
    return new_database()


@pytest.fixture
def database_url(empty_database: str) -> str:
    """A fresh database with every migration applied."""
    migrate(empty_database)
    return empty_database
