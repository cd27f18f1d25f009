"""A real PostgreSQL server for the session, and a fresh migrated database per test (dropped after)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from lab.local import PostgresEndpoint, local_postgres
from lab.local.postgres import create_database, drop_database
from stocksync.db import migrate
from tests.fix_kafka import announced


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config) -> Iterator[PostgresEndpoint]:
    yield from announced(pytestconfig, local_postgres())


@pytest.fixture
def new_database(pg_server: PostgresEndpoint) -> Iterator[Callable[[], str]]:
    """Makes new, empty databases on the session's server; all dropped, with their connections, after."""
    made: list[str] = []

    def make() -> str:
        name, url = create_database(pg_server.url, "t")
        made.append(name)
        return url

    yield make
    for name in made:
        drop_database(pg_server.url, name)


@pytest.fixture
def empty_database(new_database: Callable[[], str]) -> str:
    """A new, empty database on the session's server; its URL."""
    return new_database()


@pytest.fixture
def database_url(empty_database: str) -> str:
    """A fresh database with every migration applied."""
    migrate(empty_database)
    return empty_database
