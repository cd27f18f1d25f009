"""The reconciler against Shopify with ingest, processor and fan-out running as processes (issue 6, must-show
2 and 3): a count edited by hand on Shopify is corrected back to the master; ``reconcile --dry-run`` (the CLI,
as a process) reports the missed order and the drift it would fix and changes nothing; the real run then
does it. One run at a time: a second concurrent run is refused with a clear message."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lab.local.stack import Stack
from reconciler.report import CORRECTED, EDITED_ON_CHANNEL, WOULD_CORRECT
from reconciler.store import run_lock
from schemas import inventory_events, quarantine
from stocksync.settings import KafkaSettings
from tests.e2e.reconcile_kit import (
    checkpoints,
    deliver,
    end_offsets,
    master,
    reconcile,
    reconciler_settings,
    seed_counts,
)
from tests.fix_stack import ShopifyWorld
from tests.helpers import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


async def run_cli(
    cli: list[str], env: dict[str, str], *, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """`python -m reconciler.cli ...` as an operator runs it, off the loop (which serves the simulator)."""
    return await asyncio.to_thread(
        subprocess.run, cli, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


SKUS = ("SKU-1", "SKU-2", "SKU-3")


async def settled(world: ShopifyWorld, database_url: str, counts: dict[str, int]) -> None:
    """Wait until the master holds `counts` and Shopify shows them (the fan-out delivered)."""
    await eventually(
        lambda: master(database_url, "acme") == counts, timeout_s=30, what=f"the master at {counts}"
    )
    await eventually(
        lambda: all(world.simulator.available[world.item(s)] == q for s, q in counts.items()),
        timeout_s=30,
        what=f"Shopify showing {counts}",
    )


async def test_a_count_edited_on_shopify_is_corrected_back_to_the_master(
    pipeline: Stack, shopify_world: ShopifyWorld, kafka: KafkaSettings, database_url: str, tmp_path: Path
) -> None:
    world = shopify_world
    await seed_counts(kafka, "acme", dict.fromkeys(SKUS, 10))
    await settled(world, database_url, dict.fromkeys(SKUS, 10))
    # A sale whose webhook arrives: the pipeline applies it; the reconciler lists it as a duplicate.
    body, headers = world.simulator.place_order(world.connection, 5001, [("SKU-1", 2)], datetime.now(UTC))
    async with aiohttp.ClientSession() as session:
        await deliver(session, f"{pipeline.ingest_url}/webhooks/{world.connection.id}", body, headers)
    await settled(world, database_url, {"SKU-1": 8, "SKU-2": 10, "SKU-3": 10})
    # The seller types 50 into Shopify's admin for SKU-2: no order, no webhook, the master still says 10.
    world.simulator.available[world.item("SKU-2")] = 50

    settings = reconciler_settings(kafka, database_url, tmp_path / "reports")
    report, _ = await reconcile(settings, [world.connection])

    assert report.ok, report.to_json()
    [conn] = report.connections
    assert (conn.orders_listed, conn.orders_backfilled, conn.events_duplicate) == (1, 0, 1)
    assert [(d.sku, d.channel_value, d.expected, d.cause, d.action) for d in conn.drifts] == [
        ("SKU-2", 50, 10, EDITED_ON_CHANNEL, CORRECTED)
    ]
    assert world.simulator.available[world.item("SKU-2")] == 10
    assert master(database_url, "acme") == {"SKU-1": 8, "SKU-2": 10, "SKU-3": 10}
    written = read_json(Path(report.report_path or ""))
    assert written["totals"]["drifts_corrected"] == 1
    assert written["connections"][0]["drifts"][0]["cause"] == EDITED_ON_CHANNEL
    assert world.connection.id in checkpoints(database_url)


async def test_a_cancellation_whose_webhooks_were_lost_is_backfilled_and_restocks_once(
    pipeline: Stack, shopify_world: ShopifyWorld, kafka: KafkaSettings, database_url: str, tmp_path: Path
) -> None:
    """A sale arrives, its cancellation's webhooks (orders/cancelled, refunds/create) are lost: Shopify put
    the units back on its own count, the master did not. Master wins must not push the lower count over it:
    the reconciler learns the restock from the order list first, then finds nothing to correct."""
    world = shopify_world
    await seed_counts(kafka, "acme", dict.fromkeys(SKUS, 10))
    await settled(world, database_url, dict.fromkeys(SKUS, 10))
    body, headers = world.simulator.place_order(world.connection, 5101, [("SKU-3", 4)], datetime.now(UTC))
    async with aiohttp.ClientSession() as session:
        await deliver(session, f"{pipeline.ingest_url}/webhooks/{world.connection.id}", body, headers)
    await settled(world, database_url, {"SKU-1": 10, "SKU-2": 10, "SKU-3": 6})
    world.simulator.cancel_order(world.connection, 5101, datetime.now(UTC))  # its webhook never arrives
    assert world.simulator.available[world.item("SKU-3")] == 10

    settings = reconciler_settings(kafka, database_url, tmp_path / "reports")
    report, _ = await reconcile(settings, [world.connection])

    assert report.ok, report.to_json()
    [conn] = report.connections
    assert (conn.orders_listed, conn.orders_backfilled) == (1, 1)
    assert master(database_url, "acme") == dict.fromkeys(SKUS, 10)
    assert world.simulator.available[world.item("SKU-3")] == 10
    assert [d for d in conn.drifts if d.action == CORRECTED] == []
    again, _ = await reconcile(settings, [world.connection])  # listed again: a duplicate, restocked once
    assert again.ok
    assert master(database_url, "acme") == dict.fromkeys(SKUS, 10)


async def test_dry_run_reports_what_it_would_do_and_changes_nothing(
    pipeline: Stack, shopify_world: ShopifyWorld, kafka: KafkaSettings, database_url: str, tmp_path: Path
) -> None:
    world = shopify_world
    await seed_counts(kafka, "acme", dict.fromkeys(SKUS, 10))
    await settled(world, database_url, dict.fromkeys(SKUS, 10))
    # A sale whose webhook is lost (Shopify counted it, the master did not), and a hand edit.
    world.simulator.place_order(world.connection, 6001, [("SKU-3", 3)], datetime.now(UTC))
    world.simulator.available[world.item("SKU-2")] = 50
    events_before = end_offsets(kafka, inventory_events.TOPIC)
    quarantined_before = end_offsets(kafka, quarantine.TOPIC)
    shows_before = dict(world.simulator.available)
    calls_before = len(world.simulator.calls)

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "DATABASE_URL": database_url,
        "RECONCILER_CONNECTIONS_FILE": str(world.connections_file),
        "RECONCILER_CONNECTIONS_TABLE": "false",
        "RECONCILER_CHANNEL_RETRY_S": "1",
        "COLUMNS": "200",
    }
    report_path = tmp_path / "dry.json"
    cli = [sys.executable, "-m", "reconciler.cli", "--dry-run", "--report", str(report_path)]
    done = await run_cli(cli, env, timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dry run" in done.stdout
    assert "backfilled 1 orders" in done.stdout, done.stdout

    dry = read_json(report_path)
    assert dry["dry_run"] is True
    [conn] = dry["connections"]
    assert (conn["orders_backfilled"], conn["events_published"], conn["events_duplicate"]) == (1, 0, 0)
    # SKU-3: Shopify shows 7, which is what the master will say once it learns the missed sale: no drift.
    assert [(d["sku"], d["channel_value"], d["expected"], d["action"]) for d in conn["drifts"]] == [
        ("SKU-2", 50, 10, WOULD_CORRECT)
    ]
    # ... and nothing changed: no record published, no write to Shopify, master and checkpoints unchanged.
    assert end_offsets(kafka, inventory_events.TOPIC) == events_before
    assert end_offsets(kafka, quarantine.TOPIC) == quarantined_before
    assert world.simulator.available == shows_before
    assert len(world.simulator.calls) == calls_before  # set calls only; reads are not recorded there
    assert master(database_url, "acme") == dict.fromkeys(SKUS, 10)
    assert checkpoints(database_url) == {}

    # The real run does what the dry run said.
    real_path = tmp_path / "real.json"
    cli = [sys.executable, "-m", "reconciler.cli", "--report", str(real_path)]
    done = await run_cli(cli, env, timeout_s=180)
    assert done.returncode == 0, done.stdout + done.stderr
    real = read_json(real_path)["connections"][0]
    assert (real["orders_backfilled"], real["events_published"]) == (1, 1)
    assert [(d["sku"], d["action"]) for d in real["drifts"]] == [("SKU-2", CORRECTED)]
    assert master(database_url, "acme") == {"SKU-1": 10, "SKU-2": 10, "SKU-3": 7}
    await settled(world, database_url, {"SKU-1": 10, "SKU-2": 10, "SKU-3": 7})
    assert world.connection.id in checkpoints(database_url)


async def test_a_second_concurrent_run_is_refused_clearly(
    shopify_world: ShopifyWorld, kafka: KafkaSettings, database_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "DATABASE_URL": database_url,
        "RECONCILER_CONNECTIONS_FILE": str(shopify_world.connections_file),
        "RECONCILER_CONNECTIONS_TABLE": "false",
        "COLUMNS": "200",
    }
    async with run_lock(database_url):  # a run in progress
        cli = [sys.executable, "-m", "reconciler.cli", "--report", str(tmp_path / "r.json")]
        done = await run_cli(cli, env, timeout_s=60)
    assert done.returncode == 75, done.stdout + done.stderr
    assert "another reconcile run is already running" in " ".join(done.stdout.split())
    assert not await asyncio.to_thread((tmp_path / "r.json").exists)
