"""WooCommerce webhook signature and normalisation (pure functions, no I/O)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.errors import PayloadError
from channels.woocommerce import webhooks
from lab.marketplaces.woocommerce import order_webhook, sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import json_values, published

CONN = sample_connection("https://shop.example", skus=("SKU-1", "SKU-2", "SKU-3"))
SECRET = CONN.webhook_secret.get_secret_value()
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def line(n: int, sku: str = "SKU-1", quantity: Any = 1, **extra: Any) -> dict[str, Any]:
    """A REST v3 line item for `sku` (simple product, or variation of its parent)."""
    listing = CONN.listings[sku]
    if listing.inventory_ref:
        parent, _, variation = listing.inventory_ref.partition("/")
        ids = {"product_id": int(parent), "variation_id": int(variation)}
    else:
        ids = {"product_id": int(listing.listing_id), "variation_id": 0}
    return {"id": n, "name": sku, **ids, "quantity": quantity, "sku": sku, **extra}


def order(order_id: int = 727, items: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": order_id,
        "parent_id": 0,
        "status": "processing",
        "currency": "EUR",
        "date_created": "2026-11-23T13:00:00",  # site-local (Europe/Paris): must not be used
        "date_created_gmt": "2026-11-23T12:00:00",
        "date_modified": "2026-11-23T14:30:00",
        "date_modified_gmt": "2026-11-23T13:30:00",
        "line_items": [line(1)] if items is None else items,
        **extra,
    }


def webhook(payload: Any, topic: str = "order.created") -> tuple[bytes, dict[str, str]]:
    return order_webhook(CONN, payload, topic)


# -- signature -------------------------------------------------------------------------------------------


def test_signature_matches_an_independent_computation_of_the_documented_algorithm() -> None:
    body = b'{"id":727,"status":"processing"}'
    expected = base64.b64encode(hmac.new(b"s3cr3t", body, hashlib.sha256).digest()).decode()
    assert webhooks.verify("s3cr3t", body, {"X-WC-Webhook-Signature": expected})
    # header names are case-insensitive on the wire
    assert webhooks.verify("s3cr3t", body, {"x-wc-webhook-signature": expected})
    assert webhooks.sign("s3cr3t", body) == expected


def test_signature_round_trip_and_forgeries() -> None:
    body, headers = webhook(order())
    assert webhooks.verify(SECRET, body, headers)
    flipped = bytes([body[0] ^ 0x01]) + body[1:]
    assert not webhooks.verify(SECRET, flipped, headers)
    assert not webhooks.verify(SECRET, body[:-1] + b" ", headers)
    assert not webhooks.verify("another-secret", body, headers)
    assert not webhooks.verify("", body, headers)
    missing = {k: v for k, v in headers.items() if k != webhooks.SIGNATURE_HEADER}
    assert not webhooks.verify(SECRET, body, missing)
    assert not webhooks.verify(SECRET, body, {**headers, webhooks.SIGNATURE_HEADER: ""})
    assert not webhooks.verify(SECRET, body, {**headers, webhooks.SIGNATURE_HEADER: "not base64 at all é"})


def test_no_timestamp_means_no_replay_window() -> None:
    """WooCommerce signs no time: an old delivery still verifies, whatever `now` is (documented)."""
    body, headers = webhook(order())
    assert webhooks.verify(SECRET, body, headers, now=NOW + timedelta(days=30))


# -- normalisation ---------------------------------------------------------------------------------------


def test_one_sale_per_line_with_stable_ids_mapped_skus_and_utc_time() -> None:
    body, headers = webhook(order(727, [line(11, "SKU-1", 2), line(12, "SKU-2", 5)]))
    events = webhooks.normalise(CONN, body, headers, NOW)
    assert all(isinstance(e, OrderPlaced) for e in events)
    assert [(e.event_id, e.sku, e.quantity, e.order_id, e.line_id) for e in events] == [
        ("woocommerce-acme:order:727:line:11", "SKU-1", 2, "727", "11"),
        ("woocommerce-acme:order:727:line:12", "SKU-2", 5, "727", "12"),
    ]
    assert {(e.tenant, e.connection_id, e.channel) for e in events} == {
        ("acme", "woocommerce-acme", "woocommerce")
    }
    # date_created_gmt read as UTC; the site-local date_created is ignored
    assert {e.occurred_at for e in events} == {datetime(2026, 11, 23, 12, 0, tzinfo=UTC)}
    assert {e.received_at for e in events} == {NOW}
    # a new delivery (new Delivery-ID) of the same order gives the same ids
    again_body, again_headers = webhook(order(727, [line(11, "SKU-1", 2), line(12, "SKU-2", 5)]))
    assert again_headers[webhooks.DELIVERY_ID_HEADER] != headers[webhooks.DELIVERY_ID_HEADER]
    again = webhooks.normalise(CONN, again_body, again_headers, NOW + timedelta(minutes=1))
    assert [e.event_id for e in again] == [e.event_id for e in events]


def test_variation_id_wins_over_product_id() -> None:
    variation = line(1, "SKU-2")
    assert variation["variation_id"] != 0
    body, headers = webhook(order(items=[variation]))
    assert [e.sku for e in webhooks.normalise(CONN, body, headers, NOW)] == ["SKU-2"]


def test_seller_sku_is_the_fallback_when_the_product_is_unknown() -> None:
    stray = {"id": 1, "product_id": 999999, "variation_id": 0, "quantity": 1, "sku": "SKU-3"}
    body, headers = webhook(order(items=[stray]))
    assert [e.sku for e in webhooks.normalise(CONN, body, headers, NOW)] == ["SKU-3"]


def test_an_offset_if_present_is_honoured() -> None:
    body, headers = webhook(order(date_created_gmt="2026-11-23T14:00:00+02:00"))
    (event,) = webhooks.normalise(CONN, body, headers, NOW)
    assert event.occurred_at == datetime(2026, 11, 23, 14, 0, tzinfo=timezone(timedelta(hours=2)))


@pytest.mark.parametrize("status", ["cancelled", "refunded"])
def test_cancelled_or_refunded_orders_restock_every_line(status: str) -> None:
    body, headers = webhook(
        order(88, [line(1, "SKU-1", 2), line(2, "SKU-2", 1)], status=status), "order.updated"
    )
    events = webhooks.normalise(CONN, body, headers, NOW)
    cancels = [e for e in events if isinstance(e, OrderCancelled)]
    assert len(cancels) == len(events)
    assert [(e.event_id, e.sale_event_id, e.sku, e.quantity) for e in cancels] == [
        ("woocommerce-acme:cancel:88:line:1", "woocommerce-acme:order:88:line:1", "SKU-1", 2),
        ("woocommerce-acme:cancel:88:line:2", "woocommerce-acme:order:88:line:2", "SKU-2", 1),
    ]
    # the cancellation happened when the order was last modified
    assert {e.occurred_at for e in events} == {datetime(2026, 11, 23, 13, 30, tzinfo=UTC)}


def test_an_update_of_a_live_order_reasserts_the_sale_under_the_same_ids() -> None:
    created = webhooks.normalise(CONN, *webhook(order(5, status="pending")), NOW)
    updated = webhooks.normalise(CONN, *webhook(order(5, status="completed"), "order.updated"), NOW)
    assert [e.event_id for e in updated] == [e.event_id for e in created]
    assert all(isinstance(e, OrderPlaced) for e in updated)


def test_checkout_drafts_are_not_orders() -> None:
    body, headers = webhook(order(status="checkout-draft"))
    assert webhooks.normalise(CONN, body, headers, NOW) == []


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (
            order(items=[{"id": 1, "product_id": 1, "variation_id": 0, "sku": "NOPE", "quantity": 1}]),
            "not mapped",
        ),
        (order(items=[line(1, quantity=0)]), "not a positive whole number"),
        (order(items=[line(1, quantity=-2)]), "not a positive whole number"),
        (order(items=[line(1, quantity=1.5)]), "not a positive whole number"),
        (order(items=[line(1, quantity="2")]), "not a positive whole number"),
        (order(items=[line(1, quantity=True)]), "not a positive whole number"),
        (order(items=[{k: v for k, v in line(1).items() if k != "quantity"}]), "not a positive whole number"),
        (order(items=[{k: v for k, v in line(1).items() if k != "id"}]), "line item id"),
        (order(items=["SKU-1"]), "not an object"),
        (order(items=[]), "no line items"),
        (order(items=[{**line(1), "product_id": 9999, "sku": ["SKU-1"]}]), "not mapped"),  # unhashable sku
        ({k: v for k, v in order().items() if k != "line_items"}, "no 'line_items' list"),
        ({k: v for k, v in order().items() if k != "id"}, "order id"),
        (order(order_id=-1), "order id"),
        (order(status=None), "status"),
        (order(date_created_gmt=None), "no date_created_gmt"),
        (order(date_created_gmt="yesterday"), "not an ISO-8601 timestamp"),
        (order(status="cancelled", date_modified_gmt=None), "no date_modified_gmt"),
        ([order()], "not a WooCommerce order: expected a JSON object"),
    ],
)
def test_unusable_orders_are_refused_with_a_reason(payload: Any, complaint: str) -> None:
    body, headers = webhook(payload)
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body, headers, NOW)


def test_non_json_and_unhandled_topics_are_refused() -> None:
    body, headers = webhook(order())
    with pytest.raises(PayloadError, match="not JSON"):
        webhooks.normalise(CONN, b"{nope", headers, NOW)
    with pytest.raises(PayloadError, match="not JSON"):
        webhooks.normalise(CONN, b"\xff\xfe", headers, NOW)
    with pytest.raises(PayloadError, match="not JSON"):
        webhooks.normalise(CONN, b"[" * 100_000, headers, NOW)
    for topic in ("product.updated", "order.deleted", "action.woocommerce_add_to_cart"):
        with pytest.raises(PayloadError, match="not handled"):
            webhooks.normalise(CONN, body, {**headers, webhooks.TOPIC_HEADER: topic}, NOW)
    no_topic = {k: v for k, v in headers.items() if k != webhooks.TOPIC_HEADER}
    with pytest.raises(PayloadError, match="not handled"):
        webhooks.normalise(CONN, body, no_topic, NOW)


def test_the_creation_ping_is_not_an_order() -> None:
    """WooCommerce pings a new webhook with a form body ``webhook_id=N`` and no topic header."""
    with pytest.raises(PayloadError, match="not handled"):
        webhooks.normalise(CONN, b"webhook_id=3", {"Content-Type": "application/x-www-form-urlencoded"}, NOW)


# -- nothing but PayloadError escapes --------------------------------------------------------------------

JSON = json_values(max_key=10, allow_nan=True)
FIELDS = st.sampled_from(
    ["id", "status", "date_created_gmt", "date_modified_gmt", "line_items", "quantity", "product_id",
     "variation_id", "sku"]
)  # fmt: skip


def _outcome(body: bytes, topic: str) -> None:
    events = published(lambda: webhooks.normalise(CONN, body, {webhooks.TOPIC_HEADER: topic}, NOW))
    if events is None:
        return
    assert isinstance(events, list)
    assert all(isinstance(e, OrderPlaced | OrderCancelled) for e in events)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(payload=JSON, topic=st.sampled_from(["order.created", "order.updated"]))
def test_arbitrary_json_either_normalises_or_is_a_payload_error(payload: Any, topic: str) -> None:
    _outcome(json.dumps(payload).encode(), topic)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=FIELDS,
    value=JSON,
    in_line=st.booleans(),
    status=st.sampled_from(["processing", "cancelled", "refunded", "checkout-draft", "failed"]),
)
def test_mutated_real_orders_either_normalise_or_are_payload_errors(
    key: str, value: Any, in_line: bool, status: str
) -> None:
    payload = order(3, [line(1, "SKU-1", 2), line(2, "SKU-2", 1)], status=status)
    target = payload["line_items"][1] if in_line else payload
    target[key] = value
    _outcome(json.dumps(payload).encode(), "order.updated")


@settings(max_examples=200)
@given(body=st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_verify_or_normalise(body: bytes) -> None:
    assert webhooks.verify(SECRET, body, {webhooks.SIGNATURE_HEADER: "x"}) is False
    _outcome(body, "order.created")
