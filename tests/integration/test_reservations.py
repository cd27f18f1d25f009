"""Check-and-reserve on a real gateway and processor (separate processes), broker and database (issue 16):
concurrent holds never take more than the stock, a hold expires by itself and its units sell again, a commit
after expiry is refused, one idempotency key is one reservation, and a tenant's token reaches only its own
SKUs and reservations."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from channels.connection import TenantToken, to_toml, token_digest
from lab.local.process import eventually
from lab.local.stack import Stack
from lab.sandbox import Sandbox
from schemas import TOPICS
from stocksync.kafka import ensure_topics
from stocksync.settings import KafkaSettings

pytestmark = pytest.mark.integration

ACME, GLOBEX = "tok-acme-0123456789", "tok-globex-0123456789"


@pytest.fixture
async def gateway(kafka: KafkaSettings, database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """The gateway's URL, with a processor applying what it publishes; acme holds 10 of SKU-1, globex 5
    of SKU-G (policy never_cancel, no marketplace granted anything: all of it is for agents)."""
    ensure_topics(kafka, TOPICS)
    tenants = [TenantToken(id="acme", admin_token_sha256=token_digest(ACME))]
    tenants.append(TenantToken(id="globex", admin_token_sha256=token_digest(GLOBEX)))
    path = tmp_path / "connections.toml"
    path.write_text(to_toml([], tenants))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO inventory (tenant, sku, available, version) VALUES ('acme', 'SKU-1', 10, 1), "
            "('globex', 'SKU-G', 5, 1)"
        )
    async with Sandbox(kafka, database_url) as box:
        stack: Stack = await box.start(path, fanout=False, ready_timeout_s=30)
        yield stack.ingest_url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def available(database_url: str, tenant: str, sku: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT available FROM inventory WHERE tenant = %s AND sku = %s", (tenant, sku)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str = ACME, **body: Any
) -> tuple[int, dict[str, Any]]:
    async with http.request(method, url, json=body or None, headers=bearer(token)) as resp:
        return resp.status, await resp.json()


async def test_a_hundred_concurrent_holds_for_ten_units_hold_exactly_ten(
    gateway: str, database_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(
            *(
                call(
                    http,
                    "POST",
                    f"{gateway}/v1/reservations",
                    sku="SKU-1",
                    quantity=1,
                    idempotency_key=f"k{i}",
                )
                for i in range(100)
            )
        )
    statuses = Counter(status for status, _ in answers)
    assert statuses == {201: 10, 409: 90}, answers[:3]
    held = {body["reservation_id"] for status, body in answers if status == 201}
    assert len(held) == 10
    assert all("not reserved" in body["error"] for status, body in answers if status == 409)
    assert available(database_url, "acme", "SKU-1") == 0
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT count(*), sum(quantity) FROM reservations WHERE state = 'held'"
        ).fetchone()
    assert rows == (10, 10)


async def test_an_expired_hold_is_released_by_itself_and_a_commit_after_expiry_is_refused(
    gateway: str, database_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        status, hold = await call(
            http,
            "POST",
            f"{gateway}/v1/reservations",
            sku="SKU-1",
            quantity=7,
            ttl_s=1,
            idempotency_key="soon",
        )
        assert status == 201, hold
        assert (hold["state"], hold["quantity"]) == ("held", 7)
        assert available(database_url, "acme", "SKU-1") == 3
        url = f"{gateway}/v1/reservations/{hold['reservation_id']}"

        async def state() -> str:
            return str((await call(http, "GET", url))[1]["state"])

        await eventually(lambda: _is(state, "expired"), timeout_s=20, what="the hold to expire")
        assert available(database_url, "acme", "SKU-1") == 10  # its units are back
        status, refused = await call(http, "POST", f"{url}/commit")
        assert status == 409
        assert "expired" in refused["error"] or "was expired" in refused["error"], refused
        # ... and sellable again: a hold of all ten is taken, and committed before it expires
        status, again = await call(
            http, "POST", f"{gateway}/v1/reservations", sku="SKU-1", quantity=10, idempotency_key="later"
        )
        assert status == 201, again
        status, committed = await call(
            http, "POST", f"{gateway}/v1/reservations/{again['reservation_id']}/commit"
        )
        assert (status, committed["state"]) == (200, "committed")
        # a committed hold is a sale: releasing it gives nothing back
        status, kept = await call(http, "DELETE", f"{gateway}/v1/reservations/{again['reservation_id']}")
        assert status == 409
        assert "already committed" in kept["error"]
    assert available(database_url, "acme", "SKU-1") == 0
    with psycopg.connect(database_url) as conn:
        kinds = conn.execute("SELECT kind, outcome FROM ledger WHERE tenant = 'acme' ORDER BY id").fetchall()
    assert kinds == [
        ("reservation_held", "applied"),
        ("reservation_released", "applied"),
        ("reservation_committed", "rejected"),
        ("reservation_held", "applied"),
        ("reservation_committed", "applied"),
        ("reservation_released", "ignored"),
    ]


async def _is(state: Any, wanted: str) -> bool:
    return bool(await state() == wanted)


async def test_one_idempotency_key_is_one_reservation_and_tenants_reach_only_their_own(
    gateway: str, database_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        hold: dict[str, Any] = {"sku": "SKU-1", "quantity": 2, "idempotency_key": "same"}
        first, second = await asyncio.gather(
            call(http, "POST", f"{gateway}/v1/reservations", **hold),
            call(http, "POST", f"{gateway}/v1/reservations", **hold),
        )
        third = await call(http, "POST", f"{gateway}/v1/reservations", **hold)
        assert first[0] == second[0] == third[0] == 201
        assert first[1]["reservation_id"] == second[1]["reservation_id"] == third[1]["reservation_id"]
        assert available(database_url, "acme", "SKU-1") == 8  # taken once
        status, reused = await call(
            http, "POST", f"{gateway}/v1/reservations", sku="SKU-1", quantity=3, idempotency_key="same"
        )
        assert status == 422
        assert "another request" in reused["error"]

        url = f"{gateway}/v1/reservations/{first[1]['reservation_id']}"
        for method, path in (("GET", url), ("POST", f"{url}/commit"), ("DELETE", url)):
            status, body = await call(http, method, path, token=GLOBEX)
            assert status == 404, (method, body)
        status, body = await call(
            http,
            "POST",
            f"{gateway}/v1/reservations",
            token=GLOBEX,
            sku="SKU-1",
            quantity=1,
            idempotency_key="x",
        )
        assert status == 404
        assert "no SKU 'SKU-1'" in body["error"]
        status, body = await call(
            http,
            "POST",
            f"{gateway}/v1/reservations",
            token="tok-nobody-0123456789",
            sku="SKU-1",
            quantity=1,
            idempotency_key="y",
        )
        assert status == 401
        status, mine = await call(
            http,
            "POST",
            f"{gateway}/v1/reservations",
            token=GLOBEX,
            sku="SKU-G",
            quantity=5,
            idempotency_key="same",
        )
        assert status == 201
        assert mine["reservation_id"] != first[1]["reservation_id"]
        status, released = await call(http, "DELETE", url)
        assert (status, released["state"]) == (200, "released")
    assert available(database_url, "acme", "SKU-1") == 10
    assert available(database_url, "globex", "SKU-G") == 0
    # bad requests are answered with what to send, and nothing is held
    async with aiohttp.ClientSession() as http:
        url = f"{gateway}/v1/reservations"
        async with http.post(url, data=b"{not json", headers=bearer(ACME)) as resp:
            assert resp.status == 400
            assert "not JSON" in (await resp.json())["error"]
        refusals: dict[str, tuple[dict[str, Any], str]] = {
            "quantity": (
                {"sku": "SKU-1", "quantity": 0, "idempotency_key": "b1"},
                "between 1 and 2147483647",
            ),
            "ttl_s": ({"sku": "SKU-1", "quantity": 1, "ttl_s": 10**6, "idempotency_key": "b2"}, "ttl_s"),
            "extra": ({"sku": "SKU-1", "quantity": 1, "idempotency_key": "b3", "price": 1}, "not a field"),
            "key": ({"sku": "SKU-1", "quantity": 1, "idempotency_key": "no spaces"}, "idempotency_key"),
            "missing": ({"sku": "SKU-1", "quantity": 1}, "idempotency_key"),
        }
        for case, (body, says) in refusals.items():
            status, answer = await call(http, "POST", url, **body)
            assert status == 422, case
            assert says in answer["error"], (case, answer)
        status, _ = await call(http, "GET", f"{url}/rsv_not-an-id")
        assert status == 404
    assert available(database_url, "acme", "SKU-1") == 10
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM ledger WHERE event_id LIKE 'rsv:%%'").fetchone()
    # acme's hold and its release, globex's hold and its refused hold of a SKU it lacks: no bad request's
    assert row == (4,)
