"""The broker goes away and comes back: the gateway answers 503 meanwhile, never 200, and the channel's retry
after the broker returns is accepted and lands in the topic exactly once.

This test starts a broker of its own (the JVM one, whatever KAFKA_BOOTSTRAP_SERVERS says), since it stops
it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.connection import ConnectionRegistry
from channels.shopify.simulator import order_webhook, sample_connection
from ingest.app import build_app
from ingest.settings import IngestSettings
from schemas import TOPICS, inventory_events
from stocksync.kafka import ensure_topics
from stocksync.local.kafka import JvmKafkaBroker, ensure_broker_jars
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
    own_broker: JvmKafkaBroker,
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

        own_broker.resume()

        async def retry_accepted() -> bool:
            resp = await client.post("/webhooks/shop-acme", data=body, headers=headers)
            return resp.status == 200

        await eventually(
            retry_accepted, timeout_s=60, interval_s=1.0, what="the retry accepted once Kafka is back"
        )
    finally:
        await client.close()

    ids = [
        inventory_events.decode(m.value() or b"").event_id for m in read_topic(kafka, inventory_events.TOPIC)
    ]
    # The three 503'd attempts were given up by the producer, not delivered late beside the accepted retry.
    assert sorted(ids) == ["shop-acme:order:1:line:1", "shop-acme:order:2:line:1"]
