"""The admin API on a real gateway, broker and database: counts and receipts go the webhooks' way, a SKU
can be read back, and a tenant can act for nobody else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from psycopg import AsyncConnection

from channels.connection import ConnectionRegistry, TenantToken, token_digest
from ingest.app import build_app
from ingest.settings import IngestSettings
from lab.marketplaces.shopify import order_webhook, sample_connection
from processor.store import apply_batch
from schemas import TOPICS, inventory_events
from schemas.inventory_events import StockCounted, StockReceived
from stocksync.kafka import ensure_topics
from stocksync.settings import KafkaSettings, PostgresSettings
from tests.helpers import read_topic

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]

ACME, GLOBEX = "tok-acme-0123456789", "tok-globex-0123456789"
ACME_SHOP = sample_connection("http://127.0.0.1:1", skus=("SKU-1",), conn_id="shop-acme", tenant="acme")


@pytest.fixture
async def client(kafka: KafkaSettings, database_url: str) -> AsyncIterator[Client]:
    ensure_topics(kafka, TOPICS)
    registry = ConnectionRegistry(
        [ACME_SHOP],
        [
            TenantToken(id="acme", admin_token_sha256=token_digest(ACME)),
            TenantToken(id="globex", admin_token_sha256=token_digest(GLOBEX)),
        ],
    )
    settings = IngestSettings(
        kafka=kafka, postgres=PostgresSettings(database_url=database_url), connections_table=False
    )
    c: Client = TestClient(TestServer(build_app(settings, connections=registry)))
    await c.start_server()
    yield c
    await c.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def apply_published(
    kafka: KafkaSettings, database_url: str
) -> list[inventory_events.AnyInventoryEvent]:
    """Apply what the gateway published, as the processor would (the processor itself is tested elsewhere)."""
    events = [inventory_events.decode(m.value() or b"") for m in read_topic(kafka, inventory_events.TOPIC)]
    async with await AsyncConnection.connect(database_url) as conn, conn.transaction():
        await apply_batch(conn, events)
    return events


async def test_counts_and_receipts_are_published_applied_and_read_back(
    client: Client, kafka: KafkaSettings, database_url: str
) -> None:
    resp = await client.post(
        "/v1/stock/acme/SKU-1/counts",
        json={"quantity": 10, "as_of": "2026-11-23T12:00:00+00:00", "count_id": "cycle-7"},
        headers=bearer(ACME),
    )
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["event_id"] == "admin:acme:count:cycle-7"
    receipt = {"quantity": 5, "reference": "PO-1", "received_at": "2026-11-23T13:00:00+00:00"}
    for _ in range(2):  # a client retry with the same Idempotency-Key is the same event
        resp = await client.post(
            "/v1/stock/acme/SKU-1/receipts", json=receipt, headers={**bearer(ACME), "Idempotency-Key": "r-1"}
        )
        assert resp.status == 202
    events = await apply_published(kafka, database_url)
    assert [type(e) for e in events] == [StockCounted, StockReceived, StockReceived]
    assert {e.event_id for e in events[1:]} == {"admin:acme:receipt:r-1"}
    first = events[0]
    assert (first.tenant, first.sku, first.quantity) == ("acme", "SKU-1", 10)
    assert first.occurred_at == datetime(2026, 11, 23, 12, tzinfo=UTC)

    resp = await client.get("/v1/stock/acme/SKU-1", headers=bearer(ACME))
    assert resp.status == 200
    body = await resp.json()
    assert (body["available"], body["version"]) == (15, 2)  # the repeated receipt applied once
    assert body["last_change"]["event_id"] == "admin:acme:receipt:r-1"
    assert body["last_change"]["delta"] == 5
    missing = await client.get("/v1/stock/acme/SKU-404", headers=bearer(ACME))
    assert missing.status == 404
    assert "record a count or a receipt first" in (await missing.json())["error"]


async def test_a_tenant_cannot_touch_another_tenants_stock(
    client: Client, kafka: KafkaSettings, database_url: str
) -> None:
    for method, path, payload in (
        ("POST", "/v1/stock/acme/SKU-1/counts", {"quantity": 0}),
        ("POST", "/v1/stock/acme/SKU-1/receipts", {"quantity": 99}),
        ("GET", "/v1/stock/acme/SKU-1", None),
    ):
        resp = await client.request(method, path, json=payload, headers=bearer(GLOBEX))
        assert resp.status == 403, path
        assert "belongs to tenant 'globex'" in (await resp.json())["error"]
        for headers in ({}, bearer("not-a-token"), {"Authorization": f"Basic {ACME}"}):
            denied = await client.request(method, path, json=payload, headers=headers)
            assert denied.status == 401
            assert denied.headers["WWW-Authenticate"].startswith("Bearer")
    # A connection acts only for its own tenant too: acme's shop cannot sell globex's SKU. That listing is
    # not in acme's mapping, so the webhook is quarantined, never published as a sale for anyone.
    body, headers = order_webhook(
        ACME_SHOP, 1, [{"id": 1, "variant_id": 999, "sku": "GLOBEX-1", "quantity": 1}], datetime.now(UTC)
    )
    resp = await client.post("/webhooks/shop-acme", data=body, headers=headers)
    assert (resp.status, (await resp.json())["status"]) == (200, "quarantined")
    assert read_topic(kafka, inventory_events.TOPIC, timeout_s=5) == []
    # The one accepted request, for acme by acme, shows nothing leaked into the topic before it.
    ok = await client.post("/v1/stock/acme/SKU-1/receipts", json={"quantity": 1}, headers=bearer(ACME))
    assert ok.status == 202
    [only] = read_topic(kafka, inventory_events.TOPIC)
    assert inventory_events.decode(only.value() or b"").tenant == "acme"
    with psycopg.connect(database_url) as db:
        assert db.execute("SELECT count(*) FROM inventory").fetchone() == (0,)


async def test_bad_requests_are_explained_and_publish_nothing(client: Client, kafka: KafkaSettings) -> None:
    """A body that is not JSON is 400; a JSON body with a value out of range, of the wrong type or an
    unknown field is 422, naming the field and what it allows."""
    for path, payload, problem in (
        ("counts", {"quantity": -1}, "quantity: must be a whole number between 0 and 2147483647 (got -1)"),
        (
            "counts",
            {"quantity": 3_000_000_000},
            "quantity: must be a whole number between 0 and 2147483647 (got 3000000000)",
        ),
        ("counts", {"quantity": "lots"}, "quantity: must be a whole number between 0 and 2147483647"),
        ("counts", {"quantity": 3, "surprise": 1}, "surprise: not a field of this request"),
        ("counts", {"quantity": 3, "as_of": "yesterday"}, "as_of: "),
        ("counts", [3], "body: must be a JSON object"),
        ("receipts", {"quantity": 0}, "quantity: must be a whole number between 1 and 2147483647 (got 0)"),
        (
            "receipts",
            {"quantity": 2_147_483_648},
            "quantity: must be a whole number between 1 and 2147483647 (got 2147483648)",
        ),
    ):
        resp = await client.post(f"/v1/stock/acme/SKU-1/{path}", json=payload, headers=bearer(ACME))
        assert resp.status == 422, (payload, await resp.text())
        assert problem in (await resp.json())["error"], payload
    resp = await client.post("/v1/stock/acme/SKU-1/counts", data=b"{not json", headers=bearer(ACME))
    assert resp.status == 400
    assert "not JSON" in (await resp.json())["error"]
    assert read_topic(kafka, inventory_events.TOPIC, timeout_s=5) == []
    # The bounds themselves are accepted.
    for path, quantity in (("counts", 0), ("counts", 2_147_483_647), ("receipts", 2_147_483_647)):
        resp = await client.post(
            f"/v1/stock/acme/SKU-1/{path}", json={"quantity": quantity}, headers=bearer(ACME)
        )
        assert resp.status == 202, await resp.text()
    metrics = await (await client.get("/metrics")).text()
    assert 'admin_requests_total{action="count",outcome="invalid"} 7.0' in metrics
