"""Connections and admin tenants in the database: added on the command line, picked up by a running gateway
without a restart, listed without their secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from channels.connection import ConnectionRegistry, to_toml
from channels.connection_store import load_all, load_database
from cli.main import app
from ingest.app import build_app
from ingest.settings import IngestSettings
from lab.marketplaces.shopify import order_webhook, sample_connection
from schemas import TOPICS
from stocksync.kafka import ensure_topics
from stocksync.settings import KafkaSettings, PostgresSettings
from tests.helpers import eventually

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def gateway(kafka: KafkaSettings, database_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    ensure_topics(kafka, TOPICS)
    file = tmp_path / "connections.toml"
    file.write_text(to_toml([sample_connection("http://127.0.0.1:1", skus=("SKU-1",), conn_id="from-file")]))
    settings = IngestSettings(
        kafka=kafka,
        postgres=PostgresSettings(database_url=database_url),
        connections_file=file,
        connections_refresh_s=0.2,
    )
    c: Client = TestClient(TestServer(build_app(settings, connections=load_all(file, database_url))))
    await c.start_server()
    yield c
    await c.close()


def cli(database_url: str, *args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"DATABASE_URL": database_url, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


async def test_a_connection_added_on_the_command_line_takes_webhooks_without_a_restart(
    gateway: Client, database_url: str
) -> None:
    new = sample_connection("http://127.0.0.1:2", skus=("SKU-9",), conn_id="shop-new", tenant="acme")
    body, headers = order_webhook(
        new,
        1,
        [{"id": 1, "variant_id": int(new.listings["SKU-9"].listing_id), "quantity": 1}],
        datetime.now(UTC),
    )
    assert (await gateway.post("/webhooks/shop-new", data=body, headers=headers)).status == 404
    listing = new.listings["SKU-9"]
    out = cli(
        database_url,
        "connections",
        "add",
        "--id=shop-new",
        "--tenant=acme",
        "--channel=shopify",
        "--api-base-url=http://127.0.0.1:2",
        f"--webhook-secret={new.webhook_secret.get_secret_value()}",
        f"--listing=SKU-9={listing.listing_id}:{listing.inventory_ref}",
    )
    assert "/webhooks/shop-new" in out

    async def accepted() -> bool:
        return (await gateway.post("/webhooks/shop-new", data=body, headers=headers)).status == 200

    await eventually(accepted, timeout_s=10, interval_s=0.1, what="the gateway taking the new connection")
    # The file's connection is still served beside the table's.
    assert (await gateway.post("/webhooks/from-file", data=b"{}", headers={})).status == 401

    listed = cli(database_url, "connections", "list")
    assert "shop-new" in listed
    assert "acme" in listed
    assert new.webhook_secret.get_secret_value() not in listed


async def test_tenant_tokens_from_the_command_line_work_on_the_admin_api(
    gateway: Client, database_url: str
) -> None:
    token = cli(database_url, "tenants", "add", "globex").strip().splitlines()[-1]
    assert load_database(database_url).tenant_for_token(token) == "globex"

    async def authorised() -> bool:
        resp = await gateway.get("/v1/stock/globex/SKU-1", headers={"Authorization": f"Bearer {token}"})
        return resp.status == 404  # authorised, and the SKU simply has no record yet

    await eventually(authorised, timeout_s=10, interval_s=0.1, what="the gateway knowing the new token")


def test_import_copies_a_file_into_the_tables_and_bad_input_is_explained(
    database_url: str, tmp_path: Path
) -> None:
    file = tmp_path / "c.toml"
    conns = [sample_connection("http://x", skus=("A",), conn_id=f"shop-{n}") for n in range(3)]
    file.write_text(to_toml(conns))
    assert "imported 3 connections" in cli(database_url, "connections", "import", str(file))
    assert {c.id for c in load_database(database_url)} == {"shop-0", "shop-1", "shop-2"}
    assert load_database(database_url).get("shop-1") == ConnectionRegistry.from_file(file).get("shop-1")

    bad = CliRunner().invoke(
        app,
        [
            "connections",
            "add",
            "--id=Bad Id",
            "--tenant=acme",
            "--channel=shopify",
            "--api-base-url=http://x",
            "--webhook-secret=s",
        ],
        env={"DATABASE_URL": database_url},
    )
    assert bad.exit_code == 1
    assert "invalid connection" in bad.output
    down = CliRunner().invoke(
        app, ["connections", "list"], env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"}
    )
    assert down.exit_code == 1
    assert "Check DATABASE_URL" in down.output
