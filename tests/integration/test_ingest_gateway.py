"""The gateway against a real broker: 200 only once durable, and a clear answer for every bad input."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from channels.connection import ConnectionRegistry
from channels.registry import SPECS
from ingest.app import build_app
from ingest.settings import IngestSettings
from lab.local.process import free_port
from lab.marketplaces.shopify import order_webhook, sample_connection
from schemas import TOPICS, inventory_events, quarantine
from schemas.inventory_events import OrderCancelled, OrderPlaced
from stocksync import logs
from stocksync.kafka import ensure_topics
from stocksync.settings import KafkaSettings
from tests.helpers import read_topic

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]

CONN = sample_connection("http://127.0.0.1:1", skus=("SKU-1", "SKU-2", "SKU-3"))
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def sale_webhook(order_id: int = 1, quantity: int = 2) -> tuple[bytes, dict[str, str]]:
    return order_webhook(
        CONN, order_id, [{"id": 1, "variant_id": 4001, "sku": "SKU-1", "quantity": quantity}], NOW
    )


async def gateway(kafka: KafkaSettings, **overrides: object) -> Client:
    settings = IngestSettings(kafka=kafka, **overrides)  # type: ignore[arg-type]
    client: Client = TestClient(TestServer(build_app(settings, connections=ConnectionRegistry([CONN]))))
    await client.start_server()
    return client


@pytest.fixture
async def client(kafka: KafkaSettings) -> AsyncIterator[Client]:
    ensure_topics(kafka, TOPICS)
    c = await gateway(kafka, max_body_bytes=4096)
    yield c
    await c.close()


async def test_accepted_webhook_is_in_kafka_keyed_by_tenant_and_sku(
    client: Client, kafka: KafkaSettings
) -> None:
    body, headers = sale_webhook()
    resp = await client.post("/webhooks/shop-acme", data=body, headers=headers)
    assert resp.status == 200
    assert (await resp.json())["events"] == ["shop-acme:order:1:line:1"]
    [record] = read_topic(kafka, inventory_events.TOPIC)  # already durable when 200 was answered
    assert record.key() == b"acme/SKU-1"
    assert dict(record.headers() or []) == {"channel": b"shopify", "type": b"order_placed"}
    event = inventory_events.decode(record.value() or b"")
    assert (event.event_id, event.sku, event.quantity) == ("shop-acme:order:1:line:1", "SKU-1", 2)


async def test_forged_unknown_and_oversized_requests_publish_nothing(
    client: Client,
    kafka: KafkaSettings,
) -> None:
    body, headers = sale_webhook()
    forged = {**headers, "X-Shopify-Hmac-SHA256": base64.b64encode(b"x" * 32).decode()}
    resp = await client.post("/webhooks/shop-acme", data=body, headers=forged)
    assert resp.status == 401
    assert "signature" in (await resp.json())["error"]
    unsigned = {k: v for k, v in headers.items() if k != "X-Shopify-Hmac-SHA256"}
    assert (await client.post("/webhooks/shop-acme", data=body, headers=unsigned)).status == 401
    resp = await client.post("/webhooks/nobody", data=body, headers=headers)
    assert resp.status == 404
    assert "nobody" in (await resp.json())["error"]
    resp = await client.post("/webhooks/shop-acme", data=b"x" * 5000, headers=headers)
    assert resp.status == 413
    assert read_topic(kafka, inventory_events.TOPIC) == []
    assert read_topic(kafka, quarantine.TOPIC) == []
    metrics = await (await client.get("/metrics")).text()
    assert 'webhook_requests_total{channel="shopify",outcome="unauthorized"} 2.0' in metrics
    assert 'webhook_requests_total{channel="shopify",outcome="too_large"} 1.0' in metrics


async def test_signed_but_unusable_body_is_quarantined_verbatim(client: Client, kafka: KafkaSettings) -> None:
    body, headers = sale_webhook(quantity=0)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(logs.JsonFormatter("ingest"))
    logging.getLogger("ingest.app").addHandler(handler)
    try:
        resp = await client.post("/webhooks/shop-acme", data=body, headers=headers)
    finally:
        logging.getLogger("ingest.app").removeHandler(handler)
    [line] = [json.loads(x) for x in lines.getvalue().splitlines()]
    assert (line["level"], line["connection"]) == ("WARNING", "shop-acme")  # the SRE's correlation key
    assert resp.status == 200
    answer = await resp.json()
    assert answer["status"] == "quarantined"
    assert "positive whole number" in answer["reason"]
    assert read_topic(kafka, inventory_events.TOPIC) == []
    [record] = read_topic(kafka, quarantine.TOPIC)
    kept = quarantine.WebhookQuarantined.model_validate_json(record.value() or b"")
    assert base64.b64decode(kept.body_b64) == body
    assert kept.connection_id == "shop-acme"
    assert json.loads(base64.b64decode(kept.body_b64))["line_items"][0]["quantity"] == 0


async def test_kafka_unreachable_answers_503_so_the_channel_retries() -> None:
    dead = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    client = await gateway(dead, ack_timeout_s=0.5)
    try:
        body, headers = sale_webhook()
        resp = await client.post("/webhooks/shop-acme", data=body, headers=headers)
        assert resp.status == 503
        assert resp.headers["Retry-After"]
        assert "retry" in (await resp.json())["error"]
    finally:
        await client.close()


async def test_a_normaliser_that_breaks_still_loses_nothing(
    client: Client, kafka: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> list[OrderPlaced | OrderCancelled]:
        raise KeyError("surprise")

    monkeypatch.setitem(SPECS, "shopify", replace(SPECS["shopify"], normalise=broken))
    body, headers = sale_webhook()
    resp = await client.post("/webhooks/shop-acme", data=body, headers=headers)
    assert resp.status == 200
    assert "normaliser failed" in (await resp.json())["reason"]
    [record] = read_topic(kafka, quarantine.TOPIC)
    assert (
        base64.b64decode(quarantine.WebhookQuarantined.model_validate_json(record.value() or b"").body_b64)
        == body
    )


async def test_a_line_above_the_largest_quantity_is_quarantined_and_its_neighbour_published(
    client: Client, kafka: KafkaSettings
) -> None:
    """A correctly signed order whose line 1 asks for 3,000,000,000 units (PostgreSQL's integer holds
    2,147,483,647): line 2 is published, the body is quarantined naming line 1 and the range, then 200."""
    body, headers = order_webhook(
        CONN,
        7,
        [
            {"id": 1, "variant_id": 4001, "sku": "SKU-1", "quantity": 3_000_000_000},
            {"id": 2, "variant_id": 4002, "sku": "SKU-2", "quantity": 1},
        ],
        NOW,
    )
    resp = await client.post("/webhooks/shop-acme", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    reason = "quantity 3000000000 is above the largest allowed, 2147483647"
    assert answer == {
        "status": "accepted",
        "events": ["shop-acme:order:7:line:2"],
        "refused": [{"line": "line 1", "reason": reason}],
    }
    # Both durable before the 200: no waiting needed.
    [record] = read_topic(kafka, inventory_events.TOPIC)
    event = inventory_events.decode(record.value() or b"")
    assert (event.event_id, event.sku, event.quantity) == ("shop-acme:order:7:line:2", "SKU-2", 1)
    [kept] = read_topic(kafka, quarantine.TOPIC)
    quarantined = quarantine.WebhookQuarantined.model_validate_json(kept.value() or b"")
    assert base64.b64decode(quarantined.body_b64) == body
    assert quarantined.reason == f"1 line(s) refused, the other lines published: line 1: {reason}"
    assert quarantined.headers["X-Shopify-Topic"] == "orders/create"
    metrics = await (await client.get("/metrics")).text()
    assert 'webhook_requests_total{channel="shopify",outcome="quarantined"} 1.0' in metrics
    assert 'webhook_lines_quarantined_total{channel="shopify"} 1.0' in metrics
    assert 'ingest_events_published_total{channel="shopify"} 1.0' in metrics


async def test_two_signature_headers_are_refused_whichever_comes_first(
    client: Client, kafka: KafkaSettings
) -> None:
    body, headers = sale_webhook()
    valid = headers["X-Shopify-Hmac-SHA256"]
    others = [(k, v) for k, v in headers.items() if k != "X-Shopify-Hmac-SHA256"]
    for pair in ((valid, "forged"), ("forged", valid), (valid, valid)):
        twice = CIMultiDict([*others, *(("X-Shopify-Hmac-SHA256", v) for v in pair)])
        resp = await client.post("/webhooks/shop-acme", data=body, headers=twice)
        assert resp.status == 401, pair
        assert (await resp.json())["error"] == (
            "more than one X-Shopify-Hmac-SHA256 header; send exactly one"
        )
    assert (await client.post("/webhooks/shop-acme", data=body, headers=headers)).status == 200
    assert len(read_topic(kafka, inventory_events.TOPIC)) == 1
