"""The broker goes away and comes back: the gateway answers 503 meanwhile, never 200; the attempts made while
it was down are given up, never delivered late; the channel's retry after the broker returns is accepted,
and the sale reaches the master record exactly once.

A retry answered 503 while the broker is still starting may have reached it all the same (a produce request
in flight when the ack timeout ran out cannot be called back): a second copy in the topic is then possible,
and the processor's event-id claim makes it a duplicate. The test applies the topic with the processor's own
rules to show that.

This test starts a broker of its own (the JVM one, whatever KAFKA_BOOTSTRAP_SERVERS says), since it stops
it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from psycopg import AsyncConnection

from channels.connection import ConnectionRegistry
from ingest.app import build_app
from ingest.settings import IngestSettings
from lab.local.kafka import JvmKafkaBroker, ensure_broker_jars
from lab.marketplaces.shopify import order_webhook, sample_connection
from processor.store import apply_batch
from schemas import TOPICS, inventory_events
from schemas.inventory_events import AnyInventoryEvent, StockCounted
from stocksync.kafka import ensure_topics
from stocksync.settings import KafkaSettings
from tests.helpers import eventually, read_topic

pytestmark = pytest.mark.integration

CONN = sample_connection("http://127.0.0.1:1", skus=("SKU-1",))


@pytest.fixture(scope="module")
def own_broker() -> Iterator[JvmKafkaBroker]:
    libs, version = ensure_broker_jars()
    broker = JvmKafkaBroker(libs, version, partitions=1, heap="384m")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def sale(order_id: int) -> tuple[bytes, dict[str, str]]:
    line = {"id": 1, "variant_id": int(CONN.listings["SKU-1"].listing_id), "sku": "SKU-1", "quantity": 1}
    return order_webhook(CONN, order_id, [line], datetime.now(UTC))


async def test_broker_down_means_503_and_the_retry_after_it_returns_lands_once(
    own_broker: JvmKafkaBroker, database_url: str
) -> None:
    kafka = KafkaSettings(bootstrap_servers=own_broker.bootstrap, topic_prefix="outage-", partitions=1)
    ensure_topics(kafka, TOPICS)
    settings = IngestSettings(kafka=kafka, ack_timeout_s=1.0, connections_table=False)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(build_app(settings, connections=ConnectionRegistry([CONN])))
    )
    await client.start_server()

    async def accepted(body: bytes, headers: dict[str, str]) -> bool:
        return (await client.post("/webhooks/shop-acme", data=body, headers=headers)).status == 200

    try:
        # A new broker's idempotence coordinator takes a moment to load: until then, 503s too.
        await eventually(
            lambda: accepted(*sale(1)), timeout_s=60, interval_s=0.5, what="a first webhook accepted"
        )

        own_broker.halt()
        body, headers = sale(2)
        answers = []
        for _ in range(3):  # the channel retrying while the broker is down: never a 200
            resp = await client.post("/webhooks/shop-acme", data=body, headers=headers)
            answers.append(resp.status)
            assert resp.headers.get("Retry-After")
        assert answers == [503, 503, 503]

        resumed_ms = int(time.time() * 1000)
        own_broker.resume()

        async def retry_accepted() -> bool:
            resp = await client.post("/webhooks/shop-acme", data=body, headers=headers)
            return resp.status == 200

        await eventually(
            retry_accepted, timeout_s=60, interval_s=1.0, what="the retry accepted once Kafka is back"
        )
    finally:
        await client.close()

    records = read_topic(kafka, inventory_events.TOPIC)
    events = [inventory_events.decode(m.value() or b"") for m in records]
    second = [m for m, e in zip(records, events, strict=True) if e.event_id == "shop-acme:order:2:line:1"]
    assert {e.event_id for e in events} == {"shop-acme:order:1:line:1", "shop-acme:order:2:line:1"}
    # The three attempts made while the broker was down were given up by the producer: every copy of the
    # sale in the topic was produced after the broker came back.
    assert second
    assert all(m.timestamp()[1] >= resumed_ms for m in second), [m.timestamp() for m in second]
    # However many copies, the master takes the sale once.
    await seed_and_apply(database_url, events)


async def seed_and_apply(database_url: str, events: list[AnyInventoryEvent]) -> None:
    counted = StockCounted(
        event_id="admin:count:outage",
        tenant=CONN.tenant,
        sku="SKU-1",
        quantity=10,
        occurred_at=datetime.now(UTC) - timedelta(hours=1),
        received_at=datetime.now(UTC),
    )
    async with await AsyncConnection.connect(database_url) as conn:
        async with conn.transaction():
            results = await apply_batch(conn, [counted, *events])
        row = await (await conn.execute("SELECT available FROM inventory WHERE sku = 'SKU-1'")).fetchone()
    outcomes = [(r.event.event_id, r.outcome) for r in results[1:]]
    assert [o for i, o in outcomes if i.endswith("order:2:line:1")].count("applied") == 1, outcomes
    assert row == (8,)  # 10 counted, orders 1 and 2 once each
