"""A complete local pipeline for the demo and the benchmarks.

Real Kafka and PostgreSQL (found or started), a fresh database and topic prefix of its own (removed
afterwards, so an existing cluster or server is left as it was), the Shopify simulator on loopback, and
ingest, processor and fan-out as separate processes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from channels.connection import Connection, to_toml
from channels.shopify.simulator import ShopifySimulator, sample_connection
from channels.simulation import serve
from schemas import TOPICS, inventory_events
from schemas.base import partition_key
from schemas.inventory_events import OrderPlaced, StockCounted
from stocksync.db import migrate
from stocksync.kafka import AsyncProducer, delete_prefixed_topics, ensure_topics, producer_config
from stocksync.local.kafka import KafkaEndpoint, local_kafka
from stocksync.local.postgres import PostgresEndpoint, create_database, drop_database, local_postgres
from stocksync.local.process import make_run_dir, wait_until
from stocksync.local.stack import Stack, StackConfig
from stocksync.settings import KafkaSettings

Say = Callable[[str], None]


@dataclass
class World:
    kafka_endpoint: KafkaEndpoint
    pg_endpoint: PostgresEndpoint
    kafka: KafkaSettings
    database_url: str
    simulator: ShopifySimulator
    connection: Connection
    stack: Stack
    producer: AsyncProducer

    def item(self, sku: str) -> str:
        ref = self.connection.listings[sku].inventory_ref
        if ref is None:
            raise KeyError(sku)
        return ref

    async def publish(self, events: Iterable[OrderPlaced | StockCounted]) -> None:
        """Put events on inventory.events directly (as the admin API will), acknowledged by Kafka."""
        topic = self.kafka.topic(inventory_events.TOPIC)
        await asyncio.gather(
            *(
                self.producer.send(topic, inventory_events.encode(e), key=partition_key(e.tenant, e.sku))
                for e in events
            )
        )

    async def seed(self, counts: dict[str, int]) -> None:
        now = datetime.now(UTC)
        await self.publish(
            StockCounted(
                event_id=f"admin:count:{uuid.uuid4().hex}",
                tenant=self.connection.tenant,
                sku=sku,
                quantity=qty,
                occurred_at=now,
                received_at=now,
            )
            for sku, qty in counts.items()
        )

    def master(self) -> dict[str, tuple[int, int]]:
        """SKU -> (available, version) from the master record."""
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT sku, available, version FROM inventory WHERE tenant = %s", (self.connection.tenant,)
            ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}


@asynccontextmanager
async def local_world(
    *, skus: tuple[str, ...], label: str = "demo", say: Say = lambda _m: None
) -> AsyncIterator[World]:
    """Everything needed to run orders through the real pipeline; all of it removed when the block ends."""
    with ExitStack() as cleanup:
        pg = cleanup.enter_context(local_postgres())
        say(f"PostgreSQL: {pg.describe()}")
        kafka_endpoint = cleanup.enter_context(local_kafka())
        say(f"Kafka: {kafka_endpoint.describe()}")
        db_name, database_url = create_database(pg.url, label)
        cleanup.callback(drop_database, pg.url, db_name)
        migrate(database_url)
        kafka = KafkaSettings(
            bootstrap_servers=kafka_endpoint.bootstrap_servers,
            topic_prefix=f"{label}-{uuid.uuid4().hex[:8]}.",
            partitions=4,
        )
        ensure_topics(kafka, TOPICS)
        cleanup.callback(delete_prefixed_topics, kafka)
        run_dir = make_run_dir(label)
        simulator = ShopifySimulator(access_token="")
        async with serve(simulator.app()) as base_url:
            connection = sample_connection(base_url, skus=skus, conn_id=f"shop-{label}", tenant=label)
            simulator.access_token = connection.access_token.get_secret_value()
            for sku in skus:
                simulator.available[connection.listings[sku].inventory_ref or sku] = 0
            connections_file = Path(run_dir) / "connections.toml"
            connections_file.write_text(to_toml([connection]))
            stack = Stack(
                StackConfig(
                    bootstrap_servers=kafka.bootstrap_servers,
                    database_url=database_url,
                    connections_file=connections_file,
                    topic_prefix=kafka.topic_prefix,
                    partitions=kafka.partitions,
                ),
                run_dir=run_dir,
            )
            producer = AsyncProducer(producer_config(kafka))
            try:
                stack.start_all()
                say("services: ingest, processor, fanout-shopify started as processes; waiting for them")
                await asyncio.to_thread(wait_until, stack.ready, timeout_s=60, what="the ingest gateway")
                yield World(kafka_endpoint, pg, kafka, database_url, simulator, connection, stack, producer)
            finally:
                await producer.close()
                # stopped off the event loop, which keeps serving the simulator to the stopping fan-out
                await asyncio.to_thread(stack.close)
