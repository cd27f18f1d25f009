"""TikTok Shop notification signature and normalisation (pure functions, no I/O)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.errors import PayloadError
from channels.tiktok import webhooks
from lab.marketplaces.tiktok import sample_connection
from schemas.inventory_events import OrderCancelled, OrderPlaced
from tests.channel_kit import json_values, mutate, published

CONN = sample_connection("http://127.0.0.1:1", skus=("SKU-1", "SKU-2", "SKU-3"))
SECRET = CONN.webhook_secret.get_secret_value()
APP_KEY = CONN.options["app_key"]
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CREATED = 1_795_000_000  # 2026-11-18T09:46:40Z
ORDER = "576859029223086481"


def line(line_id: str, sku: str = "SKU-1", **extra: object) -> dict[str, object]:
    listing = CONN.listings[sku]
    return {
        "id": line_id,
        "product_id": listing.listing_id,
        "sku_id": listing.inventory_ref,
        "seller_sku": f"seller-{sku}",
        "display_status": "AWAITING_SHIPMENT",
        **extra,
    }


def notification(order_id: str = ORDER, status: str = "AWAITING_SHIPMENT") -> dict[str, Any]:
    return {
        "type": 1,
        "tts_notification_id": "7327112393057371910",
        "shop_id": "7494049642642441621",
        "timestamp": CREATED + 5,
        "data": {"order_id": order_id, "order_status": status, "is_on_hold_order": False},
    }


def expanded(lines: list[Any], *, status: str = "AWAITING_SHIPMENT", **order: object) -> dict[str, Any]:
    return {
        **notification(status=status),
        "order": {"id": ORDER, "status": status, "create_time": CREATED, "line_items": lines, **order},
    }


def patched(doc: dict[str, Any], **order: object) -> dict[str, Any]:
    doc["order"].update(order)
    return doc


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_signature_follows_the_documented_algorithm_and_rejects_forgeries() -> None:
    raw = body(notification())
    # TikTok: lowercase hex HMAC-SHA256, key = app secret, message = app_key followed by the raw body
    expected = hmac.new(b"app-secret", b"app-key" + raw, hashlib.sha256).hexdigest()
    headers = {"Authorization": expected}
    assert webhooks.sign("app-secret", "app-key", raw) == expected
    assert webhooks.verify("app-secret", raw, headers, app_key="app-key")
    assert webhooks.verify("app-secret", raw, {"Authorization": expected.upper()}, app_key="app-key")
    flipped = bytes([raw[0] ^ 1]) + raw[1:]
    assert not webhooks.verify("app-secret", flipped, headers, app_key="app-key")
    assert not webhooks.verify("another-secret", raw, headers, app_key="app-key")
    assert not webhooks.verify("app-secret", raw, headers, app_key="another-key")
    assert not webhooks.verify("app-secret", raw, headers)  # no app key: nothing can be checked
    assert not webhooks.verify("app-secret", raw, {}, app_key="app-key")
    assert not webhooks.verify("app-secret", raw, {"Authorization": "Bearer x"}, app_key="app-key")
    assert not webhooks.verify("app-secret", raw, {"Authorization": "é" * 64}, app_key="app-key")


def test_verifier_binds_the_connection_app_key() -> None:
    raw = body(notification())
    headers = {"Authorization": hmac.new(SECRET.encode(), APP_KEY.encode() + raw, hashlib.sha256).hexdigest()}
    check = webhooks.verifier(CONN)
    assert check(SECRET, raw, headers)
    assert not check(SECRET, raw + b" ", headers)


def test_one_event_per_unit_line_with_stable_ids() -> None:
    doc = expanded([line("1001"), line("1002"), line("1003", "SKU-2")])
    events = webhooks.normalise(CONN, body(doc), {}, NOW)
    assert all(isinstance(e, OrderPlaced) for e in events)
    assert [(e.event_id, e.sku, e.quantity, e.tenant, e.channel) for e in events] == [
        (f"tiktok-acme:order:{ORDER}:line:1001", "SKU-1", 1, "acme", "tiktok"),
        (f"tiktok-acme:order:{ORDER}:line:1002", "SKU-1", 1, "acme", "tiktok"),
        (f"tiktok-acme:order:{ORDER}:line:1003", "SKU-2", 1, "acme", "tiktok"),
    ]
    assert {e.occurred_at for e in events} == {datetime.fromtimestamp(CREATED, tz=UTC)}
    assert {e.received_at for e in events} == {NOW}
    again = webhooks.normalise(CONN, body(doc), {}, datetime.now(UTC))
    assert [e.event_id for e in again] == [e.event_id for e in events]


def test_a_quantity_is_honoured_where_tiktok_sends_one() -> None:
    events = webhooks.normalise(CONN, body(expanded([line("77", "SKU-3", quantity=4)])), {}, NOW)
    assert [(e.sku, e.quantity) for e in events] == [("SKU-3", 4)]


def test_a_cancelled_order_restocks_every_line_with_the_sale_ids() -> None:
    doc = expanded(
        [line("1001", display_status="CANCELLED"), line("1002", "SKU-2")],
        status="CANCELLED",
        cancel_time=CREATED + 600,
    )
    events = webhooks.normalise(CONN, body(doc), {}, NOW)
    assert all(isinstance(e, OrderCancelled) for e in events)
    assert [(e.event_id, e.sale_event_id, e.sku) for e in events if isinstance(e, OrderCancelled)] == [
        (f"tiktok-acme:cancel:{ORDER}:line:1001", f"tiktok-acme:order:{ORDER}:line:1001", "SKU-1"),
        (f"tiktok-acme:cancel:{ORDER}:line:1002", f"tiktok-acme:order:{ORDER}:line:1002", "SKU-2"),
    ]
    assert {e.occurred_at for e in events} == {datetime.fromtimestamp(CREATED + 600, tz=UTC)}


def test_one_cancelled_line_of_a_live_order() -> None:
    doc = expanded([line("1", display_status="CANCELLED"), line("2")], update_time=CREATED + 60)
    events = webhooks.normalise(CONN, body(doc), {}, NOW)
    assert [type(e).__name__ for e in events] == ["OrderCancelled", "OrderPlaced"]


def test_seller_sku_is_a_fallback_only_when_it_is_a_master_sku() -> None:
    doc = expanded([{"id": "9", "sku_id": "unknown", "seller_sku": "SKU-3"}])
    assert [e.sku for e in webhooks.normalise(CONN, body(doc), {}, NOW)] == ["SKU-3"]


def test_a_thin_notification_must_be_expanded_first() -> None:
    with pytest.raises(PayloadError, match="expand"):
        webhooks.normalise(CONN, body(notification()), {}, NOW)


@pytest.mark.parametrize(
    ("doc", "complaint"),
    [
        (expanded([{"id": "1", "sku_id": "999", "seller_sku": "NOPE"}]), "not mapped"),
        (expanded([line("1", quantity=0)]), "not a positive whole number"),
        (expanded([line("1", quantity=-2)]), "not a positive whole number"),
        (expanded([line("1", quantity="2")]), "not a positive whole number"),
        (expanded([line("1", quantity=True)]), "not a positive whole number"),
        (expanded([]), "no line items"),
        (expanded([line("1"), line("1")]), "appears twice"),
        (expanded([line("1:2")]), "not an id"),
        (expanded([line("1")], create_time="2026-11-23T12:00:00"), "not a Unix timestamp"),
        (expanded([line("1")], create_time=10**20), "out of range"),
        (expanded([line("1", display_status="CANCELLED")], cancel_time=None), "cancel_time"),
        (expanded([line("1")], id="123"), "not the notified order"),
        (patched(expanded([line("1")]), status=None), "not an order status"),
        (expanded(["line"]), "not an object"),
        ({**expanded([line("1")]), "type": 2}, "not handled"),
        ({**expanded([line("1")]), "type": True}, "not handled"),
        ({**expanded([line("1")]), "data": []}, "no 'data' object"),
        ({**expanded([line("1")]), "order": "576859029223086481"}, "not an object"),
    ],
)
def test_unusable_notifications_are_refused_with_a_reason(doc: dict[str, Any], complaint: str) -> None:
    with pytest.raises(PayloadError, match=complaint):
        webhooks.normalise(CONN, body(doc), {}, NOW)


@pytest.mark.parametrize("raw", [b"{nope", b"\xff\xfe", b"[1, 2]", b"[" * 100_000])
def test_bodies_that_are_not_json_objects_are_refused(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        webhooks.normalise(CONN, raw, {}, NOW)


def test_a_naive_receipt_time_is_a_payload_error_not_a_crash() -> None:
    with pytest.raises(PayloadError):
        webhooks.normalise(CONN, body(expanded([line("1")])), {}, datetime(2026, 1, 1))  # noqa: DTZ001


JSON = json_values(max_text=12, max_key=10, max_leaves=25)


def _normalises_or_refuses(raw: bytes) -> None:
    events = published(lambda: webhooks.normalise(CONN, raw, {}, NOW))
    if events is None:
        return
    assert isinstance(events, list)


@settings(max_examples=300, deadline=None, database=None)
@given(JSON)
def test_arbitrary_json_never_escapes_as_anything_but_payload_error(doc: object) -> None:
    _normalises_or_refuses(json.dumps(doc).encode())


@settings(max_examples=300, deadline=None, database=None)
@given(st.data())
def test_mutated_real_notifications_never_escape_as_anything_but_payload_error(data: st.DataObject) -> None:
    doc = expanded([line("1001"), line("1002", "SKU-2", quantity=3)], update_time=CREATED)
    mutate(data, doc, JSON)
    _normalises_or_refuses(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_anything_but_payload_error(raw: bytes) -> None:
    _normalises_or_refuses(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from([webhooks.SIGNATURE_HEADER, "X-Other"]), st.text(max_size=80)),
    st.binary(max_size=64),
    st.one_of(st.none(), st.text(max_size=20)),
)
def test_verify_never_raises_on_any_header_body_or_app_key(
    headers: dict[str, str], raw: bytes, app_key: str | None
) -> None:
    assert webhooks.verify(SECRET, raw, headers, app_key=app_key) is False
