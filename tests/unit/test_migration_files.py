"""The shipped migration files are well-formed (the database side is in tests/integration)."""

from __future__ import annotations

from stocksync.db import shipped_migrations


def test_versions_are_unique_and_start_at_one() -> None:
    versions = [m.version for m in shipped_migrations()]
    assert versions[0] == 1
    assert versions == sorted(set(versions))
