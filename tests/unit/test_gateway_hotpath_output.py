"""The gateway's hot path, made cheaper, says exactly what the straightforward code said: the same record
bytes, keys and headers, the same JSON answers, the same metric samples, the same bound log keys."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from channels.connection import ConnectionRegistry
from channels.errors import PayloadError
from channels.payload import LineRefused, Lines, LinesRefused, RefusedLine
from ingest.app import _accepted, build_app
from ingest.settings import IngestSettings
from lab.marketplaces.shopify import order_webhook, sample_connection
from schemas import inventory_events
from schemas.base import partition_key
from schemas.inventory_events import OrderCancelled, OrderPlaced, StockCounted, StockObserved, StockReceived
from stocksync import logs
from stocksync.kafka import AsyncProducer
from stocksync.settings import KafkaSettings

Client = TestClient[web.Request, web.Application]

SKUS = ("SKU-1", "Säge 2/Ω", 'quote"back\\slash')
CONN = sample_connection("http://127.0.0.1:1", skus=SKUS)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class RecordingProducer(AsyncProducer):
    """Takes every record as acknowledged at once and keeps it (topic, key, value, headers)."""

    def __init__(self) -> None:  # no librdkafka producer: nothing is sent anywhere
        self.records: list[tuple[str, bytes | None, bytes, dict[str, str]]] = []

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        self.records.append((topic, key, value, dict(headers or {})))


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Client, RecordingProducer, CollectorRegistry]]:
    producer, registry = RecordingProducer(), CollectorRegistry()
    settings = IngestSettings(
        kafka=KafkaSettings(topic_prefix="t-"), connections_table=False, connections_file=None
    )
    app = build_app(settings, connections=ConnectionRegistry([CONN]), producer=producer, registry=registry)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    yield client, producer, registry
    await client.close()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_a_signed_order_makes_the_records_and_answer_the_plain_pydantic_path_makes(
    gateway: tuple[Client, RecordingProducer, CollectorRegistry],
) -> None:
    client, producer, registry = gateway
    lines = [
        {"id": 10 + n, "variant_id": int(CONN.listings[sku].listing_id), "sku": sku, "quantity": n + 1}
        for n, sku in enumerate(SKUS)
    ]
    body, headers = order_webhook(CONN, 7001, lines, NOW)
    response = await client.post(f"/webhooks/{CONN.id}", data=body, headers=headers)
    assert response.status == 200
    received = json.loads(producer.records[0][2])["received_at"]

    expected = [
        OrderPlaced(
            event_id=f"{CONN.id}:order:7001:line:{line['id']}",
            tenant=CONN.tenant,
            sku=str(line["sku"]),
            quantity=int(str(line["quantity"])),
            connection_id=CONN.id,
            channel="shopify",
            order_id="7001",
            line_id=str(line["id"]),
            occurred_at=NOW,
            received_at=datetime.fromisoformat(received),
        )
        for line in lines
    ]
    assert producer.records == [
        (
            "t-inventory.events",
            partition_key(e.tenant, e.sku),
            e.model_dump_json().encode(),
            {"channel": "shopify", "type": "order_placed"},
        )
        for e in expected
    ]
    straightforward = web.json_response({"status": "accepted", "events": [e.event_id for e in expected]})
    assert await response.read() == straightforward.body
    assert response.headers["Content-Type"] == straightforward.headers["Content-Type"]

    assert sample(registry, "webhook_requests_total", channel="shopify", outcome="accepted") == 1
    assert sample(registry, "ingest_events_published_total", channel="shopify") == len(lines)
    assert sample(registry, "webhook_ack_seconds_count", channel="shopify") == 1
    # A second webhook counts on the same series (children looked up once, still the registry's own).
    body, headers = order_webhook(CONN, 7002, lines[:1], NOW)
    assert (await client.post(f"/webhooks/{CONN.id}", data=body, headers=headers)).status == 200
    forged = {**headers, "X-Shopify-Hmac-SHA256": "AAAA"}
    assert (await client.post(f"/webhooks/{CONN.id}", data=body, headers=forged)).status == 401
    assert sample(registry, "webhook_requests_total", channel="shopify", outcome="accepted") == 2
    assert sample(registry, "webhook_requests_total", channel="shopify", outcome="unauthorized") == 1
    assert sample(registry, "ingest_events_published_total", channel="shopify") == len(lines) + 1
    assert sample(registry, "webhook_ack_seconds_count", channel="shopify") == 2
    exposition = generate_latest(registry).decode()
    assert 'webhook_requests_total{channel="shopify",outcome="accepted"} 2.0' in exposition


ids = st.lists(st.text(min_size=0, max_size=40), max_size=4)


@given(ids)
def test_the_accepted_answer_is_json_response_to_the_byte(event_ids: list[str]) -> None:
    events = [
        StockObserved.model_construct(
            event_id=i,
            tenant="t",
            sku="s",
            quantity=0,
            connection_id="c",
            channel="shopify",
            occurred_at=NOW,
            received_at=NOW,
        )
        for i in event_ids
    ]
    mine, plain = _accepted(events), web.json_response({"status": "accepted", "events": event_ids})
    assert mine.body == plain.body
    assert mine.status == plain.status
    assert dict(mine.headers) == dict(plain.headers)


@given(
    sku=st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), min_size=1, max_size=20),
    order=st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=20),
    quantity=st.integers(1, 2**31 - 1),
)
def test_encode_is_model_dump_json_as_utf8(sku: str, order: str, quantity: int) -> None:
    sale: dict[str, Any] = {
        "event_id": f"c:order:{order}:line:1",
        "tenant": "acme",
        "sku": sku,
        "quantity": quantity,
        "connection_id": "c",
        "channel": "shopify",
        "order_id": order,
        "line_id": "1",
        "occurred_at": datetime(2026, 1, 2, 3, 4, 5, 6789, tzinfo=UTC),
        "received_at": NOW,
    }
    events: list[inventory_events.AnyInventoryEvent] = [
        OrderPlaced(**sale),
        OrderCancelled(**sale, sale_event_id="c:order:x"),
        StockObserved(**{k: v for k, v in sale.items() if k not in ("order_id", "line_id")}),
        StockCounted(**{k: v for k, v in sale.items() if k not in ("order_id", "line_id", "channel")}),
        StockReceived(
            **{k: v for k, v in sale.items() if k not in ("order_id", "line_id", "channel")}, reference=order
        ),
    ]
    for event in events:
        assert inventory_events.encode(event) == event.model_dump_json().encode()
        assert inventory_events.decode(inventory_events.encode(event)) == event


def test_bound_keys_nest_restore_and_refuse_unknown_ones(caplog: pytest.LogCaptureFixture) -> None:
    formatter = logs.JsonFormatter("ingest")
    log = logging.getLogger("hotpath")

    def keys() -> dict[str, str]:
        record = log.makeRecord("hotpath", logging.INFO, __file__, 1, "m", (), None)
        line = json.loads(formatter.format(record))
        return {k: line[k] for k in logs.KEYS if k in line}

    with logs.bound(connection="a", sku=None):
        assert keys() == {"connection": "a"}
        inside: list[dict[str, str]] = []

        def fail_inside() -> None:
            with logs.bound(tenant="t", connection="b"):
                inside.append(keys())
                raise RuntimeError

        with pytest.raises(RuntimeError):
            fail_inside()
        assert inside == [{"connection": "b", "tenant": "t"}]
        assert keys() == {"connection": "a"}
    assert keys() == {}
    with pytest.raises(ValueError, match=r"unknown log keys \['order'\]"), logs.bound(order="1"):
        pass
    assert keys() == {}


def test_collect_keeps_refused_lines_and_lets_everything_else_through() -> None:
    lines = Lines()
    with lines.collect():
        raise LineRefused("line 1", "quantity 0 is not a positive whole number")
    with lines.collect():
        raise LinesRefused([], [RefusedLine("line 1", "quantity 0 is not a positive whole number")])
    with lines.collect():
        raise LinesRefused([], [RefusedLine("line 2", "sku refused")])
    assert lines.refused == [
        RefusedLine("line 1", "quantity 0 is not a positive whole number"),
        RefusedLine("line 2", "sku refused"),
    ]
    with pytest.raises(PayloadError, match="whole body"), lines.collect():
        raise PayloadError("whole body")
    with pytest.raises(KeyboardInterrupt), lines.collect():
        raise KeyboardInterrupt
    with pytest.raises(LinesRefused) as refused:
        lines.result()
    assert [str(r) for r in refused.value.refused] == [
        "line 1: quantity 0 is not a positive whole number",
        "line 2: sku refused",
    ]
