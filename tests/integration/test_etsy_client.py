"""EtsyInventoryClient and receipt expansion against the Etsy simulator served on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from pydantic import SecretStr

from channels.connection import Connection, Listing
from channels.errors import ChannelError, PayloadError
from channels.etsy import MAX_QUANTITY, RATE_BURST, RATE_LIMIT_PER_S, webhooks
from channels.etsy.client import EtsyInventoryClient, api_headers
from channels.ratelimit import TokenBucket
from lab.marketplaces.etsy import EtsySimulator, order_webhook, sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import serving

pytestmark = pytest.mark.integration

CREATED = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
VARIATION_LISTING = "1600000001"


@dataclass
class Rig:
    sim: EtsySimulator
    conn: Connection
    client: EtsyInventoryClient
    session: aiohttp.ClientSession


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    base = sample_connection("http://127.0.0.1:1", skus=("SKU-1", "SKU-2"))
    conn = base.model_copy(
        update={
            "listings": {
                **base.listings,
                "TEE-S": Listing(listing_id=VARIATION_LISTING, inventory_ref="tee-small"),
                "TEE-M": Listing(listing_id=VARIATION_LISTING, inventory_ref="tee-medium"),
            }
        }
    )
    sim = EtsySimulator.for_connection(conn, {"SKU-1": 10, "SKU-2": 10, "TEE-S": 4, "TEE-M": 6})
    async with serving(sim, conn) as (conn, session):
        yield Rig(sim, conn, EtsyInventoryClient(session, conn), session)


async def test_set_available_rewrites_the_listing_and_is_recorded(rig: Rig) -> None:
    ids_before = dict(rig.sim.product_ids)
    await rig.client.set_available("SKU-1", 7, change_from=10, reference="stocksync:v1")
    assert rig.sim.available["SKU-1"] == 7
    call = rig.sim.calls[-1]
    assert (call.listing_id, call.sku, call.quantity, call.status) == ("1500000001", "SKU-1", 7, 200)
    assert rig.sim.product_ids["SKU-1"] != ids_before["SKU-1"]  # Etsy renumbers on every write
    assert rig.sim.prices["SKU-1"] == 1000  # price re-sent unchanged


async def test_one_variation_is_set_without_losing_the_others(rig: Rig) -> None:
    await rig.client.set_available("TEE-S", 1, change_from=None, reference="r")
    assert (rig.sim.available["tee-small"], rig.sim.available["tee-medium"]) == (1, 6)
    assert rig.sim.listings[VARIATION_LISTING] == ["tee-small", "tee-medium"]
    assert [(c.sku, c.quantity) for c in rig.sim.calls] == [("tee-small", 1), ("tee-medium", 6)]


async def test_set_many_writes_each_listing_once(rig: Rig) -> None:
    await rig.client.set_many([("TEE-S", 2), ("TEE-M", 3), ("SKU-2", 9), ("TEE-S", 5)], reference="r")
    assert (rig.sim.available["tee-small"], rig.sim.available["tee-medium"], rig.sim.available["SKU-2"]) == (
        5,
        3,
        9,
    )
    assert sorted({c.listing_id for c in rig.sim.calls}) == ["1500000002", VARIATION_LISTING]
    assert len(rig.sim.calls) == 3  # one write of the variation listing (2 products) + one of SKU-2


async def test_quantities_above_etsys_cap_are_written_as_the_cap(rig: Rig) -> None:
    await rig.client.set_available("SKU-1", 5000, change_from=None, reference="r")
    assert rig.sim.available["SKU-1"] == MAX_QUANTITY


async def test_get_available_reads_the_channel(rig: Rig) -> None:
    rig.sim.available["tee-medium"] = 2
    counts = await rig.client.get_available(["SKU-1", "TEE-M", "TEE-S"])
    assert counts == {"SKU-1": 10, "TEE-M": 2, "TEE-S": 4}


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


@pytest.mark.parametrize(
    ("update", "status"),
    [
        ({"access_token": SecretStr("27182818.forged")}, 401),
        ({"options": {"shop_id": "31415926", "api_key": "keystring:wrong-secret"}}, 403),
    ],
)
async def test_wrong_credentials_are_not_retryable(rig: Rig, update: dict[str, object], status: int) -> None:
    forged = rig.conn.model_copy(update=update)
    with pytest.raises(ChannelError) as caught:
        await EtsyInventoryClient(rig.session, forged).set_available(
            "SKU-1", 1, change_from=None, reference="r"
        )
    assert (caught.value.status, caught.value.retryable) == (status, False)
    assert rig.sim.available["SKU-1"] == 10


async def test_missing_api_key_or_mapping_is_refused_before_any_call(rig: Rig) -> None:
    keyless = rig.conn.model_copy(update={"options": {"shop_id": "31415926"}})
    with pytest.raises(ChannelError, match=r"options\.api_key"):
        await EtsyInventoryClient(rig.session, keyless).set_available(
            "SKU-1", 1, change_from=None, reference="r"
        )
    with pytest.raises(ChannelError, match="no Etsy listing") as caught:
        await rig.client.set_many([("SKU-1", 1), ("UNKNOWN", 2)], reference="r")
    assert caught.value.retryable is False
    assert rig.sim.calls == []


async def test_product_missing_on_etsy_is_not_retryable(rig: Rig) -> None:
    renamed = rig.conn.model_copy(
        update={
            "listings": {
                **rig.conn.listings,
                "TEE-S": Listing(listing_id=VARIATION_LISTING, inventory_ref="tee-xs"),
            }
        }
    )
    with pytest.raises(ChannelError, match="has no product with SKU 'tee-xs'") as caught:
        await EtsyInventoryClient(rig.session, renamed).set_available(
            "TEE-S", 1, change_from=None, reference="r"
        )
    assert caught.value.retryable is False


async def test_simulator_wipes_products_left_out_of_a_put_like_etsy(rig: Rig) -> None:
    url = f"{rig.conn.api_base_url}/v3/application/listings/{VARIATION_LISTING}/inventory"
    body = {
        "products": [
            {
                "sku": "tee-small",
                "property_values": [{"property_id": 513, "value_ids": [1], "values": ["S"]}],
                "offerings": [{"price": 10.0, "quantity": 3, "is_enabled": True}],
            }
        ]
    }
    async with rig.session.put(url, json=body, headers=api_headers(rig.conn)) as resp:
        assert resp.status == 200
    assert rig.sim.listings[VARIATION_LISTING] == ["tee-small"]
    assert "tee-medium" not in rig.sim.available
    bad = {"products": [{**body["products"][0], "product_id": 1}]}
    async with rig.session.put(url, json=bad, headers=api_headers(rig.conn)) as resp:
        assert resp.status == 400
        assert "product_id" in (await resp.json())["error"]


async def test_paid_and_canceled_webhooks_expand_and_normalise(rig: Rig) -> None:
    body, headers = rig.sim.place_order(rig.conn, 88, [("SKU-1", 3), ("TEE-M", 2)], CREATED)
    assert (rig.sim.available["SKU-1"], rig.sim.available["tee-medium"]) == (7, 4)
    secret = rig.conn.webhook_secret.get_secret_value()
    assert webhooks.verify(secret, body, headers)
    assert "receipt" not in json.loads(body)  # thin, as Etsy sends it
    full = await webhooks.expand(rig.session, rig.conn, body, headers)
    sales = webhooks.normalise(rig.conn, full, headers, CREATED)
    assert all(isinstance(e, OrderPlaced) for e in sales)
    assert [(e.event_id, e.sku, e.quantity) for e in sales] == [
        ("etsy-acme:order:88:line:8801", "SKU-1", 3),
        ("etsy-acme:order:88:line:8802", "TEE-M", 2),
    ]
    assert await webhooks.expand(rig.session, rig.conn, full, headers) == full

    canceled_at = CREATED + timedelta(hours=1)
    body, headers = rig.sim.cancel_order(rig.conn, 88, canceled_at)
    assert (rig.sim.available["SKU-1"], rig.sim.available["tee-medium"]) == (10, 6)
    assert webhooks.verify(secret, body, headers)
    full = await webhooks.expand(rig.session, rig.conn, body, headers)
    cancels = webhooks.normalise(rig.conn, full, headers, canceled_at)
    assert all(isinstance(e, OrderCancelled) for e in cancels)
    assert [(e.event_id, e.sku, e.quantity, e.occurred_at) for e in cancels] == [
        ("etsy-acme:cancel:88:line:8801", "SKU-1", 3, canceled_at),
        ("etsy-acme:cancel:88:line:8802", "TEE-M", 2, canceled_at),
    ]


async def test_expand_failures(rig: Rig) -> None:
    body, headers = order_webhook(rig.conn, "order.paid", 404040, datetime.now(UTC))
    with pytest.raises(ChannelError) as caught:
        await webhooks.expand(rig.session, rig.conn, body, headers)
    assert (caught.value.status, caught.value.retryable) == (404, False)

    rig.sim.place_order(rig.conn, 5, [("SKU-1", 1)], CREATED)
    body, headers = order_webhook(rig.conn, "order.paid", 5, datetime.now(UTC))
    rig.sim.fail_next(503)
    with pytest.raises(ChannelError) as caught:
        await webhooks.expand(rig.session, rig.conn, body, headers)
    assert (caught.value.status, caught.value.retryable) == (503, True)

    other_shop = rig.conn.model_copy(update={"options": {**rig.conn.options, "shop_id": "1"}})
    with pytest.raises(PayloadError, match="is shop '1'"):
        await webhooks.expand(rig.session, other_shop, body, headers)
    for resource in ("https://evil.example/steal", 42):
        thin = json.dumps({"event_type": "order.paid", "resource_url": resource, "shop_id": 31415926})
        with pytest.raises(PayloadError, match="not an Etsy receipt URL"):
            await webhooks.expand(rig.session, rig.conn, thin.encode(), headers)
    with pytest.raises(PayloadError, match="not JSON"):
        await webhooks.expand(rig.session, rig.conn, b"{", headers)


async def test_unhandled_event_types_are_not_expanded(rig: Rig) -> None:
    body, headers = order_webhook(rig.conn, "order.shipped", 404040, datetime.now(UTC))
    rig.sim.fail_next(500)  # would surface if expand called Etsy
    assert await webhooks.expand(rig.session, rig.conn, body, headers) == body
    with pytest.raises(PayloadError, match="not handled"):
        webhooks.normalise(rig.conn, body, headers, CREATED)
    assert rig.sim.failures == [500]
