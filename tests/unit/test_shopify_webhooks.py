"""Shopify webhook signature and normalisation (pure functions, no I/O)."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.errors import PayloadError
from channels.shopify import webhooks
from lab.marketplaces.shopify import (
    ShopifySimulator,
    cancelled_webhook,
    order_webhook,
    refund,
    refund_webhook,
    sample_connection,
)
from schemas.base import MAX_QUANTITY
from schemas.inventory_events import OrderCancelled, StockObserved
from tests.channel_kit import json_values, mutate, published

CONN = sample_connection("http://127.0.0.1:1", skus=("SKU-1", "SKU-2", "SKU-3"))
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SECRET = CONN.webhook_secret.get_secret_value()


def line(n: int, sku: str = "SKU-1", quantity: int = 1, **extra: object) -> dict[str, object]:
    return {
        "id": n,
        "variant_id": int(CONN.listings[sku].listing_id),
        "sku": sku,
        "quantity": quantity,
        **extra,
    }


def test_signature_matches_an_independent_computation_of_the_documented_algorithm() -> None:
    """shopify.dev: X-Shopify-Hmac-SHA256 is the base64 of HMAC-SHA256 over the raw body, keyed with the
    app's client secret."""
    body = b'{"id":820982911946154508,"line_items":[]}'
    digest = hmac.new(b"hush", body, hashlib.sha256).digest()
    header = base64.b64encode(digest).decode()
    assert webhooks.sign("hush", body) == header
    assert webhooks.verify("hush", body, {webhooks.SIGNATURE_HEADER: header})
    assert not webhooks.verify("hush", body, {webhooks.SIGNATURE_HEADER: digest.hex()})  # hex is not it
    assert not webhooks.verify(
        "hush", body, {webhooks.SIGNATURE_HEADER: base64.b64encode(digest[:-1]).decode()}
    )


def test_signature_round_trip_and_forgeries() -> None:
    body, headers = order_webhook(CONN, 1, [line(11)], NOW)
    assert webhooks.verify(SECRET, body, headers)
    assert not webhooks.verify("another-secret", body, headers)
    assert not webhooks.verify(SECRET, body + b" ", headers)
    flipped = body[:20] + bytes([body[20] ^ 0x01]) + body[21:]
    assert not webhooks.verify(SECRET, flipped, headers)
    assert not webhooks.verify(
        SECRET, body, {k: v for k, v in headers.items() if k != webhooks.SIGNATURE_HEADER}
    )
    assert not webhooks.verify(SECRET, body, {webhooks.SIGNATURE_HEADER: ""})


def test_there_is_no_replay_window_the_signature_carries_no_time() -> None:
    """Shopify signs the body only: a retry hours later verifies; its ids make it a duplicate instead."""
    body, headers = order_webhook(CONN, 1, [line(11)], NOW - timedelta(hours=4))
    assert webhooks.verify(SECRET, body, headers)


def test_one_event_per_line_with_stable_ids() -> None:
    body, headers = order_webhook(CONN, 77, [line(1, "SKU-1", 2), line(2, "SKU-2", 5)], NOW)
    events = webhooks.normalise(CONN, body, headers, NOW)
    assert [(e.event_id, e.sku, e.quantity, e.tenant) for e in events] == [
        ("shop-acme:order:77:line:1", "SKU-1", 2, "acme"),
        ("shop-acme:order:77:line:2", "SKU-2", 5, "acme"),
    ]
    again = webhooks.normalise(CONN, body, headers, datetime.now(UTC))
    assert [e.event_id for e in again] == [e.event_id for e in events]


def test_sku_found_by_sku_field_when_variant_unknown() -> None:
    body, headers = order_webhook(
        CONN, 5, [{"id": 1, "variant_id": 999999, "sku": "SKU-3", "quantity": 1}], NOW
    )
    assert [e.sku for e in webhooks.normalise(CONN, body, headers, NOW)] == ["SKU-3"]


@pytest.mark.parametrize(
    ("items", "complaint"),
    [
        ([{"id": 1, "variant_id": 1, "sku": "NOPE", "quantity": 1}], "not mapped"),
        ([line(1, quantity=0)], "not a positive whole number"),
        ([line(1, quantity=-2)], "not a positive whole number"),
        ([{"id": 1, "variant_id": 4001, "sku": "SKU-1"}], "not a positive whole number"),
        ([], "no line items"),
    ],
)
def test_unusable_orders_are_refused_with_a_reason(items: list[dict[str, object]], complaint: str) -> None:
    body, headers = order_webhook(CONN, 9, items, NOW)
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body, headers, NOW)


def test_non_json_and_unhandled_topics_are_refused() -> None:
    body, headers = order_webhook(CONN, 9, [line(1)], NOW)
    with pytest.raises(PayloadError, match="not JSON"):
        webhooks.normalise(CONN, b"{nope", headers, NOW)
    with pytest.raises(PayloadError, match="not handled"):
        webhooks.normalise(CONN, body, {**headers, webhooks.TOPIC_HEADER: "products/update"}, NOW)
    with pytest.raises(PayloadError, match="not handled"):
        webhooks.normalise(CONN, body, {k: v for k, v in headers.items() if k != webhooks.TOPIC_HEADER}, NOW)
    naive = json.loads(body)
    naive["created_at"] = "2026-11-23T12:00:00"
    with pytest.raises(PayloadError, match="no UTC offset"):
        webhooks.normalise(CONN, json.dumps(naive).encode(), headers, NOW)


def test_absurd_nesting_and_odd_types_are_payload_errors() -> None:
    _body, headers = order_webhook(CONN, 9, [line(1)], NOW)
    with pytest.raises(PayloadError, match="not JSON"):
        webhooks.normalise(CONN, b"[" * 100_000 + b"]" * 100_000, headers, NOW)
    odd = json.dumps(
        {
            "id": 9,
            "created_at": NOW.isoformat(),
            "line_items": [{"id": 1, "variant_id": 999999, "sku": ["SKU-1"], "quantity": 1}],
        }
    ).encode()
    with pytest.raises(PayloadError, match="not mapped"):
        webhooks.normalise(CONN, odd, headers, NOW)


# -- refunds and cancellations ----------------------------------------------------------------------------

SOLD = [line(11, "SKU-1", 3), line(12, "SKU-2", 1)]


def test_a_refund_that_restocks_undoes_part_of_the_sale() -> None:
    payload = refund(55, 77, [(SOLD[0], 2, "return"), (SOLD[1], 1, "no_restock")], NOW)
    body, headers = refund_webhook(CONN, payload)
    assert webhooks.verify(SECRET, body, headers)
    [event] = webhooks.normalise(CONN, body, headers, NOW)
    assert isinstance(event, OrderCancelled)
    assert (event.event_id, event.sale_event_id, event.sku, event.quantity) == (
        "shop-acme:refund:55:line:5501",
        "shop-acme:order:77:line:11",
        "SKU-1",
        2,
    )
    assert event.occurred_at == NOW


def test_a_cancelled_order_and_its_refund_give_the_same_events() -> None:
    """Subscribed to both topics, the same refund line item arrives twice: same ids, restocked once."""
    refunds = [refund(56, 77, [(SOLD[0], 3, "cancel"), (SOLD[1], 1, "cancel")], NOW)]
    cancelled = webhooks.normalise(CONN, *cancelled_webhook(CONN, 77, SOLD, refunds, NOW), NOW)
    refunded = webhooks.normalise(CONN, *refund_webhook(CONN, refunds[0]), NOW)
    assert [e.event_id for e in cancelled] == [e.event_id for e in refunded]
    assert [(e.sku, e.quantity) for e in cancelled] == [("SKU-1", 3), ("SKU-2", 1)]


def test_a_cancellation_without_restock_changes_no_stock() -> None:
    refunds = [refund(57, 77, [(SOLD[0], 3, "no_restock")], NOW)]
    assert webhooks.normalise(CONN, *cancelled_webhook(CONN, 77, SOLD, refunds, NOW), NOW) == []
    assert webhooks.normalise(CONN, *cancelled_webhook(CONN, 77, SOLD, [], NOW), NOW) == []


def test_the_simulator_cancels_with_restock_on_its_own_count() -> None:
    sim = ShopifySimulator(access_token="t")
    sim.available = {"gid://shopify/InventoryItem/9001": 10}
    sim.place_order(CONN, 9, [("SKU-1", 4)], NOW)
    assert sim.available["gid://shopify/InventoryItem/9001"] == 6
    events = webhooks.normalise(CONN, *sim.cancel_order(CONN, 9, NOW), NOW)
    assert sim.available["gid://shopify/InventoryItem/9001"] == 10
    assert [(e.sale_event_id, e.quantity) for e in events if isinstance(e, OrderCancelled)] == [
        ("shop-acme:order:9:line:901", 4)
    ]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"restock_type": "restock_everything"}, "not one Shopify documents"),
        ({"quantity": 0}, "not a positive whole number"),
        ({"line_item_id": None}, "line_item_id"),
        ({"line_item": {"variant_id": 999999, "sku": "NOPE"}}, "not mapped"),
    ],
)
def test_unusable_refund_lines_are_refused_with_a_reason(change: dict[str, Any], complaint: str) -> None:
    payload = refund(58, 77, [(SOLD[0], 1, "return")], NOW)
    payload["refund_line_items"][0].update(change)
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, *refund_webhook(CONN, payload), NOW)


# -- inventory levels: drift signals ----------------------------------------------------------------------


def level(item: int = 9001, location: int = 1, available: Any = 6) -> tuple[bytes, dict[str, str]]:
    payload = {
        "inventory_item_id": item,
        "location_id": location,
        "available": available,
        "updated_at": NOW.isoformat(),
        "admin_graphql_api_id": f"gid://shopify/InventoryLevel/{location}?inventory_item_id={item}",
    }
    body = json.dumps(payload).encode()
    return body, {
        webhooks.SIGNATURE_HEADER: webhooks.sign(SECRET, body),
        webhooks.TOPIC_HEADER: "inventory_levels/update",
    }


def test_an_inventory_level_of_a_listed_item_is_a_drift_signal() -> None:
    [event] = webhooks.normalise(CONN, *level(available=6), NOW)
    assert isinstance(event, StockObserved)
    assert (event.sku, event.quantity, event.channel, event.connection_id) == (
        "SKU-1",
        6,
        "shopify",
        "shop-acme",
    )
    assert event.event_id == f"shop-acme:level:9001:1:{NOW.isoformat()}"


def test_levels_of_other_locations_and_unlisted_items_are_not_ours() -> None:
    assert webhooks.normalise(CONN, *level(location=2), NOW) == []
    assert webhooks.normalise(CONN, *level(item=123), NOW) == []
    with pytest.raises(PayloadError, match="not a whole number from 0 to 2147483647"):
        webhooks.normalise(CONN, *level(available=-1), NOW)


# -- fuzz: every topic, arbitrary and mutated bodies --------------------------------------------------------

REALISTIC: dict[str, Any] = {
    "orders/create": json.loads(order_webhook(CONN, 77, SOLD, NOW)[0]),
    "refunds/create": refund(59, 77, [(SOLD[0], 2, "return"), (SOLD[1], 1, "cancel")], NOW),
    "orders/cancelled": json.loads(
        cancelled_webhook(CONN, 77, SOLD, [refund(60, 77, [(SOLD[0], 3, "cancel")], NOW)], NOW)[0]
    ),
    "inventory_levels/update": json.loads(level()[0]),
}


@st.composite
def signed_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    topic = draw(st.sampled_from([*webhooks.HANDLED_TOPICS, "products/update"]))
    kind = draw(st.sampled_from(["mutated", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80)), topic
    if kind == "json":
        return json.dumps(draw(json_values())).encode(), topic
    document = copy.deepcopy(REALISTIC.get(topic, REALISTIC["orders/create"]))
    for _ in range(draw(st.integers(1, 3))):
        mutate(draw(st.data()), document, json_values(max_leaves=6))
    return json.dumps(document).encode(), topic


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signed_bodies())
def test_normalise_returns_events_or_payload_error(sample: tuple[bytes, str]) -> None:
    body, topic = sample
    events = published(lambda: webhooks.normalise(CONN, body, {webhooks.TOPIC_HEADER: topic}, NOW))
    if events is None:
        return
    assert all(e.sku in CONN.listings and e.tenant == CONN.tenant for e in events)
    assert all(0 <= e.quantity <= MAX_QUANTITY for e in events)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from([webhooks.SIGNATURE_HEADER, "X-Other"]), st.text(max_size=60)),
    st.binary(max_size=64),
)
def test_verify_never_raises(headers: dict[str, str], body: bytes) -> None:
    assert webhooks.verify(SECRET, body, headers) is False
