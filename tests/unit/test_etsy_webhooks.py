"""Etsy webhook signature (Standard Webhooks), and normalisation of expanded receipts (pure, no I/O)."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.connection import Connection, Listing
from channels.errors import PayloadError
from channels.etsy import webhooks
from lab.marketplaces.etsy import build_receipt, order_webhook, sample_connection
from schemas.inventory_events import OrderCancelled
from tests.channel_kit import json_values, parent_of, published

CONN = sample_connection("http://127.0.0.1:1", skus=("SKU-1", "SKU-2", "SKU-3"))
SECRET = CONN.webhook_secret.get_secret_value()
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
# Two variations of one Etsy listing, told apart by their SKUs on Etsy.
VARIANTS = CONN.model_copy(
    update={
        "listings": {
            **CONN.listings,
            "TEE-S": Listing(listing_id="1600000001", inventory_ref="tee-small"),
            "TEE-M": Listing(listing_id="1600000001", inventory_ref="tee-medium"),
        }
    }
)

# The Standard Webhooks specification's published test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_HEADERS = {
    "webhook-id": VECTOR_ID,
    "webhook-timestamp": str(VECTOR_TS),
    "webhook-signature": VECTOR_SIGNATURE,
}
VECTOR_NOW = datetime.fromtimestamp(VECTOR_TS, UTC)


def expanded(
    event_type: str = "order.paid",
    lines: list[tuple[str, int]] | None = None,
    receipt_id: int = 77,
    connection: Connection = CONN,
) -> dict[str, Any]:
    body, _ = order_webhook(connection, event_type, receipt_id, NOW)
    receipt = build_receipt(connection, receipt_id, lines or [("SKU-1", 2), ("SKU-2", 5)], NOW)
    return {**json.loads(body), "receipt": receipt}


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def test_standard_webhooks_published_vector_is_accepted() -> None:
    assert webhooks.verify(VECTOR_SECRET, VECTOR_BODY, VECTOR_HEADERS, now=VECTOR_NOW)
    # The same key without the whsec_ prefix, and header names in any case.
    shouted = {k.upper(): v for k, v in VECTOR_HEADERS.items()}
    assert webhooks.verify("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", VECTOR_BODY, shouted, now=VECTOR_NOW)
    assert webhooks.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE


def test_signature_computed_from_the_documented_algorithm_is_accepted() -> None:
    body, headers = order_webhook(CONN, "order.paid", 5, NOW)
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == expected
    assert webhooks.verify(SECRET, body, {**headers, "webhook-signature": expected}, now=NOW)


def test_any_valid_entry_of_a_rotation_list_is_enough() -> None:
    rotated = f"v1,bm90LXRoZS1yaWdodC1zaWduYXR1cmU= v1a,ZWQyNTUxOQ== {VECTOR_SIGNATURE}"
    assert webhooks.verify(
        VECTOR_SECRET, VECTOR_BODY, {**VECTOR_HEADERS, "webhook-signature": rotated}, now=VECTOR_NOW
    )


def test_forgeries_are_rejected() -> None:
    def ok(secret: str = VECTOR_SECRET, body: bytes = VECTOR_BODY, **changed: str) -> bool:
        headers = {**VECTOR_HEADERS, **{k.replace("_", "-"): v for k, v in changed.items()}}
        return webhooks.verify(secret, body, {k: v for k, v in headers.items() if v}, now=VECTOR_NOW)

    assert ok()
    assert not ok(body=b'{"test": 2432232315}')  # one byte flipped
    assert not ok(secret=SECRET)  # another endpoint's secret
    assert not ok(secret="whsec_!!!not-base64")
    assert not ok(secret="")
    assert not ok(webhook_id="")  # headers missing
    assert not ok(webhook_timestamp="")
    assert not ok(webhook_signature="")
    assert not ok(webhook_id="msg_other")  # the id is signed too
    assert not ok(webhook_signature=VECTOR_SIGNATURE.replace("v1,", "v2,"))
    assert not ok(webhook_signature=VECTOR_SIGNATURE.removeprefix("v1,"))
    assert not ok(webhook_timestamp="1614265330.0")
    assert not ok(webhook_timestamp="-1614265330")


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        (timedelta(0), True),
        (timedelta(minutes=4, seconds=59), True),
        (timedelta(minutes=5, seconds=1), False),
    ],
)
def test_replay_window_is_five_minutes_either_way(offset: timedelta, accepted: bool) -> None:
    for now in (VECTOR_NOW + offset, VECTOR_NOW - offset):
        assert webhooks.verify(VECTOR_SECRET, VECTOR_BODY, VECTOR_HEADERS, now=now) is accepted


def test_stale_delivery_is_rejected_at_the_current_time() -> None:
    assert not webhooks.verify(VECTOR_SECRET, VECTOR_BODY, VECTOR_HEADERS)  # 2021: far outside the window


def test_paid_receipt_gives_one_sale_per_transaction() -> None:
    events = webhooks.normalise(CONN, encode(expanded()), {}, NOW)
    assert [(e.type, e.event_id, e.sku, e.quantity, e.order_id, e.line_id) for e in events] == [
        ("order_placed", "etsy-acme:order:77:line:7701", "SKU-1", 2, "77", "7701"),
        ("order_placed", "etsy-acme:order:77:line:7702", "SKU-2", 5, "77", "7702"),
    ]
    assert {(e.tenant, e.channel, e.connection_id, e.occurred_at) for e in events} == {
        ("acme", "etsy", "etsy-acme", NOW)
    }
    again = webhooks.normalise(CONN, encode(expanded()), {}, datetime.now(UTC))
    assert [e.event_id for e in again] == [e.event_id for e in events]


def test_canceled_receipt_restocks_every_transaction() -> None:
    payload = expanded("order.canceled")
    later = NOW + timedelta(hours=2)
    payload["receipt"].update(status="canceled", update_timestamp=int(later.timestamp()))
    events = webhooks.normalise(CONN, encode(payload), {}, later)
    cancels = [e for e in events if isinstance(e, OrderCancelled)]
    assert len(cancels) == len(events)
    assert [(e.type, e.event_id, e.sale_event_id, e.sku, e.quantity) for e in cancels] == [
        ("order_cancelled", "etsy-acme:cancel:77:line:7701", "etsy-acme:order:77:line:7701", "SKU-1", 2),
        ("order_cancelled", "etsy-acme:cancel:77:line:7702", "etsy-acme:order:77:line:7702", "SKU-2", 5),
    ]
    assert {e.occurred_at for e in events} == {later}


def test_etsy_event_list_spelling_is_accepted() -> None:
    payload = {**expanded(), "event_type": "ORDER_PAID"}
    assert len(webhooks.normalise(CONN, encode(payload), {}, NOW)) == 2


def test_variations_of_one_listing_are_told_apart_by_etsy_sku() -> None:
    payload = expanded(lines=[("TEE-S", 1), ("TEE-M", 3)], connection=VARIANTS)
    events = webhooks.normalise(VARIANTS, encode(payload), {}, NOW)
    assert [(e.sku, e.quantity) for e in events] == [("TEE-S", 1), ("TEE-M", 3)]


def test_sku_found_by_etsy_sku_when_listing_unknown() -> None:
    payload = expanded()
    payload["receipt"]["transactions"][0]["listing_id"] = 999
    payload["receipt"]["transactions"][0]["sku"] = "SKU-3"
    assert [e.sku for e in webhooks.normalise(CONN, encode(payload), {}, NOW)] == ["SKU-3", "SKU-2"]


def _tx(edit: Any) -> bytes:
    payload = expanded()
    edit(payload["receipt"]["transactions"][0])
    return encode(payload)


def _receipt(edit: Any) -> bytes:
    payload = expanded()
    edit(payload["receipt"])
    return encode(payload)


def _top(edit: Any) -> bytes:
    payload = expanded()
    edit(payload)
    return encode(payload)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"{nope", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[1]", "not a JSON object"),
        (_top(lambda p: p.update(event_type="order.shipped")), "not handled"),
        (_top(lambda p: p.pop("event_type")), "not handled"),
        (_top(lambda p: p.update(shop_id=1)), "is shop"),
        (_top(lambda p: p.pop("receipt")), "expand it first"),
        (_top(lambda p: p.update(receipt=[])), "'receipt'"),
        (_receipt(lambda r: r.pop("receipt_id")), "receipt_id"),
        (_receipt(lambda r: r.update(receipt_id=-3)), "receipt_id"),
        (_receipt(lambda r: r.update(create_timestamp="2026-11-23T12:00:00")), "Unix timestamp"),
        (_receipt(lambda r: r.update(create_timestamp=0)), "Unix timestamp"),  # as payload.epoch_seconds
        (_receipt(lambda r: r.update(create_timestamp=10**30)), "out of range"),
        (_receipt(lambda r: r.update(transactions={})), "not a list"),
        (_receipt(lambda r: r.update(transactions=[])), "no transactions"),
        (_receipt(lambda r: r.update(transactions=[7])), "not a JSON object"),
        (_tx(lambda t: t.pop("transaction_id")), "transaction_id"),
        (_tx(lambda t: t.update(quantity=0)), "not a positive whole number"),
        (_tx(lambda t: t.update(quantity=-1)), "not a positive whole number"),
        (_tx(lambda t: t.update(quantity=2.0)), "not a positive whole number"),
        (_tx(lambda t: t.pop("quantity")), "not a positive whole number"),
        (_tx(lambda t: t.update(listing_id=999, sku="NOPE")), "not mapped"),
    ],
)
def test_unusable_webhooks_are_refused_with_a_reason(body: bytes, complaint: str) -> None:
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body, {}, NOW)


def test_ambiguous_variation_without_its_etsy_sku_is_refused() -> None:
    payload = expanded(lines=[("TEE-S", 1)], connection=VARIANTS)
    payload["receipt"]["transactions"][0]["sku"] = None
    with pytest.raises(PayloadError, match="inventory_ref tells the products"):
        webhooks.normalise(VARIANTS, encode(payload), {}, NOW)


JSON = json_values()
REALISTIC = expanded(lines=[("SKU-1", 2), ("SKU-2", 1)])
PATHS: list[tuple[Any, ...]] = [
    ("event_type",),
    ("shop_id",),
    ("receipt",),
    ("receipt", "receipt_id"),
    ("receipt", "create_timestamp"),
    ("receipt", "update_timestamp"),
    ("receipt", "transactions"),
    ("receipt", "transactions", 0),
    ("receipt", "transactions", 0, "transaction_id"),
    ("receipt", "transactions", 0, "listing_id"),
    ("receipt", "transactions", 0, "sku"),
    ("receipt", "transactions", 1, "quantity"),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    payload = copy.deepcopy(REALISTIC)
    if draw(st.booleans()):
        payload["event_type"] = "order.canceled"
    path = draw(st.sampled_from(PATHS))
    parent_of(payload, path)[path[-1]] = draw(JSON)
    return encode(payload)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON.map(lambda v: json.dumps(v).encode()), mutated(), st.binary(max_size=64)))
def test_normalise_returns_events_or_payload_error(body: bytes) -> None:
    events = published(lambda: webhooks.normalise(VARIANTS, body, {}, NOW))
    if events is None:
        return
    assert events
    assert all(e.sku in VARIANTS.listings and e.quantity > 0 for e in events)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(VECTOR_HEADERS)), st.text(max_size=80)), st.binary(max_size=32))
def test_verify_never_raises(headers: dict[str, str], body: bytes) -> None:
    assert webhooks.verify(VECTOR_SECRET, body, headers, now=VECTOR_NOW) is False
