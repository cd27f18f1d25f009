"""A real PostgreSQL server for the session, and a fresh migrated database per test (dropped after)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from lab.local import PostgresEndpoint, local_postgres
from lab.sandbox import fresh_database
from stocksync.db import migrate
from tests.fix_kafka import announced


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config) -> Iterator[PostgresEndpoint]:
    yield from announced(pytestconfig, local_postgres())


@pytest.fixture
def new_database(pg_server: PostgresEndpoint) -> Iterator[Callable[[], str]]:
    """Makes new, empty databases on the session's server; all dropped, with their connections, after."""
    with ExitStack() as made:
        yield lambda: made.enter_context(fresh_database(pg_server.url, "t", migrated=False))


@pytest.fixture
def empty_database(new_database: Callable[[], str]) -> str:
    """A new, empty database on the session's server; its URL."""
    return new_database()


@pytest.fixture
def database_url(empty_database: str) -> str:
    """A fresh database with every migration applied."""
    migrate(empty_database)
    return empty_database
