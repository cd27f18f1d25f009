"""Issue 12's must-show: valid orders of two tenants and a bad event travel together through every path that
produces events, with the gateway and the processor running as processes on real Kafka and PostgreSQL.

- webhook: an order with a 3,000,000,000-unit line beside a valid line (the line is quarantined with its
  reason, its neighbour applied);
- admin API: a receipt of 3,000,000,000 (422 naming the field and the range) and a receipt the schema allows
  but the database cannot hold (2,147,483,647 on top of stock: recorded ``invalid`` and dead-lettered);
- reconciler backfill: orders the webhooks missed, one with an out-of-range line (that order quarantined
  with the line's reason, the other lines and orders applied);
- replay of the topic holding all of it: checksum-equal to the live state.

Every valid order is applied once, each bad one is visible with its reason, and the processor's group ends
with no lag.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psycopg
import pytest

from channels.connection import Connection, TenantToken, to_toml, token_digest
from lab.local.stack import Stack
from lab.marketplaces.serve import serve
from lab.marketplaces.shopify import ShopifySimulator, sample_connection
from lab.sandbox import Sandbox
from processor.checksum import checksum
from processor.replay import replay
from schemas import inventory_events, processor_dlq, quarantine
from schemas.base import MAX_QUANTITY
from stocksync.settings import KafkaSettings
from tests.e2e.reconcile_kit import deliver, reconcile, reconciler_settings, seed_counts
from tests.helpers import eventually, group_caught_up, read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TENANTS = ("acme", "zeta")
SKUS = ("SKU-1", "SKU-2", "SKU-3")
STOCK = 1_000


@dataclass
class Seller:
    tenant: str
    simulator: ShopifySimulator
    connection: Connection
    token: str


@dataclass
class World:
    stack: Stack
    sellers: dict[str, Seller]

    def url(self, seller: Seller) -> str:
        return f"{self.stack.ingest_url}/webhooks/{seller.connection.id}"


@pytest.fixture
async def world(kafka: KafkaSettings, database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """Two tenants, each with a Shopify store of its own, an admin token, and ingest + processor."""
    sellers: dict[str, Seller] = {}
    simulators = {t: ShopifySimulator(access_token="") for t in TENANTS}
    async with serve(simulators["acme"].app()) as acme_url, serve(simulators["zeta"].app()) as zeta_url:
        for tenant, base_url in (("acme", acme_url), ("zeta", zeta_url)):
            conn = sample_connection(base_url, skus=SKUS, conn_id=f"shop-{tenant}", tenant=tenant)
            sim = simulators[tenant]
            sim.access_token = conn.access_token.get_secret_value()
            for listing in conn.listings.values():
                assert listing.inventory_ref is not None
                sim.available[listing.inventory_ref] = STOCK
            sellers[tenant] = Seller(tenant, sim, conn, f"sst_{secrets.token_urlsafe(16)}")
        path = tmp_path / "connections.toml"
        tokens = [
            TenantToken(id=s.tenant, admin_token_sha256=token_digest(s.token)) for s in sellers.values()
        ]
        path.write_text(to_toml([s.connection for s in sellers.values()], tokens))
        async with Sandbox(kafka, database_url) as box:
            yield World(await box.start(path, fanout=False, ready_timeout_s=30), sellers)


def outcomes(database_url: str) -> dict[str, tuple[str, str | None]]:
    with psycopg.connect(database_url) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT event_id, outcome, reason FROM ledger")}


def master(database_url: str) -> dict[tuple[str, str], int]:
    with psycopg.connect(database_url) as conn:
        return {(r[0], r[1]): r[2] for r in conn.execute("SELECT tenant, sku, available FROM inventory")}


async def test_valid_orders_of_two_tenants_survive_a_bad_event_on_every_path(
    world: World, kafka: KafkaSettings, database_url: str, tmp_path: Path, new_database: Callable[[], str]
) -> None:
    for tenant in TENANTS:
        await seed_counts(kafka, tenant, dict.fromkeys(SKUS, STOCK))
    expected = {(t, s): STOCK for t in TENANTS for s in SKUS}
    valid: list[str] = []  # event ids that must end 'applied'
    now = datetime.now(UTC)
    async with aiohttp.ClientSession() as http:
        # --- webhooks: 20 orders across the two tenants, one of them with a line out of range ---------------
        for n in range(20):
            seller = world.sellers[TENANTS[n % 2]]
            body, headers = seller.simulator.place_order(seller.connection, 1000 + n, [("SKU-1", 1)], now)
            await deliver(http, world.url(seller), body, headers)
            valid.append(f"{seller.connection.id}:order:{1000 + n}:line:{(1000 + n) * 100 + 1}")
            expected[(seller.tenant, "SKU-1")] -= 1
        acme, zeta = world.sellers["acme"], world.sellers["zeta"]
        body, headers = acme.simulator.place_order(
            acme.connection, 2000, [("SKU-2", 3_000_000_000), ("SKU-2", 2)], now
        )
        async with http.post(world.url(acme), data=body, headers=headers) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert answer["status"] == "accepted"
        assert "3000000000" in answer["refused"][0]["reason"]
        valid.append(f"{acme.connection.id}:order:2000:line:{2000 * 100 + 2}")
        expected[("acme", "SKU-2")] -= 2

        # --- admin API: one receipt out of range (422), one the database cannot hold (invalid) -------------
        receipts = f"{world.stack.ingest_url}/v1/stock/acme/SKU-3/receipts"
        auth = {"Authorization": f"Bearer {acme.token}"}
        async with http.post(receipts, json={"quantity": 3_000_000_000}, headers=auth) as resp:
            assert resp.status == 422
            refused = (await resp.json())["error"]
        assert "quantity" in refused
        assert str(MAX_QUANTITY) in refused
        async with http.post(
            receipts, json={"quantity": MAX_QUANTITY, "receipt_id": "huge-1"}, headers=auth
        ) as resp:
            assert resp.status == 202, await resp.text()
        for n in range(10):  # zeta's sales go on beside it
            body, headers = zeta.simulator.place_order(zeta.connection, 3000 + n, [("SKU-3", 1)], now)
            await deliver(http, world.url(zeta), body, headers)
            valid.append(f"{zeta.connection.id}:order:{3000 + n}:line:{(3000 + n) * 100 + 1}")
            expected[("zeta", "SKU-3")] -= 1

    # --- reconciler backfill: orders whose webhooks never came, one with a line out of range --------------
    later = datetime.now(UTC)  # after the seeded counts: sales the counts do not hold
    for n, seller in enumerate((acme, zeta, acme, zeta)):
        seller.simulator.place_order(seller.connection, 4000 + n, [("SKU-2", 1)], later)
        valid.append(f"{seller.connection.id}:order:{4000 + n}:line:{(4000 + n) * 100 + 1}")
        expected[(seller.tenant, "SKU-2")] -= 1
    zeta.simulator.place_order(zeta.connection, 4100, [("SKU-1", 3_000_000_000), ("SKU-1", 1)], later)
    settings = reconciler_settings(kafka, database_url, tmp_path / "reports")
    report, _registry = await reconcile(settings, [acme.connection, zeta.connection])
    assert report.ok, report
    valid.append(f"{zeta.connection.id}:order:4100:line:{4100 * 100 + 2}")
    expected[("zeta", "SKU-1")] -= 1

    # --- every valid order applied once, the bad ones visible with their reasons, no lag ------------------
    def missing() -> list[str]:
        seen = outcomes(database_url)
        return [i for i in valid if seen.get(i, ("",))[0] != "applied"]

    await eventually(lambda: not missing(), timeout_s=60, what=f"the {len(valid)} valid orders applied")
    await eventually(
        lambda: group_caught_up(kafka, "stocksync-processor", inventory_events.TOPIC),
        timeout_s=60,
        what="the processor group to commit every offset",
    )
    assert master(database_url) == expected
    seen = outcomes(database_url)
    huge = [e for e, (o, _r) in seen.items() if o == "invalid"]
    assert len(huge) == 1
    assert "out of range for type integer" in (seen[huge[0]][1] or "")  # the value is named, too
    letters = [processor_dlq.decode(m.value() or b"") for m in read_topic(kafka, processor_dlq.TOPIC)]
    assert [(x.problem, x.tenant, x.event_id) for x in letters] == [("invalid", "acme", huge[0])]
    quarantined = [
        quarantine.WebhookQuarantined.model_validate_json(m.value() or b"")
        for m in read_topic(kafka, quarantine.TOPIC)
    ]
    reasons = {q.connection_id: q.reason for q in quarantined}
    assert "3000000000" in reasons["shop-acme"]  # the webhook's refused line
    assert "3000000000" in reasons["shop-zeta"]  # the listed order's refused line
    assert any(b"4100" in base64.b64decode(q.body_b64) for q in quarantined)

    # --- replay: the topic with all of it rebuilds the same state ----------------------------------------
    target = new_database()
    await replay(kafka, target)
    assert checksum(target) == checksum(database_url)
