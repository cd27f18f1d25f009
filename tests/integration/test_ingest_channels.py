"""The gateway with channels other than Shopify: a thin payload expanded from the channel's API (Etsy), a
signed thin payload that cannot be expanded (quarantined), WooCommerce's unsigned set-up ping, and on every
channel a signature header sent twice (401). Real Kafka; the channels are their simulators on loopback."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from channels.connection import Connection, ConnectionRegistry
from channels.etsy import webhooks as etsy_webhooks
from channels.registry import SPECS
from ingest.app import build_app
from ingest.settings import IngestSettings
from lab.local.process import free_port
from lab.marketplaces import BUILDERS
from lab.marketplaces.etsy import EtsySimulator
from lab.marketplaces.etsy import sample_connection as etsy_connection
from lab.marketplaces.serve import serve
from lab.marketplaces.woocommerce import sample_connection as woo_connection
from schemas import TOPICS, inventory_events, quarantine
from stocksync.kafka import ensure_topics
from stocksync.settings import KafkaSettings
from tests.helpers import read_topic

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


async def gateway(kafka: KafkaSettings, *connections: Connection) -> Client:
    ensure_topics(kafka, TOPICS)
    client: Client = TestClient(
        TestServer(build_app(IngestSettings(kafka=kafka), connections=ConnectionRegistry(connections)))
    )
    await client.start_server()
    return client


async def test_a_thin_etsy_webhook_is_expanded_from_the_receipt(kafka: KafkaSettings) -> None:
    port = free_port()
    conn = etsy_connection(f"http://127.0.0.1:{port}", skus=("MUG-1", "MUG-2"))
    sim = EtsySimulator.for_connection(conn, {"MUG-1": 10, "MUG-2": 10})
    client = await gateway(kafka, conn)
    try:
        async with serve(sim.app(), port=port):
            body, headers = sim.place_order(conn, 777, [("MUG-1", 2), ("MUG-2", 1)], datetime.now(UTC))
            resp = await client.post(f"/webhooks/{conn.id}", data=body, headers=headers)
            assert resp.status == 200, await resp.text()
            assert len((await resp.json())["events"]) == 2
        # The channel's API is gone now: the order cannot be fetched, so the webhook is refused for a retry.
        body, headers = sim.place_order(conn, 778, [("MUG-1", 1)], datetime.now(UTC))
        resp = await client.post(f"/webhooks/{conn.id}", data=body, headers=headers)
        assert resp.status == 503
    finally:
        await client.close()
    events = [inventory_events.decode(m.value() or b"") for m in read_topic(kafka, inventory_events.TOPIC)]
    assert sorted((e.sku, e.quantity) for e in events) == [("MUG-1", 2), ("MUG-2", 1)]
    assert all(e.tenant == conn.tenant and e.connection_id == conn.id for e in events)


async def test_woocommerce_set_up_ping_gets_200_and_publishes_nothing(kafka: KafkaSettings) -> None:
    conn = woo_connection("http://127.0.0.1:1", skus=("TEE-1",))
    client = await gateway(kafka, conn)
    try:
        ping = await client.post(
            f"/webhooks/{conn.id}",
            data=b"webhook_id=42",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert ping.status == 200
        forged = await client.post(
            f"/webhooks/{conn.id}", data=b'{"id": 1}', headers={"X-WC-Webhook-Topic": "order.created"}
        )
        assert forged.status == 401
    finally:
        await client.close()
    assert read_topic(kafka, inventory_events.TOPIC) == []


def etsy_signed(conn: Connection, payload: dict[str, object]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    msg_id, timestamp = "msg_quarantine_test", int(datetime.now(UTC).timestamp())
    secret = conn.webhook_secret.get_secret_value()
    return body, {
        etsy_webhooks.ID_HEADER: msg_id,
        etsy_webhooks.TIMESTAMP_HEADER: str(timestamp),
        etsy_webhooks.SIGNATURE_HEADER: etsy_webhooks.sign(secret, msg_id, timestamp, body),
    }


async def test_a_signed_thin_webhook_that_names_no_receipt_of_this_shop_is_quarantined(
    kafka: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = etsy_connection("http://127.0.0.1:1", skus=("MUG-1",))  # no API: nothing may be fetched
    client = await gateway(kafka, conn)
    try:
        other_shop = etsy_signed(
            conn, {"event_type": "order.paid", "resource_url": "https://x/v3/application/shops/1/receipts/2"}
        )
        resp = await client.post(f"/webhooks/{conn.id}", data=other_shop[0], headers=other_shop[1])
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["status"] == "quarantined"

        async def broken(*_args: object) -> bytes:
            raise TypeError("surprise")

        monkeypatch.setitem(SPECS, "etsy", replace(SPECS["etsy"], expand=broken))
        odd = etsy_signed(conn, {"event_type": "order.paid"})
        resp = await client.post(f"/webhooks/{conn.id}", data=odd[0], headers=odd[1])
        assert resp.status == 200
        assert (
            "the etsy order fetch failed on this body (TypeError: surprise)" in (await resp.json())["reason"]
        )
    finally:
        await client.close()
    assert read_topic(kafka, inventory_events.TOPIC) == []
    kept = [
        quarantine.WebhookQuarantined.model_validate_json(m.value() or b"")
        for m in read_topic(kafka, quarantine.TOPIC)
    ]
    assert [base64.b64decode(q.body_b64) for q in kept] == [other_shop[0], odd[0]]
    assert "shop" in kept[0].reason


@pytest.mark.parametrize("channel", sorted(SPECS))
async def test_a_request_with_two_of_a_signature_header_is_refused_on_every_channel(
    kafka: KafkaSettings, channel: str
) -> None:
    """Each channel's verify reads one copy of its headers; which one is an accident of the code, so the
    gateway refuses two copies of any of them (401, before verifying), the valid value first or second."""
    make_connection, make_simulator = BUILDERS[channel]
    conn = make_connection("http://127.0.0.1:1", skus=("SKU-1",), conn_id=f"{channel}-dup", tenant="acme")
    body, headers = make_simulator(conn).place_order(conn, 5, [("SKU-1", 1)], datetime.now(UTC))
    declared = SPECS[channel].auth_headers
    sent = [name for name in declared if name.lower() in {k.lower() for k in headers}]
    assert sent, f"{channel}: none of its auth headers {declared} is in a signed request"
    client = await gateway(kafka, conn)
    try:
        for name in sent:
            value = next(v for k, v in headers.items() if k.lower() == name.lower())
            others = [(k, v) for k, v in headers.items() if k.lower() != name.lower()]
            for pair in ((value, "x" + value), ("x" + value, value), (value, value)):
                twice = CIMultiDict([*others, (name, pair[0]), (name, pair[1])])
                resp = await client.post(f"/webhooks/{conn.id}", data=body, headers=twice)
                assert resp.status == 401, (name, pair)
                assert (await resp.json())["error"] == f"more than one {name} header; send exactly one"
        # The same request with one copy of each passes verification (thin channels then fail to fetch: 503).
        once = await client.post(f"/webhooks/{conn.id}", data=body, headers=headers)
        assert once.status in (200, 503), await once.text()
        metrics = await (await client.get("/metrics")).text()
        refused = 3 * len(sent)
        assert f'webhook_requests_total{{channel="{channel}",outcome="unauthorized"}} {refused}.0' in metrics
    finally:
        await client.close()
    assert read_topic(kafka, quarantine.TOPIC, timeout_s=1) == []
