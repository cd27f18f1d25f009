"""The real servers the project starts: Kafka durability round trip, topic creation, migrations."""

from __future__ import annotations

import os
import time

import psycopg
import pytest

from lab.local import KafkaEndpoint, postgres
from lab.local.kafka import JvmKafkaBroker, broker_answers_metadata, ensure_broker_jars
from stocksync.db import MigrationError, migrate, shipped_migrations, shipped_repeatables
from stocksync.kafka import AsyncProducer, ensure_topics, producer_config
from stocksync.settings import KafkaSettings
from tests.helpers import read_topic

pytestmark = pytest.mark.integration


async def test_send_resolves_only_with_the_brokers_acknowledgement(kafka: KafkaSettings) -> None:
    assert ensure_topics(kafka, ["probe"]) == [kafka.topic("probe")]
    assert ensure_topics(kafka, ["probe"]) == []  # idempotent
    producer = AsyncProducer(producer_config(kafka))
    try:
        meta = await producer.send(kafka.topic("probe"), b"hello", key=b"acme/SKU-1", headers={"type": "x"})
        offset = meta.offset()
        assert offset is not None
        assert offset >= 0
    finally:
        await producer.close()
    [record] = read_topic(kafka, "probe")
    assert (record.key(), record.value(), record.headers()) == (b"acme/SKU-1", b"hello", [("type", b"x")])


def test_broker_jars_are_cached_after_the_first_resolution(kafka_endpoint: KafkaEndpoint) -> None:
    if not kafka_endpoint.source.startswith("jvm"):
        pytest.skip(f"Kafka came from {kafka_endpoint.source}, not from the Maven-resolved jars")
    started = time.monotonic()
    libs, version = ensure_broker_jars()
    assert time.monotonic() - started < 1.0, "a second resolution must not run Maven again"
    assert (libs / f"kafka_2.13-{version}.jar").exists()


def test_a_cluster_id_that_starts_with_a_dash_is_formatted(kafka_endpoint: KafkaEndpoint) -> None:
    """One random id in 64 starts with '-': the storage tool must not read it as an option."""
    if not kafka_endpoint.source.startswith("jvm"):
        pytest.skip(f"Kafka came from {kafka_endpoint.source}, not from the Maven-resolved jars")
    libs, version = ensure_broker_jars()
    broker = JvmKafkaBroker(libs, version)
    try:
        bootstrap = broker.start(cluster_id="-dashFirstClusterId0A")
        assert broker_answers_metadata(bootstrap)
    finally:
        broker.stop()


def test_migrations_apply_once_and_refuse_edited_history(empty_database: str) -> None:
    assert migrate(empty_database) == [f"{m.version:04d}_{m.name}" for m in shipped_migrations()] + [
        f"R_{r.name}" for r in shipped_repeatables()
    ]
    assert migrate(empty_database) == []
    # A repeatable file whose checksum differs from the one applied last (a new version) is re-applied.
    with psycopg.connect(empty_database) as conn:
        conn.execute("UPDATE schema_repeatables SET checksum = 'older' WHERE name = 'master_rules'")
    assert migrate(empty_database) == ["R_master_rules"]
    assert migrate(empty_database) == []
    with psycopg.connect(empty_database) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(empty_database)


def test_the_database_itself_refuses_a_negative_count(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO inventory (tenant, sku, available) VALUES ('acme', 'SKU-1', 1)")
        conn.commit()
        with pytest.raises(psycopg.errors.CheckViolation, match="inventory_never_negative"):
            conn.execute("UPDATE inventory SET available = available - 2")


def test_postgres_runs_from_the_shared_copy_when_its_user_cannot_reach_the_wheel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under root the server runs as `nobody`: a wheel in a 0700 directory is copied with its libraries."""
    if os.geteuid() != 0 or os.environ.get("DATABASE_URL"):
        pytest.skip("the copy is only made when running as root without DATABASE_URL")
    monkeypatch.setattr(postgres, "_others_can_reach", lambda _path: False)
    server = postgres.EmbeddedPostgres()
    try:
        url = server.start()
        assert postgres.server_version(url).startswith("18")
    finally:
        server.stop()
