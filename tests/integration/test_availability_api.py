"""The availability read API on a real gateway and database (issue 16): what an agent may see of a SKU under
each policy, its status, batches with unknown SKUs, and a token that reads its own tenant's SKUs only."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from allocation.thresholds import set_limited_at
from channels.connection import ConnectionRegistry, TenantToken, token_digest
from ingest.app import build_app
from ingest.settings import IngestSettings
from stocksync.settings import KafkaSettings, PostgresSettings

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]

ACME, GLOBEX = "tok-acme-0123456789", "tok-globex-0123456789"
AS_OF = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

# (tenant, sku, master count, version, {connection: granted})
INVENTORY: list[tuple[str, str, int, int, dict[str, int]]] = [
    ("acme", "BIG", 20, 7, {"shop-a": 5, "shop-b": 3}),
    ("acme", "FIVE", 11, 2, {"shop-a": 6}),
    ("acme", "SIX", 6, 3, {}),
    ("acme", "GONE", 8, 4, {"shop-a": 8}),
    ("acme", "OVER", 3, 9, {"shop-a": 5}),  # a count came in below the grants
    ("acme", "MIR", 9, 1, {"shop-a": 4}),
    ("acme", "BUF", 10, 1, {"shop-a": 4}),
    ("globex", "G-1", 3, 1, {}),
    ("globex", "BIG", 100, 12, {"shop-g": 50}),
]
# (tenant, sku or '' for the tenant, policy, buffer)
POLICIES = [
    ("acme", "MIR", "mirror", 2),
    ("acme", "BUF", "never_cancel", 3),
    ("globex", "", "mirror", 1),
]


def registry() -> ConnectionRegistry:
    return ConnectionRegistry(
        [],
        [
            TenantToken(id="acme", admin_token_sha256=token_digest(ACME)),
            TenantToken(id="globex", admin_token_sha256=token_digest(GLOBEX)),
        ],
    )


def seed(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as db:
        for tenant, sku, available, version, grants in INVENTORY:
            db.execute(
                "INSERT INTO inventory (tenant, sku, available, version, updated_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                (tenant, sku, available, version, AS_OF),
            )
            for connection, granted in grants.items():
                db.execute(
                    "INSERT INTO allocations (tenant, sku, connection_id, channel, granted) "
                    "VALUES (%s, %s, %s, 'shopify', %s)",
                    (tenant, sku, connection, granted),
                )
        for tenant, sku, policy, buffer in POLICIES:
            db.execute(
                "INSERT INTO allocation_policies (tenant, sku, policy, buffer) VALUES (%s, %s, %s, %s)",
                (tenant, sku, policy, buffer),
            )


async def started(settings: IngestSettings) -> Client:
    client: Client = TestClient(TestServer(build_app(settings, connections=registry())))
    await client.start_server()
    return client


@pytest.fixture
async def client(kafka: KafkaSettings, database_url: str) -> AsyncIterator[Client]:
    seed(database_url)
    settings = IngestSettings(
        kafka=kafka, postgres=PostgresSettings(database_url=database_url), connections_table=False
    )
    c = await started(settings)
    yield c
    await c.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def read(client: Client, sku: str, token: str = ACME) -> dict[str, Any]:
    resp = await client.get(f"/v1/availability/{sku}", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_each_policy_shows_what_an_agent_may_hold(client: Client) -> None:
    """never_cancel (the default): the count less the buffer and every grant, never below 0; mirror: the
    count less the buffer, grants or not. Status: out_of_stock at 0, limited_stock up to 5, else in_stock."""
    expected = {
        "BIG": (20 - 5 - 3, "in_stock", 7),
        "FIVE": (11 - 6, "limited_stock", 2),
        "SIX": (6, "in_stock", 3),
        "GONE": (0, "out_of_stock", 4),
        "OVER": (0, "out_of_stock", 9),
        "MIR": (9 - 2, "in_stock", 1),
        "BUF": (10 - 3 - 4, "limited_stock", 1),
    }
    for sku, (available, state, version) in expected.items():
        body = await read(client, sku)
        assert set(body) == {"sku", "available", "status", "version", "as_of"}
        assert (body["sku"], body["available"], body["status"], body["version"]) == (
            sku,
            available,
            state,
            version,
        )
        assert datetime.fromisoformat(body["as_of"]) == AS_OF
    # globex's policy is the tenant's own (mirror, buffer 1) and its BIG is its own SKU
    assert (await read(client, "G-1", GLOBEX))["available"] == 2
    assert (await read(client, "G-1", GLOBEX))["status"] == "limited_stock"
    assert (await read(client, "BIG", GLOBEX))["available"] == 99


async def test_a_tenants_own_threshold_decides_limited_stock(client: Client, database_url: str) -> None:
    """The tenant's threshold (stocksync feed thresholds) is the one the read API uses, as the feed does."""
    assert (await read(client, "BIG"))["status"] == "in_stock"  # 12 units, default threshold 5
    set_limited_at(database_url, "acme", 12)
    assert (await read(client, "BIG"))["status"] == "limited_stock"
    assert (await read(client, "G-1", GLOBEX))["status"] == "limited_stock"  # globex keeps the default
    set_limited_at(database_url, "globex", 0)
    assert (await read(client, "G-1", GLOBEX))["status"] == "in_stock"


async def test_a_batch_answers_known_skus_in_order_and_names_the_unknown(client: Client) -> None:
    resp = await client.get(
        "/v1/availability?sku=GONE&sku=NOPE&sku=BIG&sku=GONE&sku=G-1&sku=MIR", headers=bearer(ACME)
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert [item["sku"] for item in body["items"]] == ["GONE", "BIG", "MIR"]
    assert body["unknown"] == ["NOPE", "G-1"]  # G-1 is globex's: for acme it does not exist
    assert body["items"][1] == await read(client, "BIG")
    # a full batch of 100 answers the same as the single reads
    names = [sku for tenant, sku, *_ in INVENTORY if tenant == "acme"]
    names += [f"MISSING-{i}" for i in range(100 - len(names))]
    resp = await client.get("/v1/availability", params=[("sku", s) for s in names], headers=bearer(ACME))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert len(body["items"]) + len(body["unknown"]) == 100
    for item in body["items"]:
        assert item == await read(client, item["sku"])


async def test_a_token_reads_its_own_tenants_skus_only(client: Client) -> None:
    resp = await client.get("/v1/availability/G-1", headers=bearer(ACME))
    assert resp.status == 404
    problem = await resp.json()
    assert problem["sku"] == "G-1"
    assert "no SKU 'G-1' for this token's tenant" in problem["error"]
    assert (await read(client, "G-1", GLOBEX))["version"] == 1
    assert (await read(client, "BIG", ACME))["version"] == 7
    assert (await read(client, "BIG", GLOBEX))["version"] == 12
    resp = await client.get("/v1/availability?sku=GONE", headers=bearer(GLOBEX))
    assert await resp.json() == {"items": [], "unknown": ["GONE"]}


async def test_without_a_known_bearer_token_nothing_is_read(client: Client) -> None:
    for path in ("/v1/availability/BIG", "/v1/availability?sku=BIG", "/v1/availability/stream"):
        for headers in ({}, bearer("not-a-token"), {"Authorization": f"Basic {ACME}"}, bearer("")):
            resp = await client.get(path, headers=headers)
            assert resp.status == 401, (path, headers)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "token" in (await resp.json())["error"]


async def test_bad_requests_say_what_to_send(client: Client) -> None:
    resp = await client.get("/v1/availability", headers=bearer(ACME))
    assert resp.status == 400
    assert "?sku=A&sku=B" in (await resp.json())["error"]
    too_many = [("sku", f"S-{i}") for i in range(101)]
    resp = await client.get("/v1/availability", params=too_many, headers=bearer(ACME))
    assert resp.status == 400
    assert "101 SKUs named; at most 100" in (await resp.json())["error"]
    for path in ("/v1/availability/A%01B", "/v1/availability?sku=", "/v1/availability?sku=OK&sku=A%0AB"):
        resp = await client.get(path, headers=bearer(ACME))
        assert resp.status == 400, path
        assert "1 to 128 characters with no control characters" in (await resp.json())["error"]
    resp = await client.get("/v1/availability?sku=" + "X" * 129, headers=bearer(ACME))
    assert resp.status == 400


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_an_unreachable_database_is_503(kafka: KafkaSettings) -> None:
    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/nothing?connect_timeout=1"
    settings = IngestSettings(
        kafka=kafka, postgres=PostgresSettings(database_url=url), connections_table=False
    )
    client = await started(settings)
    try:
        for path in ("/v1/availability/BIG", "/v1/availability?sku=BIG&sku=GONE"):
            resp = await client.get(path, headers=bearer(ACME))
            assert resp.status == 503, path
            assert resp.headers["Retry-After"]
            assert "PostgreSQL" in (await resp.json())["error"]
    finally:
        await client.close()
