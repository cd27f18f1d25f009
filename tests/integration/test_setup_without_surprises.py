"""Set-up without surprises: the services start from the database alone (the connections file is optional,
and a named but missing one is reported once, not fatal), and a channel's required options are set on the
command line and refused when left out. Real PostgreSQL and Kafka; the services as real OS processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psycopg
import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner, Result

from channels.connection import ConnectionRegistry, ConnectionsFileError, to_toml
from channels.connection_store import load_database, save_connection
from channels.tiktok import webhooks as tiktok_webhooks
from cli.main import app
from ingest.state import Directory
from lab.local.process import free_port, spawn, stop
from lab.local.stack import Service, Stack
from lab.marketplaces.shopify import order_webhook
from lab.marketplaces.shopify import sample_connection as shopify_connection
from lab.marketplaces.tiktok import sample_connection as tiktok_connection
from lab.marketplaces.tiktok import status_notification
from lab.sandbox import Sandbox
from stocksync.settings import KafkaSettings
from tests.helpers import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(kafka: KafkaSettings, database_url: str, tmp_path: Path) -> Iterator[Stack]:
    """A stack whose connections file is named but never written (tmp_path/missing.toml)."""
    with Sandbox(kafka, database_url) as box:
        yield box.stack(tmp_path / "missing.toml")


def start_gateway(stack: Stack, *, file_named: bool) -> Service:
    """``python -m ingest`` with INGEST_CONNECTIONS_FILE naming a missing file, or not set at all."""
    port = free_port()
    extra = {"INGEST_PORT": str(port), "INGEST_CONNECTIONS_REFRESH_S": "0.2"}
    if file_named:
        return stack.start("ingest", "ingest", port=port, **extra)
    env = stack.env(**extra)
    del env["INGEST_CONNECTIONS_FILE"]
    log_file = stack.run_dir / "ingest.log"
    proc = spawn([sys.executable, "-m", "ingest"], log_file=log_file, env=env)
    stack.services["ingest"] = Service("ingest", proc, log_file, port)
    return stack.services["ingest"]


def log_lines(service: Service) -> list[dict[str, str]]:
    lines = service.log_file.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def warnings_naming(service: Service, text: str) -> list[str]:
    return [r["message"] for r in log_lines(service) if r["level"] == "WARNING" and text in r["message"]]


async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        return resp.status


@pytest.mark.parametrize("file_named", [False, True], ids=["file-unset", "file-missing"])
async def test_the_gateway_starts_with_the_database_connections_alone(
    stack: Stack, database_url: str, file_named: bool
) -> None:
    conn = shopify_connection("http://127.0.0.1:1", skus=("SKU-1",), conn_id="shop-db")
    save_connection(database_url, conn)
    line = {"id": 1, "variant_id": int(conn.listings["SKU-1"].listing_id), "quantity": 1}
    body, headers = order_webhook(conn, 1, [line], datetime.now(UTC))

    gateway = start_gateway(stack, file_named=file_named)
    await eventually(stack.ready, timeout_s=30, what="the gateway to answer /healthz")
    assert await post(f"{stack.ingest_url}/webhooks/shop-db", body, headers) == 200

    # The table is still re-read with the file missing: a connection added now is served without a restart.
    later = shopify_connection("http://127.0.0.1:1", skus=("SKU-2",), conn_id="shop-later")
    save_connection(database_url, later)
    line = {"id": 1, "variant_id": int(later.listings["SKU-2"].listing_id), "quantity": 1}
    later_body, later_headers = order_webhook(later, 2, [line], datetime.now(UTC))

    async def later_accepted() -> bool:
        return await post(f"{stack.ingest_url}/webhooks/shop-later", later_body, later_headers) == 200

    await eventually(later_accepted, timeout_s=15, interval_s=0.1, what="the refreshed connection's webhook")

    missing = str(stack.config.connections_file)
    about_file = warnings_naming(gateway, missing)
    if file_named:
        assert len(about_file) == 1, about_file  # said once, not on every refresh
        assert "INGEST_CONNECTIONS_FILE" in about_file[0]
        assert "database" in about_file[0]
    else:
        assert about_file == []
    assert "ConnectionsFileError" not in gateway.log_file.read_text()


async def test_the_gateway_starts_with_no_connections_and_says_how_to_add_one(stack: Stack) -> None:
    gateway = start_gateway(stack, file_named=False)
    await eventually(stack.ready, timeout_s=30, what="the gateway to answer /healthz")
    assert await post(f"{stack.ingest_url}/webhooks/nobody", b"{}", {}) == 404
    advice = warnings_naming(gateway, "no connections")
    assert len(advice) == 1, advice
    assert "stocksync connections add" in advice[0]
    assert "INGEST_CONNECTIONS_FILE" in advice[0]


async def test_an_invalid_stored_connection_stops_start_up_with_a_message_not_a_traceback(
    stack: Stack, database_url: str
) -> None:
    conn = tiktok_connection("http://127.0.0.1:1", skus=("SKU-1",), conn_id="tiktok-old")
    config = {**conn.model_dump(mode="json"), "webhook_secret": "the-app-secret", "options": {}}
    with psycopg.connect(database_url) as db:  # as a row written before app_key was required would be
        db.execute(
            "INSERT INTO connections (id, tenant, channel, config) VALUES (%s, %s, %s, %s)",
            (conn.id, conn.tenant, conn.channel, Jsonb(config)),
        )
    gateway = start_gateway(stack, file_named=False)
    status = await asyncio.to_thread(gateway.proc.wait, 30)
    assert status == 2
    text = gateway.log_file.read_text()
    assert "Traceback" not in text
    assert "tiktok-old" in text
    assert "--option app_key=" in text
    assert "the-app-secret" not in text


@pytest.mark.parametrize("service", ["fanout", "reconciler"])
async def test_fanout_and_reconciler_start_with_their_file_missing(
    stack: Stack, database_url: str, tmp_path: Path, service: str
) -> None:
    save_connection(database_url, shopify_connection("http://127.0.0.1:1", skus=("SKU-1",)))
    port = free_port()
    missing = tmp_path / f"{service}-missing.toml"
    prefix = service.upper()
    env = {k: v for k, v in stack.env().items() if not k.startswith("RECONCILER_")}
    env.update(
        {
            f"{prefix}_CONNECTIONS_FILE": str(missing),
            f"{prefix}_PORT": str(port),
            "RECONCILER_RUN_ON_START": "false",
            "RECONCILER_REPORT_DIR": str(tmp_path / "reports"),
        }
    )
    argv = [sys.executable, "-m", service, *(["--channel", "shopify"] if service == "fanout" else [])]
    log_file = tmp_path / f"{service}.log"
    proc = spawn(argv, log_file=log_file, env=env)
    try:

        async def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{service} exited ({proc.returncode}):\n{log_file.read_text()}")
            url = f"http://127.0.0.1:{port}/healthz"
            try:
                async with aiohttp.ClientSession() as session, session.get(url) as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(healthy, timeout_s=60, interval_s=0.2, what=f"{service} to answer /healthz")
    finally:
        await asyncio.to_thread(stop, proc)
    text = log_file.read_text()
    assert "ConnectionsFileError" not in text
    about_file = [line for line in text.splitlines() if str(missing) in line]
    assert len(about_file) == 1, about_file
    assert f"{prefix}_CONNECTIONS_FILE" in about_file[0]


async def test_the_refresh_serves_the_table_while_the_file_is_missing(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "missing.toml"
    directory = Directory(ConnectionRegistry([]))
    save_connection(database_url, shopify_connection("http://x", skus=("A",), conn_id="shop-1"))
    caplog.set_level(logging.INFO, logger="ingest.state")
    task = asyncio.create_task(directory.refresh_forever(missing, database_url, 0.05))
    try:
        await eventually(lambda: directory.current.get("shop-1"), timeout_s=10, what="shop-1 served")
        # Start-up (load_for_service) said the file is missing: the refresh does not say it again.
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

        # The file appears: its connections join the table's, and that is logged.
        missing.write_text(to_toml([shopify_connection("http://x", skus=("B",), conn_id="shop-file")]))
        await eventually(lambda: directory.current.get("shop-file"), timeout_s=10, what="the file served")
        assert any("can be read again" in r.getMessage() for r in caplog.records)

        # It goes away again: what it held is still served (said once), and the table is still refreshed.
        missing.unlink()
        save_connection(database_url, shopify_connection("http://x", skus=("C",), conn_id="shop-2"))
        await eventually(lambda: directory.current.get("shop-2"), timeout_s=10, what="shop-2 served")

        def said_once() -> bool:
            return len([r for r in caplog.records if "cannot be read any more" in r.getMessage()]) == 1

        await eventually(said_once, timeout_s=10, what="one warning about the vanished file")
        assert directory.current.get("shop-file") is not None
        assert directory.current.get("shop-1") is not None
        gone = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(gone) == 1, gone
        assert str(missing) in gone[0]
        assert "INGEST_CONNECTIONS_FILE" in gone[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def cli(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"DATABASE_URL": database_url, "COLUMNS": "200"})


def add_tiktok(database_url: str, *options: str) -> Result:
    return cli(
        database_url,
        "connections",
        "add",
        "--id=tiktok-acme",
        "--tenant=acme",
        "--channel=tiktok",
        "--api-base-url=https://open-api.tiktokglobalshop.com",
        "--webhook-secret=the-app-secret",
        "--listing=SKU-1=1729000000000000001:1729500000000000001",
        *options,
    )


def test_connections_add_stores_options_and_a_tiktok_connection_then_verifies_webhooks(
    database_url: str,
) -> None:
    result = add_tiktok(database_url, "--option", "app_key=K123", "--option", "warehouse_id=W1")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    stored = load_database(database_url).get("tiktok-acme")
    assert stored is not None
    assert stored.options == {"app_key": "K123", "warehouse_id": "W1"}

    body, headers = status_notification(stored, "576000000000000001", "AWAITING_SHIPMENT", datetime.now(UTC))
    check = tiktok_webhooks.verifier(stored)
    assert check("the-app-secret", body, headers)
    assert not check("another-secret", body, headers)


def test_connections_add_refuses_a_tiktok_connection_without_its_app_key(database_url: str) -> None:
    result = add_tiktok(database_url, "--option", "warehouse_id=W1")
    assert result.exit_code != 0
    assert "app_key" in result.output
    assert "--option app_key=" in result.output
    assert "the-app-secret" not in result.output
    assert load_database(database_url).get("tiktok-acme") is None
    empty = add_tiktok(database_url, "--option", "app_key=")
    assert empty.exit_code != 0
    assert "app_key" in empty.output


def test_connections_add_warns_about_an_option_no_channel_code_reads(database_url: str) -> None:
    result = add_tiktok(database_url, "--option", "app_key=K", "--option", "appkey=K")
    assert result.exit_code == 0, result.output
    assert "appkey" in result.output
    assert "app_key, shop_cipher, warehouse_id" in result.output
    stored = load_database(database_url).get("tiktok-acme")
    assert stored is not None
    assert stored.options == {"app_key": "K", "appkey": "K"}
    malformed = add_tiktok(database_url, "--option", "app_key")
    assert malformed.exit_code != 0
    assert "KEY=VALUE" in malformed.output


def test_the_database_loader_refuses_a_row_missing_a_required_option(database_url: str) -> None:
    conn = tiktok_connection("http://x", skus=("SKU-1",), conn_id="tiktok-old")
    config = {**conn.model_dump(mode="json"), "webhook_secret": "the-app-secret"}
    config["options"] = {k: v for k, v in conn.options.items() if k != "app_key"}
    with psycopg.connect(database_url) as db:
        db.execute(
            "INSERT INTO connections (id, tenant, channel, config) VALUES (%s, %s, %s, %s)",
            (conn.id, conn.tenant, conn.channel, Jsonb(config)),
        )
    with pytest.raises(ConnectionsFileError, match="app_key") as refused:
        load_database(database_url)
    assert "tiktok-old" in str(refused.value)
    assert "the-app-secret" not in str(refused.value)
