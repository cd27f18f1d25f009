"""The processor's guarantees, with worker processes (`python -m processor`) on real Kafka and PostgreSQL.

The reference for "the same final state" is the same stream applied straight into a second database in one
uninterrupted pass; the checksum covers inventory, ledger and processed_events (processor.checksum).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict

from lab.local import PostgresEndpoint
from lab.local.process import free_port
from lab.local.stack import Service, Stack
from lab.local.traffic import as_records, synthetic_stream
from lab.sandbox import Sandbox
from processor.checksum import TableSum, checksum
from processor.replay import replay
from processor.store import apply_batch
from schemas import inventory_events, processor_dlq, stock_changed
from schemas.base import MAX_QUANTITY
from schemas.inventory_events import AnyInventoryEvent, OrderPlaced, StockCounted, StockReceived
from stocksync.db import migrate
from stocksync.kafka import AsyncProducer, producer_config
from stocksync.settings import KafkaSettings
from tests.helpers import eventually, group_caught_up, read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@dataclass
class Processors:
    kafka: KafkaSettings
    database_url: str
    stack: Stack
    new_database: Callable[[], str]

    def start(self, name: str = "processor", **env: str) -> Service:
        port = free_port()
        return self.stack.start(
            name,
            "processor",
            port=port,
            PROCESSOR_OPS_PORT=str(port),
            PROCESSOR_SESSION_TIMEOUT_S="6",
            PROCESSOR_BATCH_MAX="300",
            **env,
        )

    def kill(self, name: str = "processor") -> None:
        assert self.stack.stop_service(name, sig=signal.SIGKILL) == -signal.SIGKILL

    async def publish(self, events: list[AnyInventoryEvent]) -> None:
        producer = AsyncProducer(producer_config(self.kafka))
        try:
            await producer.send_batch(self.kafka.topic(inventory_events.TOPIC), as_records(events))
        finally:
            await producer.close()

    def ledger_rows(self) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM ledger").fetchone()
        return int(row[0]) if row else 0

    async def settled(self, rows: int, timeout_s: float = 120) -> None:
        """Every event applied, and the group committed every offset of inventory.events."""
        await eventually(lambda: self.ledger_rows() >= rows, timeout_s=timeout_s, what=f"{rows} ledger rows")
        await eventually(
            lambda: group_caught_up(self.kafka, "stocksync-processor", inventory_events.TOPIC),
            timeout_s=60,
            what="the processor group to commit every offset",
        )

    async def reference(self, events: list[AnyInventoryEvent]) -> dict[str, TableSum]:
        """The state one uninterrupted pass over `events` produces."""
        url = self.new_database()
        migrate(url)
        async with await AsyncConnection.connect(url) as conn:
            for i in range(0, len(events), 1000):
                async with conn.transaction():
                    await apply_batch(conn, events[i : i + 1000])
        return checksum(url)


@pytest.fixture
async def processors(
    kafka: KafkaSettings, database_url: str, new_database: Callable[[], str], tmp_path: Path
) -> AsyncIterator[Processors]:
    async with Sandbox(kafka, database_url) as box:
        yield Processors(kafka, database_url, box.stack(tmp_path / "unused.toml"), new_database)


def reached(processors: Processors, rows: int) -> Callable[[], bool]:
    return lambda: processors.ledger_rows() >= rows


def applied_versions(database_url: str) -> set[tuple[str, str, int]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT tenant, sku, version FROM ledger WHERE outcome = 'applied'").fetchall()
    return {(r[0], r[1], r[2]) for r in rows}


def published_versions(kafka: KafkaSettings) -> set[tuple[str, str, int]]:
    records = read_topic(kafka, stock_changed.TOPIC, timeout_s=60)
    changes = (stock_changed.decode(m.value() or b"") for m in records)
    return {(c.tenant, c.sku, c.version) for c in changes}


async def test_redelivered_stream_changes_nothing(processors: Processors) -> None:
    events = synthetic_stream(10_000, skus=100, seed=11)
    processors.start()
    await processors.publish(events)
    await processors.settled(len(events))
    first = checksum(processors.database_url)
    assert first == await processors.reference(events)

    # The whole stream again, then 2,000 of its events once more in shuffled order.
    again = random.Random(5).sample(events, 2_000)
    await processors.publish(events + again)
    await eventually(
        lambda: group_caught_up(processors.kafka, "stocksync-processor", inventory_events.TOPIC),
        timeout_s=120,
        what="the processor to consume the redelivered stream",
    )
    assert checksum(processors.database_url) == first
    with psycopg.connect(processors.database_url) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM ledger").fetchone()
    assert rows == (len(events), len(events))


async def test_kill_9_at_random_moments_loses_nothing(processors: Processors) -> None:
    events = synthetic_stream(20_000, skus=200, seed=12)
    expected = await processors.reference(events)
    processors.start()
    await processors.publish(events)
    moments = sorted(random.Random(3).sample(range(2_000, 18_000), 3))
    killed_at = []
    for moment in moments:
        await eventually(reached(processors, moment), timeout_s=120, what=f"{moment} ledger rows")
        processors.kill()
        killed_at.append(processors.ledger_rows())
        processors.start()
    assert all(rows < len(events) for rows in killed_at), f"a kill came after the burst: {killed_at}"
    await processors.settled(len(events), timeout_s=180)
    assert checksum(processors.database_url) == expected
    # Every change the master committed was announced, at its version, despite the kills.
    missing = applied_versions(processors.database_url) - published_versions(processors.kafka)
    assert not missing, f"{len(missing)} applied versions have no stock.changed, e.g. {sorted(missing)[:5]}"


async def test_a_worker_leaving_mid_burst_changes_nothing(processors: Processors) -> None:
    events = synthetic_stream(20_000, skus=200, seed=13)
    expected = await processors.reference(events)
    processors.start("processor-a")
    processors.start("processor-b")
    await processors.publish(events)
    await eventually(lambda: processors.ledger_rows() >= 6_000, timeout_s=120, what="6,000 rows")
    assert processors.stack.stop_service("processor-b") == 0  # SIGTERM: leaves the group, partitions move
    await processors.settled(len(events), timeout_s=180)
    assert checksum(processors.database_url) == expected
    missing = applied_versions(processors.database_url) - published_versions(processors.kafka)
    assert not missing


def stocksync(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "stocksync"
    argv = [str(exe), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)  # noqa: S603


async def test_replay_rebuilds_the_live_state_and_audit_explains_it(processors: Processors) -> None:
    events = synthetic_stream(6_000, skus=60, seed=14)
    processors.start()
    await processors.publish(events + events[:500])  # the live run also saw redeliveries
    await processors.settled(len(events))
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": processors.kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": processors.kafka.topic_prefix,
        "DATABASE_URL": processors.database_url,
        "COLUMNS": "200",
    }
    target = processors.new_database()
    done = await asyncio.to_thread(stocksync, "replay", "--into", target, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checksums match" in done.stdout
    assert checksum(target) == checksum(processors.database_url)

    again = await asyncio.to_thread(stocksync, "replay", "--into", target, env=env)
    assert again.returncode == 2
    assert "not empty" in again.stdout

    trail = await asyncio.to_thread(stocksync, "audit", "acme", "SKU-0007", "--limit", "5", env=env)
    assert trail.returncode == 0, trail.stderr
    with psycopg.connect(processors.database_url) as conn:
        newest = conn.execute(
            "SELECT event_id FROM ledger WHERE sku = 'SKU-0007' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert newest is not None
    assert newest[0] in trail.stdout


def ledger_outcomes(database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT event_id, outcome FROM ledger").fetchall())


def readiness(service: Service) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


async def test_a_poison_event_in_a_piled_up_batch_loses_no_neighbour_and_replays_equal(
    processors: Processors,
) -> None:
    """Issue 12: orders of two tenants pile up while the processor is down (so its first batch holds them all)
    with an undecodable record and a receipt the database cannot hold among them. Every order is applied
    once, the two bad records are dead-lettered with their reasons, the group commits to the end, and a
    replay of the topic rebuilds the same state (the invalid event recorded the same way)."""
    stock: list[AnyInventoryEvent] = [
        StockCounted(
            event_id=f"admin:count:{tenant}",
            tenant=tenant,
            sku="SKU-1",
            quantity=1_000,
            occurred_at=T0 - timedelta(hours=1),
            received_at=T0,
        )
        for tenant in ("acme", "zeta")
    ]
    await processors.publish(stock)
    sales: list[AnyInventoryEvent] = [
        OrderPlaced(
            event_id=f"{tenant}-shop:order:{n}:line:1",
            tenant=tenant,
            sku="SKU-1",
            quantity=1,
            connection_id=f"{tenant}-shop",
            channel="shopify",
            order_id=str(n),
            line_id="1",
            occurred_at=T0 + timedelta(seconds=n),
            received_at=T0 + timedelta(seconds=n),
        )
        for n in range(300)
        for tenant in ("acme", "zeta")
    ]
    poison = StockReceived(
        event_id="admin:receipt:huge",
        tenant="acme",
        sku="SKU-1",
        quantity=MAX_QUANTITY,
        occurred_at=T0,
        received_at=T0,
    )
    await processors.publish(sales[:250])
    producer = AsyncProducer(producer_config(processors.kafka))
    try:
        await producer.send(processors.kafka.topic(inventory_events.TOPIC), b"{not json", key=b"acme/SKU-1")
    finally:
        await producer.close()
    await processors.publish([poison, *sales[250:]])
    worker = processors.start()
    decodable = len(stock) + len(sales) + 1
    await processors.settled(decodable)
    outcomes = ledger_outcomes(processors.database_url)
    assert outcomes[poison.event_id] == "invalid"
    lost = [s.event_id for s in sales if outcomes.get(s.event_id) != "applied"]
    assert not lost, f"{len(lost)} of {len(sales)} acknowledged orders not applied, e.g. {lost[:3]}"
    with psycopg.connect(processors.database_url) as conn:
        assert conn.execute("SELECT tenant, available FROM inventory ORDER BY 1").fetchall() == [
            ("acme", 700),
            ("zeta", 700),
        ]
    letters = [
        processor_dlq.decode(m.value() or b"") for m in read_topic(processors.kafka, processor_dlq.TOPIC)
    ]
    assert sorted(x.problem for x in letters) == ["invalid", "undecodable"]
    assert all(x.reason for x in letters)
    await eventually(lambda: readiness(worker)[0] == 200, timeout_s=30, what="the processor to be ready")

    target = processors.new_database()
    stats = await replay(processors.kafka, target)
    assert stats.undecodable == 1
    assert checksum(target) == checksum(processors.database_url)

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": processors.kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": processors.kafka.topic_prefix,
        "COLUMNS": "250",
    }
    shown = await asyncio.to_thread(stocksync, "dlq", "events", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "2 dead-lettered inventory events" in shown.stdout
    assert poison.event_id in shown.stdout, shown.stdout
    assert "undecodable" in shown.stdout


async def test_with_the_database_gone_the_processor_stalls_acknowledges_nothing_then_catches_up(
    processors: Processors, pg_server: PostgresEndpoint
) -> None:
    """PostgreSQL refuses the processor's connections: it stops taking events, /readyz says why, the group
    commits nothing; once the database is back every event is applied exactly once."""
    events = synthetic_stream(2_000, skus=20, seed=15)
    worker = processors.start()
    await processors.publish(events[:200])
    await processors.settled(200)
    name = conninfo_to_dict(processors.database_url)["dbname"]

    def refuse(allow: bool) -> None:
        with psycopg.connect(pg_server.url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}'.encode())
            if not allow:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
                )

    refuse(True)
    try:
        refuse(False)
        await processors.publish(events[200:])

        def stalled() -> bool:
            status, body = readiness(worker)
            return status == 503 and "no batch applied" in str(body.get("checks", {}).get("progress", ""))

        await eventually(stalled, timeout_s=60, what="/readyz to report the stalled agent")
        assert not group_caught_up(processors.kafka, "stocksync-processor", inventory_events.TOPIC)
    finally:
        refuse(True)
    await processors.settled(len(events), timeout_s=180)
    assert checksum(processors.database_url) == await processors.reference(events)
    await eventually(lambda: readiness(worker)[0] == 200, timeout_s=30, what="the processor to be ready")
