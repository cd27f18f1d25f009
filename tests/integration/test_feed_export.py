"""``stocksync feed export`` and ``feed thresholds`` (cli/feed.py) on a real PostgreSQL: one ACP line per SKU
of the tenant with what agents may see under each policy and the status by the tenant's threshold; deltas
hold exactly the changes of status; no other tenant's SKU; plain answers for an unknown tenant, a running
export and an unreachable database. Each test has a fresh database; the files are in its tmp_path."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import psycopg
import pytest
import typer
from typer.testing import CliRunner, Result

import cli.feed
from cli.errors import BoundaryGroup
from cli.feed import LOCK_CLASS, feed_app
from lab.local.process import free_port

pytestmark = pytest.mark.integration


def root_app() -> typer.Typer:
    """The feed commands under a root like cli.main's (its error boundary and --debug)."""
    app = typer.Typer(cls=BoundaryGroup, no_args_is_help=True, pretty_exceptions_enable=False)

    @app.callback()
    def root(debug: Annotated[bool, typer.Option("--debug")] = False) -> None:
        """The test's root."""

    app.add_typer(feed_app, name="feed")
    return app


APP = root_app()


class Feed:
    """Runs ``feed …`` against one database and reads what the export wrote."""

    def __init__(self, database_url: str, out: Path) -> None:
        self.database_url, self.out = database_url, out

    def run(self, *args: str, database_url: str | None = None) -> Result:
        env = {"DATABASE_URL": database_url or self.database_url, "PROCESSOR_DEFAULT_POLICY": None}
        return CliRunner().invoke(APP, ["feed", *args], env=env, catch_exceptions=False)

    def export(self, tenant: str = "acme", *extra: str) -> Result:
        return self.run("export", "--tenant", tenant, "--format", "acp", "--out", str(self.out), *extra)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text(encoding="utf-8").splitlines()]

    def statuses(self) -> dict[str, str]:
        return {line["id"]: line["availability"]["status"] for line in self.lines()}

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            cur = conn.execute(query.encode(), params)
            return cur.fetchall() if cur.description else []


def seed(
    feed: Feed,
    inventory: Sequence[tuple[str, str, int]],
    grants: Sequence[tuple[str, str, str, int]] = (),
    policies: Sequence[tuple[str, str, str, int]] = (),
) -> None:
    """Master rows (tenant, sku, available), grants (tenant, sku, connection, granted) and policy rows
    (tenant, sku or '', policy, buffer), as the processor and `stocksync policy set` leave them."""
    with psycopg.connect(feed.database_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO inventory (tenant, sku, available, version) VALUES (%s, %s, %s, 1)", inventory
        )
        cur.executemany(
            "INSERT INTO allocations (tenant, sku, connection_id, channel, granted) "
            "VALUES (%s, %s, %s, 'shopify', %s)",
            grants,
        )
        cur.executemany(
            "INSERT INTO allocation_policies (tenant, sku, policy, buffer) VALUES (%s, %s, %s, %s)",
            policies,
        )


@pytest.fixture
def feed(database_url: str, tmp_path: Path) -> Iterator[Feed]:
    yield Feed(database_url, tmp_path / "products.jsonl")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [], "a temporary file was left beside --out"


def set_available(feed: Feed, tenant: str, sku: str, available: int) -> None:
    feed.sql(
        "UPDATE inventory SET available = %s, version = version + 1, updated_at = now() "
        "WHERE tenant = %s AND sku = %s",
        (available, tenant, sku),
    )


# acme: never_cancel with a buffer of 1 for the tenant, one SKU overridden to mirror with a buffer of 2.
ACME = [
    ("acme", "A", 10),  # 10 - 1 - (4 + 2) granted = 3
    ("acme", "B-MIRROR", 10),  # mirror: 10 - 2 (its stale grant does not count) = 8
    ("acme", "C", 5),  # 5 - 1 = 4
    ("acme", "D", 3),  # 3 - 1 - 3 < 0: 0
    ("acme", "E", 0),
    ("acme", "a-lower", 7),  # 6; sorts after every capital (bytewise), whatever the server's collation
]
GRANTS = [
    ("acme", "A", "shopify-acme", 4),
    ("acme", "A", "ebay-acme", 2),
    ("acme", "B-MIRROR", "shopify-acme", 5),
    ("acme", "D", "shopify-acme", 3),
    ("other", "A", "shopify-other", 1),
]
POLICIES = [("acme", "", "never_cancel", 1), ("acme", "B-MIRROR", "mirror", 2)]
OTHER = [("other", "A", 50), ("other", "Z-OTHER", 2)]


def test_each_sku_shows_what_agents_may_see_under_its_policy_and_the_tenant_threshold(feed: Feed) -> None:
    seed(feed, ACME + OTHER, GRANTS, POLICIES)

    done = feed.export()
    assert done.exit_code == 0, done.output
    assert "wrote 6 SKUs of tenant acme" in done.stdout
    lines = feed.lines()
    assert [line["id"] for line in lines] == ["A", "B-MIRROR", "C", "D", "E", "a-lower"]
    shown = {line["id"]: (line["inventory_quantity"], line["availability"]) for line in lines}
    limited = {"available": True, "status": "limited_stock"}  # the default threshold: 5 or fewer
    assert shown == {
        "A": (3, limited),
        "B-MIRROR": (8, {"available": True, "status": "in_stock"}),
        "C": (4, limited),
        "D": (0, {"available": False, "status": "out_of_stock"}),
        "E": (0, {"available": False, "status": "out_of_stock"}),
        "a-lower": (6, {"available": True, "status": "in_stock"}),
    }
    assert all(set(line) == {"id", "availability", "inventory_quantity", "updated_at"} for line in lines)
    changed = dict(
        feed.sql(
            "SELECT i.sku, greatest(i.updated_at, max(a.updated_at)) FROM inventory i "
            "LEFT JOIN allocations a USING (tenant, sku) WHERE i.tenant = 'acme' GROUP BY i.tenant, i.sku"
        )
    )
    for line in lines:
        assert line["updated_at"].endswith("Z")
        assert datetime.fromisoformat(line["updated_at"]) == changed[line["id"]]

    answer = feed.run("thresholds", "--tenant", "acme", "--limited-at", "3")
    assert answer.exit_code == 0, answer.output
    assert answer.stdout.startswith("tenant acme: limited_stock at 1 to 3 units agents may see")
    assert feed.export().exit_code == 0
    assert feed.statuses() == {
        "A": "limited_stock",  # 3: at the threshold
        "B-MIRROR": "in_stock",
        "C": "in_stock",  # 4: above it now
        "D": "out_of_stock",
        "E": "out_of_stock",
        "a-lower": "in_stock",
    }

    assert feed.export("other").exit_code == 0
    assert [(line["id"], line["inventory_quantity"]) for line in feed.lines()] == [("A", 49), ("Z-OTHER", 2)]
    assert feed.statuses() == {"A": "in_stock", "Z-OTHER": "limited_stock"}  # other keeps the default: 5


def test_thresholds_shows_the_default_then_what_was_set(feed: Feed) -> None:
    shown = feed.run("thresholds", "--tenant", "acme")
    assert shown.exit_code == 0, shown.output
    assert "limited_stock at 1 to 5 units" in shown.stdout
    assert "the default" in shown.stdout
    assert feed.run("thresholds", "--tenant", "acme", "--limited-at", "0").exit_code == 0
    shown = feed.run("thresholds", "--tenant", "acme")
    assert "limited_stock never" in shown.stdout
    assert "default" not in shown.stdout
    refused = feed.run("thresholds", "--tenant", "acme", "--limited-at", "-1")
    assert refused.exit_code == 2
    assert feed.sql("SELECT tenant, limited_at FROM agent_thresholds") == [("acme", 0)]


def test_a_delta_holds_exactly_the_changes_of_status(feed: Feed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.feed, "CHUNK", 2)  # several chunks, each recorded on its own
    seed(feed, ACME + OTHER, GRANTS, POLICIES)

    first = feed.export("acme", "--delta")
    assert first.exit_code == 0, first.output
    assert "no earlier acp export of tenant acme: the delta is every SKU" in first.stdout
    assert [line["id"] for line in feed.lines()] == ["A", "B-MIRROR", "C", "D", "E", "a-lower"]

    again = feed.export("acme", "--delta")
    assert again.exit_code == 0, again.output
    assert feed.out.read_text() == ""
    assert "no SKU of tenant acme changed status since the acp export of" in again.stdout
    assert "is empty (6 SKUs checked)" in again.stdout

    set_available(feed, "acme", "B-MIRROR", 9)  # 7: still in stock
    set_available(feed, "acme", "C", 8)  # 7: limited_stock -> in_stock
    set_available(feed, "other", "Z-OTHER", 40)  # another tenant's change
    changed = feed.export("acme", "--delta")
    assert changed.exit_code == 0, changed.output
    assert [(line["id"], line["inventory_quantity"]) for line in feed.lines()] == [("C", 7)]
    assert feed.statuses() == {"C": "in_stock"}
    assert "1 of 6 SKUs of tenant acme changed status" in changed.stdout

    # A sale takes a grant's unit and the master's: what agents may see of A is unchanged (3).
    feed.sql("UPDATE allocations SET granted = 3 WHERE tenant = 'acme' AND sku = 'A' AND granted = 4")
    set_available(feed, "acme", "A", 9)
    # A grant moved to a storefront empties what agents may see of a-lower.
    feed.sql("INSERT INTO allocations VALUES ('acme', 'a-lower', 'shopify-acme', 'shopify', 6)")
    seed(feed, [("acme", "F-NEW", 20)])
    feed.sql("DELETE FROM inventory WHERE tenant = 'acme' AND sku = 'E'")
    moved = feed.export("acme", "--delta")
    assert moved.exit_code == 0, moved.output
    assert feed.statuses() == {"F-NEW": "in_stock", "a-lower": "out_of_stock"}
    recorded = feed.sql(
        "SELECT sku, status FROM feed_state WHERE tenant = 'acme' AND format = 'acp' ORDER BY 1"
    )
    assert dict(recorded) == {
        "A": "limited_stock",
        "B-MIRROR": "in_stock",
        "C": "in_stock",
        "D": "out_of_stock",
        "F-NEW": "in_stock",
        "a-lower": "out_of_stock",
    }  # E, gone from the master record, is forgotten: should it come back it is new

    assert feed.export("acme").exit_code == 0  # a full export: every SKU, recorded too
    assert len(feed.lines()) == 6
    assert feed.export("acme", "--delta").exit_code == 0
    assert feed.lines() == []

    other = feed.export("other", "--delta")  # other's first delta: its own SKUs, every one
    assert [line["id"] for line in feed.lines()] == ["A", "Z-OTHER"], other.output


def test_the_default_out_is_products_jsonl_in_the_current_directory(
    feed: Feed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(feed, [("acme", "A", 1)])
    monkeypatch.chdir(tmp_path)
    done = feed.run("export", "--tenant", "acme")
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "products.jsonl").read_text())["id"] == "A"


def test_an_unknown_tenant_is_answered_and_nothing_is_replaced(feed: Feed) -> None:
    seed(feed, OTHER)
    feed.out.write_text("the last good feed\n")
    done = feed.export("acme")
    assert done.exit_code == 1
    assert "tenant acme has no SKU in the master record: is the name right?" in done.stderr
    assert done.stdout == ""
    assert feed.out.read_text() == "the last good feed\n"
    assert feed.sql("SELECT count(*) FROM feed_state") == [(0,)]


def test_a_second_export_of_the_same_tenant_and_format_is_refused_while_one_runs(feed: Feed) -> None:
    seed(feed, ACME)
    with psycopg.connect(feed.database_url, autocommit=True) as running:
        running.execute("SELECT pg_advisory_lock(%s, hashtext('acp:acme'))", (LOCK_CLASS,))
        refused = feed.export("acme")
        other_tenant = feed.export("other")  # not the same export: not refused for this reason
    assert refused.exit_code == 1
    assert "another acp export of tenant acme is running" in refused.stderr
    assert not feed.out.exists()
    assert "another" not in other_tenant.output
    assert feed.export("acme").exit_code == 0  # the lock went with its session


def test_an_unreachable_database_says_what_to_check(feed: Feed) -> None:
    closed = f"postgresql://stocksync:secret-pw@127.0.0.1:{free_port()}/stocksync"
    done = feed.run("export", "--tenant", "acme", "--out", str(feed.out), database_url=closed)
    assert done.exit_code == 1
    assert "is unreachable or refused the connection" in done.stderr
    assert "Check DATABASE_URL" in done.stderr
    assert "secret-pw" not in done.output
    assert "Traceback" not in done.output
    assert not feed.out.exists()
