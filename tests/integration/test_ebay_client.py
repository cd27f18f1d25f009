"""EbayInventoryClient against the eBay simulator served on loopback."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import aiohttp
import pytest
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.ebay import MAX_BATCH, RATE_BURST, RATE_LIMIT_PER_S, webhooks
from channels.ebay.client import EbayInventoryClient
from channels.errors import ChannelError
from channels.ratelimit import TokenBucket
from lab.marketplaces.ebay import EbaySimulator, sample_connection
from tests.channel_kit import serving

pytestmark = pytest.mark.integration

SKUS = tuple(f"SKU-{n}" for n in range(1, 31))
DAY = date(2026, 11, 23)


@dataclass
class Rig:
    sim: EbaySimulator
    conn: Connection
    client: EbayInventoryClient
    session: aiohttp.ClientSession


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    conn = sample_connection("http://127.0.0.1:1", skus=SKUS)
    sim = EbaySimulator.for_connection(conn, {sku: 10 for sku in SKUS})
    sim.today = lambda: DAY
    async with serving(sim, conn) as (conn, session):
        yield Rig(sim, conn, EbayInventoryClient(session, conn), session)


async def test_set_available_writes_item_and_offer_and_is_recorded(rig: Rig) -> None:
    await rig.client.set_available("SKU-1", 7, change_from=10, reference="stocksync:v1")
    assert rig.sim.available["SKU-1"] == 7
    call = rig.sim.calls[-1]
    assert (call.sku, call.offer_id, call.quantity, call.status) == ("SKU-1", "5000000001", 7, 200)
    assert rig.sim.revisions[("5000000001", DAY)] == 1


async def test_set_many_batches_by_max_batch(rig: Rig) -> None:
    items = [(sku, n) for n, sku in enumerate(SKUS)]
    await rig.client.set_many(items, reference="stocksync:batch")
    assert rig.sim.bulk_sizes == [MAX_BATCH, len(SKUS) - MAX_BATCH]
    assert {sku: rig.sim.available[sku] for sku in SKUS} == dict(items)
    assert len(rig.sim.calls) == len(SKUS)


async def test_get_available_reads_the_channel(rig: Rig) -> None:
    rig.sim.available["SKU-2"] = 3
    assert await rig.client.get_available(["SKU-1", "SKU-2"]) == {"SKU-1": 10, "SKU-2": 3}


async def test_burst_beyond_budget_gets_429_retryable(rig: Rig) -> None:
    rig.sim.bucket = TokenBucket(RATE_LIMIT_PER_S, RATE_BURST, clock=lambda: 0.0)  # no refill: exact
    for _ in range(RATE_BURST):
        await rig.client.get_available(["SKU-1"])
    with pytest.raises(ChannelError) as caught:
        await rig.client.set_available("SKU-1", 1, change_from=None, reference="r")
    assert (caught.value.status, caught.value.retryable) == (429, True)
    assert caught.value.retry_after_s is not None
    assert caught.value.retry_after_s >= 1
    assert rig.sim.rate_limited == 1
    assert rig.sim.available["SKU-1"] == 10


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (500, True), (400, False)])
async def test_injected_failures_are_classified(rig: Rig, status: int, retryable: bool) -> None:
    rig.sim.fail_next(status)
    with pytest.raises(ChannelError) as caught:
        await rig.client.set_available("SKU-1", 4, change_from=None, reference="r")
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    assert rig.sim.available["SKU-1"] == 10
    await rig.client.set_available("SKU-1", 4, change_from=None, reference="r")
    assert rig.sim.available["SKU-1"] == 4


async def test_wrong_token_is_not_retryable(rig: Rig) -> None:
    forged = rig.conn.model_copy(update={"access_token": SecretStr("v^1.1#forged")})
    with pytest.raises(ChannelError) as caught:
        await EbayInventoryClient(rig.session, forged).set_available(
            "SKU-1", 1, change_from=None, reference="r"
        )
    assert (caught.value.status, caught.value.retryable) == (401, False)
    assert "Invalid access token" in str(caught.value)


async def test_per_item_errors_name_the_item(rig: Rig) -> None:
    wrong = rig.conn.model_copy(
        update={"listings": {**rig.conn.listings, "SKU-2": Listing(listing_id="1", inventory_ref="999")}}
    )
    with pytest.raises(ChannelError) as caught:
        await EbayInventoryClient(rig.session, wrong).set_many([("SKU-1", 5), ("SKU-2", 6)], reference="r")
    assert caught.value.retryable is False
    assert "'SKU-2'" in str(caught.value)
    assert "Offer is not available" in str(caught.value)
    assert rig.sim.available["SKU-1"] == 5  # the item eBay accepted stays applied
    assert rig.sim.available["SKU-2"] == 10


async def test_unmapped_sku_is_refused_before_any_call(rig: Rig) -> None:
    with pytest.raises(ChannelError, match="no eBay offer") as caught:
        await rig.client.set_many([("SKU-1", 1), ("UNKNOWN", 2)], reference="r")
    assert caught.value.retryable is False
    assert rig.sim.calls == []


async def test_revision_limit_per_listing_per_day(rig: Rig) -> None:
    rig.sim.revisions[("5000000001", DAY)] = 249
    await rig.client.set_available("SKU-1", 9, change_from=None, reference="r")
    with pytest.raises(ChannelError, match="revised 250 times today") as caught:
        await rig.client.set_available("SKU-1", 8, change_from=None, reference="r")
    assert caught.value.retryable is False
    assert rig.sim.available["SKU-1"] == 9
    await rig.client.set_available("SKU-2", 8, change_from=None, reference="r")  # other listings unaffected
    rig.sim.today = lambda: DAY + timedelta(days=1)
    await rig.client.set_available("SKU-1", 8, change_from=None, reference="r")
    assert rig.sim.available["SKU-1"] == 8


async def test_order_notification_verifies_with_the_served_public_key(rig: Rig) -> None:
    created = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    body, headers = rig.sim.place_order(rig.conn, 42, [("SKU-1", 3), ("SKU-2", 1)], created)
    assert (rig.sim.available["SKU-1"], rig.sim.available["SKU-2"]) == (7, 9)
    key_id = json.loads(base64.b64decode(headers[webhooks.SIGNATURE_HEADER]))["kid"]
    url = f"{rig.conn.api_base_url}/commerce/notification/v1/public_key/{key_id}"
    auth = {"Authorization": f"Bearer {rig.conn.access_token.get_secret_value()}"}
    async with rig.session.get(url, headers=auth) as resp:
        assert resp.status == 200
        served = (await resp.json())["key"]
    assert "\n" not in served  # eBay serves the PEM on one line
    assert webhooks.verify(served, body, headers)
    events = webhooks.normalise(rig.conn, body, headers, created)
    assert [(e.sku, e.quantity, e.line_id) for e in events] == [("SKU-1", 3, "4201"), ("SKU-2", 1, "4202")]
